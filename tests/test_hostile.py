"""Hostile inputs (property-based, hypothesis): every invalid config or array ends in a clear error
that names what is wrong, never in a hang, an unexplained crash or a corrupted workdir."""
import json
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ensembles import corruptions, data as data_lib, metrics
from ensembles.config import ConfigError
from experiments import runner
from conftest import tiny_config

# Each field: values from inside and outside its allowed set (and of the wrong type), and the
# predicate, written here independent of the validator, that says whether a value is allowed given
# the other fields of the config (the tiny config on `fake_data`: 128 training images, batch 32,
# 1 epoch). A predicate raising TypeError (e.g. "two" >= 1) means a value of another type: not
# allowed.
def _number(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _int(x):
  return isinstance(x, int) and not isinstance(x, bool)


FIELDS = {
    "num_members": (st.one_of(st.integers(-2, 3), st.just(2.5), st.just("two")), lambda v, c: _int(v) and v >= 1),
    "seed": (st.one_of(st.integers(-3, 3), st.just(None)), lambda v, c: _int(v)),
    "member_execution": (st.sampled_from(["auto", "vmap", "loop", "map", "pmap", ""]),
                         lambda v, c: v in ("auto", "vmap", "loop", "map", "sharded")),
    # meshes larger than the devices (refused when the mesh is built): tests/test_members.py
    "mesh.members": (st.integers(-1, 1), lambda v, c: _int(v) and v >= 0),
    "mesh.data": (st.integers(-1, 1), lambda v, c: _int(v) and v >= 1),
    "model.name": (st.sampled_from(["mlp", "vgg", ""]), lambda v, c: v == "mlp"),
    "model.dropout_rate": (st.sampled_from([0.0, 0.3, 1.0, -0.1]), lambda v, c: _number(v) and 0 <= v < 1),
    "dataset.name": (st.sampled_from(["fashion_mnist", "imagenet"]), lambda v, c: v == "fashion_mnist"),
    "dataset.imbalance_ratio": (st.one_of(st.floats(-2, 5), st.sampled_from([float("nan"), float("inf")])),
                                lambda v, c: _number(v) and v >= 1),
    "training.epochs": (st.integers(-1, 2), lambda v, c: v >= 1),
    "training.batch_size": (st.sampled_from([-4, 0, 16, 32, 33, 500]), lambda v, c: v >= 1),
    "training.lr": (st.one_of(st.floats(-1, 1), st.sampled_from([float("nan"), float("inf")])),
                    lambda v, c: _number(v) and v > 0),
    "training.momentum": (st.floats(-0.5, 1.5), lambda v, c: 0 <= v < 1),
    "training.optimizer": (st.sampled_from(["sgd", "adam", "lamb"]), lambda v, c: v in ("sgd", "adam", "adamw")),
    "training.lr_schedule": (st.sampled_from(["cosine", "step", "linear"]),
                             lambda v, c: v in ("constant", "cosine", "step")),
    "training.warmup_epochs": (st.floats(-1, 3), lambda v, c: 0 <= v < c["training.epochs"]),
    "training.batch_split": (st.integers(0, 3), lambda v, c: v >= 1 and c["training.batch_size"] % v == 0),
    "training.nesterov": (st.sampled_from([True, False, "yes"]), lambda v, c: isinstance(v, bool)),
    "eval_batch_size": (st.integers(-1, 64), lambda v, c: v >= 1),
    "evaluation.corruptions": (st.sampled_from([(), ("contrast",), ("fog",), ("all", "contrast")]),
                               lambda v, c: v in ((), ("contrast",))),
    "evaluation.corruption_severities": (st.sampled_from([(1,), (0,), (), (5, 6)]),
                                         lambda v, c: len(v) > 0 and all(s in (1, 2, 3, 4, 5) for s in v)),
    # ("fashion_mnist",): the training set itself; ("imagenet_o",): no OoD set of ours
    "evaluation.ood_datasets": (st.sampled_from([(), ("fashion_mnist",), ("imagenet_o",)]), lambda v, c: v == ()),
}
# Checked when the data is loaded (the config alone does not know the size of the training set,
# 128 images of `fake_data`): refused with a ValueError that names the field all the same.
CHECKED_AT_LOAD = {"training.batch_size": lambda v, c: v <= c["train_examples"]}
# a learning rate this large (2x the default; none up to 1.0 diverged with momentum 0.9 in a check)
# may make the tiny MLP diverge: a stop with a clear error is allowed
LARGE_LR = 0.1


def _allowed(field, value, values):
  try:
    return bool(FIELDS[field][1](value, values))
  except TypeError:  # a value of another type (e.g. "two" for an integer)
    return False


def _names(field, message):
  """``config.<field>`` in the message, the whole dotted name (``training.lr`` does not match
  ``config.training.lr_schedule``, nor ``batch_size`` ``config.training.batch_size``)."""
  return re.search(rf"(?<![\w.])config\.{re.escape(field)}(?![\w.])", message) is not None


def test_names_is_exact():
  assert _names("training.lr", "config.training.lr must be a number > 0, got -1.")
  assert not _names("training.lr", "config.training.lr_schedule must be one of ..., got 'x'.")
  assert not _names("training.epochs", "config.training.warmup_epochs must be in [0, training.epochs=1), got 2.")
  assert not _names("batch_size", "config.training.batch_size must be an integer >= 1, got 0.")


@st.composite
def overrides(draw):
  fields = draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3, unique=True))
  return {f: draw(FIELDS[f][0]) for f in fields}


