"""Hostile inputs (property-based, hypothesis): every invalid config or array ends in a clear error
that names what is wrong, never in a hang, an unexplained crash or a corrupted workdir."""
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensembles import corruptions, data as data_lib, metrics
from ensembles.config import ConfigError
from experiments import runner
from conftest import tiny_config

# Each field with values from inside and outside its allowed set (and of the wrong type).
FIELD_VALUES = {
    "num_members": st.one_of(st.integers(-2, 3), st.just(2.5), st.just("two")),
    "seed": st.one_of(st.integers(-3, 3), st.just(None)),
    "member_execution": st.sampled_from(["auto", "vmap", "loop", "map", "pmap", ""]),
    "mesh.members": st.integers(-1, 2),
    "mesh.data": st.integers(-1, 3),
    "model.name": st.sampled_from(["mlp", "vgg", ""]),
    "dataset.name": st.sampled_from(["fashion_mnist", "imagenet"]),
    "dataset.imbalance_ratio": st.one_of(st.floats(-2, 5), st.sampled_from([float("nan"), float("inf")])),
    "training.epochs": st.integers(-1, 2),
    "training.batch_size": st.sampled_from([-4, 0, 16, 32, 33, 500]),
    "training.lr": st.one_of(st.floats(-1, 1), st.sampled_from([float("nan"), float("inf")])),
    "training.momentum": st.floats(-0.5, 1.5),
    "training.optimizer": st.sampled_from(["sgd", "adam", "lamb"]),
    "training.lr_schedule": st.sampled_from(["cosine", "step", "linear"]),
    "training.warmup_epochs": st.floats(-1, 3),
    "training.batch_split": st.integers(0, 3),
    "eval_batch_size": st.integers(-1, 64),
    "evaluation.corruptions": st.sampled_from([(), ("contrast",), ("fog",), ("all", "contrast")]),
    "evaluation.corruption_severities": st.sampled_from([(1,), (0,), (), (5, 6)]),
    "evaluation.ood_datasets": st.sampled_from([(), ("fashion_mnist",), ("imagenet_o",)]),
}


@st.composite
def overrides(draw):
  fields = draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), min_size=1, max_size=3, unique=True))
  return {f: draw(FIELD_VALUES[f]) for f in fields}


@settings(max_examples=40, deadline=120_000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides())
def test_any_config_trains_or_fails_with_a_named_field(tmp_path_factory, fake_data, changes):
  workdir = str(tmp_path_factory.mktemp("run"))
  cfg = tiny_config(**{"training.epochs": 1, "evaluation.corruption_examples": 8})
  try:
    for key, value in changes.items():
      node = cfg
      *path, last = key.split(".")
      for p in path:
        node = node[p]
      node[last] = value  # ml_collections refuses values of another type, naming the field
    results = runner.run(cfg, workdir)
  except FloatingPointError as err:  # a diverging lr: stopped with the last good checkpoint kept
    assert "non-finite" in str(err).lower(), str(err)
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    return
  except (ConfigError, ValueError, TypeError) as err:
    message = str(err)
    named = [key.split(".")[-1] for key in changes]
    assert any(name in message for name in named), (changes, message)
    # nothing half-written: at most the config of the run, as valid JSON, and no results
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    if os.path.exists(os.path.join(workdir, "config.json")):
      json.load(open(os.path.join(workdir, "config.json")))
    return
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
