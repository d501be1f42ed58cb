"""Shared fixtures: tiny datasets and configs so every test runs in seconds on CPU."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import settings as hypothesis_settings

# Property tests draw the same examples on every run (CI included): a failure found once is found
# again. HYPOTHESIS_PROFILE=explore draws new examples (and keeps hypothesis' example database).
hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLI's persistent compilation cache stays on, as users run it, in a folder of this test session
# (inherited by the CLI subprocesses), not in the user's ~/.cache; in-process tests use it too
# (ENSEMBLES_TEST_INPROCESS_CACHE=0: off), since many compile the same programs.
os.environ.setdefault("ENSEMBLES_COMPILATION_CACHE", __import__("tempfile").mkdtemp(prefix="ensembles_jax_cache_"))

from ensembles import compilation_cache  # noqa: E402  (after the platform is set)
from ensembles import data as data_lib  # noqa: E402
if os.environ.get("ENSEMBLES_TEST_INPROCESS_CACHE", "1") == "1":
  compilation_cache.enable("")  # in-process too: the tests' identical programs compile once per session
from experiments.configs import default  # noqa: E402

HAS_FASHION_MNIST = all(
    os.path.exists(os.path.join(data_lib.FASHION_MNIST_DIR, f)) for f in data_lib.FASHION_MNIST_FILES.values())
requires_fashion_mnist = pytest.mark.skipif(
    not HAS_FASHION_MNIST, reason="Fashion-MNIST IDX files missing: `make test` installs dataset-fashion-mnist")


def make_dataset(n_train=64, n_val=16, n_test=32, shape=(8, 8, 1), num_classes=4, seed=0) -> data_lib.Dataset:
  """Random uint8 images whose label is learnable from the mean brightness."""
  rng = np.random.default_rng(seed)

  def split(n):
    y = rng.integers(0, num_classes, n).astype(np.int32)
    x = rng.integers(0, 64, (n, *shape)) + (y * (191 // max(num_classes - 1, 1)))[:, None, None, None]
    return np.clip(x, 0, 255).astype(np.uint8), y

  (xt, yt), (xv, yv), (xs, ys) = split(n_train), split(n_val), split(n_test)
  c = shape[-1]
  return data_lib.Dataset("synthetic", xt, yt, xv, yv, xs, ys, num_classes,
                          np.full(c, 0.5, np.float32), np.full(c, 0.25, np.float32))


@pytest.fixture
def tiny_dataset():
  return make_dataset()


def tiny_config(**overrides):
  """The default config shrunk to a few steps on a small subset."""
  c = default.get_config()
  c.num_members = 2
  c.model.hidden = (16,)
  c.dataset.train_subset = 256
  c.dataset.test_subset = 100
  c.dataset.val_size = 100
  c.training.epochs = 2
  c.training.batch_size = 32
  c.log_every_steps = 2
  c.checkpoint_every_steps = 4
  c.eval_batch_size = 50
  c.evaluation.ood_datasets = ()  # tests of OoD and corruption evaluation turn these on
  c.evaluation.corruptions = ()
  c.evaluation.plots = False
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


def method_config(module, hidden=(32,), **overrides):
  """A shipped method config (a module of experiments/configs) shrunk like `tiny_config`: its
  dataset, training and evaluation blocks, a small MLP (``hidden``), frequent logs and checkpoints.
  ``overrides``: dotted fields; a "model" dict replaces the model block."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = module.get_config()
  tiny = tiny_config()
  for block in ("dataset", "training", "evaluation"):
    c[block].update(tiny[block])
  c.model.hidden = hidden
  c.log_every_steps, c.checkpoint_every_steps, c.eval_batch_size = 2, 4, 50
  for key, value in overrides.items():
    if key == "model":
      c.model = ml_collections.ConfigDict(value)
      continue
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = tuple(value) if isinstance(value, list) else value
  if ("subnetwork" in c and c.model.name == "mlp" and len(c.model.hidden) < 2
      and "subnetwork.share_input_output" not in overrides):
    # one hidden layer: keeping the input and output layers whole (the default) leaves none to partition
    c.subnetwork.share_input_output = False
  return c


@pytest.fixture
def fake_data(monkeypatch):
  """A tiny synthetic dataset that every `load_dataset` call returns (runs through the CLI layer;
  library calls take it directly: `api.run_config(config, workdir, data=dataset)`)."""
  from ensembles import data as data_lib  # pylint: disable=g-import-not-at-top
  dataset = make_dataset(n_train=128, n_val=16, n_test=32)
  monkeypatch.setattr(data_lib, "load_dataset", lambda _: dataset)
  return dataset


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
  """Fashion-MNIST written as ArrayRecord files (`experiments/prepare_records.py`), for streaming."""
  from ensembles import records  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp("records")
  records.prepare(str(folder))
  return str(folder)
