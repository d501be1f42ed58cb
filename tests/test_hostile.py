"""Hostile inputs (property-based, hypothesis): every invalid config or array ends in a clear error
that names what is wrong, never in a hang, an unexplained crash or a corrupted workdir."""
import json
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensembles import corruptions, data as data_lib, metrics
from ensembles.config import ConfigError
from experiments import runner
from conftest import tiny_config

# Each field: values from inside and outside its allowed set (and of the wrong type), and the
# predicate (written here, independent of the validator) that says which values are allowed, given
# the other fields of the config (the tiny config: 256 training images, batch 32, 1 epoch).
def _number(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _int(x):
  return isinstance(x, int) and not isinstance(x, bool)


FIELDS = {
    "num_members": (st.one_of(st.integers(-2, 3), st.just(2.5), st.just("two")), lambda v, c: _int(v) and v >= 1),
    "seed": (st.one_of(st.integers(-3, 3), st.just(None)), lambda v, c: _int(v)),
    "member_execution": (st.sampled_from(["auto", "vmap", "loop", "map", "pmap", ""]),
                         lambda v, c: v in ("auto", "vmap", "loop", "map", "sharded")),
    "mesh.members": (st.integers(-1, 2), lambda v, c: v in (0, 1)),  # 2 needs 2 devices (there is 1)
    "mesh.data": (st.integers(-1, 3), lambda v, c: v == 1),
    "model.name": (st.sampled_from(["mlp", "vgg", ""]), lambda v, c: v == "mlp"),
    "dataset.name": (st.sampled_from(["fashion_mnist", "imagenet"]), lambda v, c: v == "fashion_mnist"),
    "dataset.imbalance_ratio": (st.one_of(st.floats(-2, 5), st.sampled_from([float("nan"), float("inf")])),
                                lambda v, c: _number(v) and v >= 1),
    "training.epochs": (st.integers(-1, 2), lambda v, c: v >= 1),
    "training.batch_size": (st.sampled_from([-4, 0, 16, 32, 33, 500]), lambda v, c: 1 <= v <= 256),
    "training.lr": (st.one_of(st.floats(-1, 1), st.sampled_from([float("nan"), float("inf")])),
                    lambda v, c: _number(v) and v > 0),
    "training.momentum": (st.floats(-0.5, 1.5), lambda v, c: 0 <= v < 1),
    "training.optimizer": (st.sampled_from(["sgd", "adam", "lamb"]), lambda v, c: v in ("sgd", "adam")),
    "training.lr_schedule": (st.sampled_from(["cosine", "step", "linear"]), lambda v, c: v in ("cosine", "step")),
    "training.warmup_epochs": (st.floats(-1, 3), lambda v, c: 0 <= v < c["training.epochs"]),
    "training.batch_split": (st.integers(0, 3), lambda v, c: v >= 1 and c["training.batch_size"] % v == 0),
    "eval_batch_size": (st.integers(-1, 64), lambda v, c: v >= 1),
    "evaluation.corruptions": (st.sampled_from([(), ("contrast",), ("fog",), ("all", "contrast")]),
                               lambda v, c: v in ((), ("contrast",))),
    "evaluation.corruption_severities": (st.sampled_from([(1,), (0,), (), (5, 6)]), lambda v, c: v == (1,)),
    "evaluation.ood_datasets": (st.sampled_from([(), ("fashion_mnist",), ("imagenet_o",)]), lambda v, c: v == ()),
}
# fields whose errors arrive with the name of the field they are checked against
CHECKED_AGAINST = {"training.batch_size": ("training.batch_size", "training.batch_split"),
                   "training.epochs": ("training.epochs", "training.warmup_epochs")}


def _allowed(field, value, values):
  try:
    return bool(FIELDS[field][1](value, values))
  except TypeError:  # a value of another type (e.g. "two" for an integer)
    return False


@st.composite
def overrides(draw):
  fields = draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3, unique=True))
  return {f: draw(FIELDS[f][0]) for f in fields}