@settings(max_examples=25, deadline=120_000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides())
def test_any_config_trains_or_fails_with_a_named_field(tmp_path_factory, fake_data, changes):
  workdir = str(tmp_path_factory.mktemp("run"))
  cfg = tiny_config(**{"training.epochs": 1, "evaluation.corruption_examples": 8})
  values = {"training.epochs": 1, "training.batch_size": 32, **changes, "train_examples": len(fake_data.y_train)}
  invalid = [f for f, v in changes.items() if not _allowed(f, v, values)]
  # allowed by the config's rules, too large for the data
  too_large = [f for f, v in changes.items() if f not in invalid and f in CHECKED_AT_LOAD
               and not CHECKED_AT_LOAD[f](v, values)]
  for key, value in changes.items():
    node = cfg
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    try:
      node[last] = value
    except TypeError as err:  # ml_collections' type lock: a value of another type, the field named
      assert key in invalid, (changes, str(err))
      assert re.search(rf"field '{re.escape(last)}'", str(err)), (key, str(err))
      event("refused by the type lock")
      return
  try:
    results = runner.run(cfg, workdir)
  except FloatingPointError as err:  # a diverging lr: stopped with the last good checkpoint kept
    assert not invalid and not too_large, (changes, invalid, too_large, str(err))
    assert values.get("training.lr", 0) >= LARGE_LR, (changes, str(err))
    assert "non-finite" in str(err).lower(), str(err)
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    event("diverged")
    return
  except ConfigError as err:
    message = str(err)
    assert invalid, (changes, message)  # a valid config must not be refused
    assert any(_names(f, message) for f in invalid), (changes, invalid, message)
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    event("refused by the validator")
    return
  except ValueError as err:  # refused when the data is loaded
    message = str(err)
    assert not invalid and too_large, (changes, invalid, message)  # the validator must refuse invalid values first
    assert any(_names(f, message) for f in too_large), (changes, too_large, message)
    # nothing half-written: at most the config of the run, as valid JSON, and no results
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    if os.path.exists(os.path.join(workdir, "config.json")):
      json.load(open(os.path.join(workdir, "config.json")))
    event("refused at load time")
    return
  assert not invalid and not too_large, (changes, invalid, too_large)  # an invalid value must never train
  assert 0.0 <= results["test"]["ensemble"]["accuracy"] <= 1.0
  assert np.isfinite(results["test"]["ensemble"]["nll"])
  event("trained")


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