@settings(max_examples=40, deadline=120_000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides())
def test_any_config_trains_or_fails_with_a_named_field(tmp_path_factory, fake_data, changes):
  workdir = str(tmp_path_factory.mktemp("run"))
  cfg = tiny_config(**{"training.epochs": 1, "evaluation.corruption_examples": 8})
  values = {"training.epochs": 1, "training.batch_size": 32, **changes}
  allowed = {f: _allowed(f, v, values) for f, v in changes.items()}
  invalid = [f for f, ok in allowed.items() if not ok]
  try:
    for key, value in changes.items():
      node = cfg
      *path, last = key.split(".")
      for p in path:
        node = node[p]
      node[last] = value  # ml_collections refuses values of another type, naming the field
    results = runner.run(cfg, workdir)
  except FloatingPointError as err:  # a diverging lr: stopped with the last good checkpoint kept
    assert not invalid, (changes, invalid, str(err))
    assert "non-finite" in str(err).lower(), str(err)
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    return
  except (ConfigError, ValueError, TypeError) as err:
    message = str(err)
    assert invalid, (changes, message)  # a valid config must not be refused
    names = {n for f in invalid for n in CHECKED_AGAINST.get(f, (f,))}
    # the message names one of the invalid fields exactly (its whole dotted name, not a part of
    # another field's), or, for a value of the wrong type refused by ml_collections, its last part
    assert any(re.search(rf"(?<![\w.])(?:config\.)?{re.escape(n)}(?![\w.])", message) or
               (isinstance(err, TypeError) and re.search(rf"'{re.escape(n.split('.')[-1])}'", message))
               for n in names), (changes, message)
    # nothing half-written: at most the config of the run, as valid JSON, and no results
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    if os.path.exists(os.path.join(workdir, "config.json")):
      json.load(open(os.path.join(workdir, "config.json")))
    return
  assert not invalid, (changes, invalid)  # an invalid value must never train
  assert 0.0 <= results["test"]["ensemble"]["accuracy"] <= 1.0
  assert np.isfinite(results["test"]["ensemble"]["nll"])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.sampled_from([np.uint8, np.float32, np.int64]), st.integers(0, 3), st.integers(-2, 12))
def test_arrays_are_checked_at_load_time(ndim, dtype, label_shift, num_classes):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 255, (6,) + (4,) * (ndim - 1)).astype(dtype)
  y = rng.integers(0, 4, 6 + label_shift % 2).astype(np.int32) + (label_shift // 2) * 10
  valid = (ndim == 4 and dtype == np.uint8 and len(y) == 6 and num_classes > 0
           and y.min() >= 0 and y.max() < num_classes)
  if valid:
    data_lib.check_arrays(x, y, num_classes, "train")
  else:
    with pytest.raises(ValueError, match="^train: "):
      data_lib.check_arrays(x, y, num_classes, "train")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=4), st.integers(0, 6))
def test_metric_inputs_of_the_wrong_shape_are_refused(shape, n_labels):
  probs = np.full(shape, 0.5)
  labels = np.zeros(n_labels, np.int64)
  valid = len(shape) == 3 and shape[1] == n_labels and min(shape) >= 1
  if valid:
    metrics.evaluate_ensemble(probs, labels)
  else:
    with pytest.raises(ValueError, match=r"member_probs must be \[M, N, K\]"):
      metrics.evaluate_ensemble(probs, labels)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(corruptions.CORRUPTIONS) + ["fog"]), st.integers(-1, 7), st.integers(2, 5))
def test_corruption_arguments(name, severity, ndim):
  images = np.zeros((2,) + (8,) * (ndim - 2) + (1,), np.uint8)
  if name in corruptions.CORRUPTIONS and severity in corruptions.SEVERITIES and ndim == 4:
    assert corruptions.corrupt(images, name, severity).shape == images.shape
  else:
    with pytest.raises(ValueError, match="corruption|severity|uint8"):
      corruptions.corrupt(images, name, severity)
