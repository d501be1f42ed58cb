"""Streaming input (`ensembles.streaming`, `ensembles.sources`): a dataset read from disk per batch
trains to the in-memory result, resumes mid-epoch to the uninterrupted one, splits its reading
across hosts, and works on folders of images of any size."""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from ensembles import api, checkpoints, config as config_lib, context, data as data_lib, sources, streaming, train, trainer
from conftest import make_dataset, requires_fashion_mnist, tiny_config


class Interrupted(Exception):
  pass


def _view(x, y):
  return streaming.ImageView(sources.ArraySource(x, y), x.shape[1:])


def _streamed(dataset):
  """The same dataset with its images behind `ImageView`s (read per batch)."""
  return dataclasses.replace(dataset, x_train=_view(dataset.x_train, dataset.y_train),
                             x_val=_view(dataset.x_val, dataset.y_val), x_test=_view(dataset.x_test, dataset.y_test))


def _fit(dataset, workdir=None, stop_after=None, **overrides):
  cfg = tiny_config(**overrides)
  run = context.build(cfg, api.build_model(cfg, dataset), dataset, None if workdir is None else str(workdir))
  if stop_after is not None:
    calls = {"n": 0}
    step = run.batch_step

    def interrupted(state, batch):
      if calls["n"] == stop_after:
        raise Interrupted()
      calls["n"] += 1
      return step(state, batch)

    run = dataclasses.replace(run, batch_step=interrupted)
  state = train.init_state(run.model, run.tx, run.init_key, cfg.num_members, dataset.image_shape)
  return trainer.fit(run, state)


def test_center_crop_and_random_resized_crop():
  image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)
  assert streaming.center_crop(image, (224, 224, 3)).shape == (224, 224, 3)
  # shorter side 300 -> 256 (224 / 0.875), then the centre 224 x 224 of a 256 x 341 image
  resized = streaming.resize(image, 256, 341)
  np.testing.assert_array_equal(streaming.center_crop(image, (224, 224, 3)), resized[16:240, 58:282])
  same = np.zeros((28, 28, 1), np.uint8)
  assert streaming.center_crop(same, (28, 28, 1)) is same  # images of the model's shape are used as they are
  crops = [streaming.random_resized_crop(np.random.default_rng(s), image, (32, 32, 3)) for s in (1, 1, 2)]
  assert all(c.shape == (32, 32, 3) and c.dtype == np.uint8 for c in crops)
  np.testing.assert_array_equal(crops[0], crops[1])  # same seed, same crop
  assert not np.array_equal(crops[0], crops[2])
  with pytest.raises(ValueError, match="channels"):
    streaming.center_crop(image, (32, 32, 1))


def test_image_view_reads_like_an_array():
  x = np.random.default_rng(0).integers(0, 256, (50, 6, 5, 1), np.uint8)
  view = _view(x, np.arange(50) % 3)
  assert view.shape == x.shape and len(view) == 50 and view.dtype == np.uint8
  np.testing.assert_array_equal(view[:], x)
  np.testing.assert_array_equal(view[10:20], x[10:20])
  np.testing.assert_array_equal(view[7], x[7])
  sub = view.take(np.array([3, 40, 41]))
  np.testing.assert_array_equal(sub[np.array([2, 0])], x[[41, 3]])
  with pytest.raises(TypeError, match="streams from disk"):
    np.asarray(view)


def test_local_blocks_partition_the_batch():
  """`local_blocks` with a stand-in sharding: two hosts of 4 devices each on a 2 x 4 layout."""

  class Sharding:
    def __init__(self, layout):
      self.layout = layout  # device -> (member slice, batch slice)

    def devices_indices_map(self, shape):
      return self.layout

  layout = {f"d{i}": (slice(2 * (i // 4), 2 * (i // 4) + 2), slice(2 * (i % 4), 2 * (i % 4) + 2)) for i in range(8)}
  hosts = [[f"d{i}" for i in range(4)], [f"d{i}" for i in range(4, 8)]]
  seen = np.zeros((4, 8), int)
  for host in hosts:
    blocks = streaming.local_blocks(Sharding(layout), (4, 8), host)
    assert sum(len(d) for d in blocks.values()) == 4
    for (m0, m1), (b0, b1) in blocks:
      seen[m0:m1, b0:b1] += 1
    rows = {m for (m0, m1), _ in blocks for m in range(m0, m1)}
    assert len(rows) == 2  # a host reads the members of its own devices only
  np.testing.assert_array_equal(seen, 1)
  assert streaming.local_blocks(None, (4, 8)) == {((0, 4), (0, 8)): [None]}


@pytest.mark.parametrize("overrides", [
    {"augment.flip": True, "augment.crop_padding": 1, "model.dropout_rate": 0.2},
    {"model.name": "lenet", "model.features": (4,), "augment.flip": True}])
def test_streamed_training_equals_in_memory(overrides):
  dataset = make_dataset(n_train=128, n_val=16, n_test=16)
  in_memory, _ = _fit(dataset, **overrides)
  streamed, _ = _fit(_streamed(dataset), **overrides)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(streamed), jax.device_get(in_memory))


def test_streamed_resume_mid_epoch_equals_uninterrupted(tmp_path):
  """Interrupted in the 8th of 15 steps (the last checkpoint after step 6, in the middle of the
  second epoch of 5 steps), the rerun restores the reader's state and ends with the uninterrupted
  parameters."""
  dataset = _streamed(make_dataset(n_train=160, n_val=16, n_test=16))  # 5 steps per epoch
  overrides = {"augment.flip": True, "training.epochs": 3, "checkpoint_every_steps": 3}
  full, _ = _fit(dataset, **overrides)
  with pytest.raises(Interrupted):
    _fit(dataset, tmp_path, stop_after=7, **overrides)
  manager = checkpoints.make_manager(str(tmp_path / "checkpoints"))
  assert manager.latest_step() == 6
  _, meta = checkpoints.restore_latest(manager, jax.device_get(full))
  assert meta["input_state"] == {"next_index": 6}  # the reader continues at the 7th batch
  resumed, info = _fit(dataset, tmp_path, **overrides)
  assert info["resumed_from"] == 6
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed), jax.device_get(full))


@requires_fashion_mnist
def test_array_record_fashion_mnist_streams_to_the_in_memory_result(records_dir, tmp_path, monkeypatch):
  """Fashion-MNIST written as ArrayRecord files by experiments/prepare_records.py, streamed from
  disk, gives the in-memory run's splits, statistics and results, bit for bit."""
  monkeypatch.setenv("ENSEMBLES_LABELS_CACHE", str(tmp_path / "labels"))
  fields = {"train_subset": 2048, "test_subset": 500, "val_size": 1000}
  streamed = data_lib.load_dataset(name="fashion_mnist_records", data_dir=records_dir, input="stream", **fields)
  in_memory = data_lib.load_dataset(name="fashion_mnist", **fields)
  assert streaming.is_streamed(streamed.x_train) and not streaming.is_streamed(in_memory.x_train)
  for split in ("train", "val", "test"):
    np.testing.assert_array_equal(getattr(streamed, f"y_{split}"), getattr(in_memory, f"y_{split}"))
  np.testing.assert_array_equal(streamed.x_val[:], in_memory.x_val)
  np.testing.assert_array_equal(streamed.mean, in_memory.mean)
  np.testing.assert_array_equal(streamed.std, in_memory.std)
  assert os.listdir(tmp_path / "labels")  # the labels were read once and cached
  # the data's fingerprint names the content, not where it is mounted (a resumed run may see another path)
  moved = tmp_path / "moved"
  os.symlink(records_dir, moved)
  again = data_lib.load_dataset(name="fashion_mnist_records", data_dir=str(moved), input="stream", **fields)
  assert data_lib.fingerprint(again) == data_lib.fingerprint(streamed)
  assert data_lib.fingerprint(data_lib.load_dataset(name="fashion_mnist_records", data_dir=records_dir, input="stream",
                                                    **{**fields, "split_seed": 1})) != data_lib.fingerprint(streamed)
  results = {}
  for name, dataset in (("stream", streamed), ("memory", in_memory)):
    source = {"dataset.data_dir": records_dir, "dataset.input": "stream"} if name == "stream" else {}
    cfg = tiny_config(**{"dataset.name": dataset.name, **source, "training.batch_size": 64, "augment.flip": True,
                         "evaluation.corruptions": ("contrast",), "evaluation.corruption_severities": (2,),
                         "evaluation.corruption_examples": 200})
    monkeypatch.setattr(data_lib, "load_dataset", lambda _, d=dataset: d)
    results[name] = api.run_config(cfg, str(tmp_path / name))
  assert results["stream"]["test"] == results["memory"]["test"]
  assert results["stream"]["corruption"] == results["memory"]["corruption"]


def _write_folder(root, sizes, per_class, rng):
  for c in ("cat", "dog", "owl"):
    for i in range(per_class):
      h, w = sizes[i % len(sizes)]
      os.makedirs(root / c / "images", exist_ok=True)  # nested like Tiny-ImageNet's train folders
      Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(root / c / "images" / f"{i}.png")


def test_folder_of_images_end_to_end(tmp_path):
  """Class folders of PNGs of several sizes: streamed with random-resized crops to 16 x 16, trained
  and evaluated from the config, checkpoints holding the reader's state."""
  rng = np.random.default_rng(0)
  _write_folder(tmp_path / "data" / "train", [(20, 30), (40, 24), (16, 16)], 16, rng)
  _write_folder(tmp_path / "data" / "val", [(25, 25)], 4, rng)
  cfg = tiny_config(**{"dataset.name": "folder", "dataset.data_dir": str(tmp_path / "data"), "dataset.image_size": 16,
                       "dataset.val_size": 8, "dataset.train_subset": 0, "dataset.test_subset": 0,
                       "augment.random_resized_crop": True, "augment.flip": True, "training.batch_size": 8,
                       "checkpoint_every_steps": 3, "eval_batch_size": 6})
  dataset = data_lib.load_dataset(cfg.dataset)
  assert dataset.num_classes == 3 and dataset.image_shape == (16, 16, 3) and len(dataset.y_train) == 40
  assert streaming.is_streamed(dataset.x_train) and len(dataset.y_test) == 12
  results = api.run_config(cfg, str(tmp_path / "run"))
  assert 0.0 <= results["test"]["ensemble"]["accuracy"] <= 1.0 and len(results["test"]["members"]) == 2
  from experiments import plots, report  # pylint: disable=g-import-not-at-top
  without_test = {k: v for k, v in results.items() if k != "test"}  # a folder without test/ or val/
  assert "(val, M = 2" in report.run_table(without_test)
  assert plots.run_plots(without_test, str(tmp_path)) == []
  assert dataset.x_test[:].shape == (12, 16, 16, 3)
  # a long-tailed subset of a streamed set: n_c = n_max·ρ^(−c/(K−1)) from the smallest class count
  long_tailed = data_lib.load_dataset(tiny_config(**{**{f"dataset.{k}": v for k, v in cfg.dataset.items()},
                                                     "dataset.imbalance_ratio": 4.0}).dataset)
  counts = np.bincount(long_tailed.y_train, minlength=3)
  n_max = np.bincount(dataset.y_train, minlength=3).min()
  assert counts.tolist() == data_lib.long_tailed_counts(int(n_max), 3, 4.0)
  assert streaming.is_streamed(long_tailed.x_train) and len(long_tailed.x_train) == counts.sum()
  with pytest.raises(data_lib.DataNotFoundError, match="train/<class>"):
    data_lib.load_dataset(tiny_config(**{"dataset.name": "folder"}).dataset)


IMAGENET_SCRIPT = """
import dataclasses, json, sys, tempfile
import jax, numpy as np
import tensorflow_datasets as tfds
sys.path.insert(0, "tests")
from conftest import tiny_config
from ensembles import api, context, data as data_lib, streaming, train, trainer
assert jax.device_count() == 8, jax.devices()


class Interrupted(Exception):
  pass


def fit(run, stop_after=None):
  if stop_after is not None:
    step, calls = run.batch_step, {"n": 0}
    def interrupted(state, batch):
      if calls["n"] == stop_after:
        raise Interrupted()
      calls["n"] += 1
      return step(state, batch)
    run = dataclasses.replace(run, batch_step=interrupted)
  return trainer.fit(run, run.init_members())


out = {}
with tfds.testing.mock_data(num_examples=72):
  for members, data in json.loads(sys.argv[1]):
    cfg = tiny_config(**{"dataset.name": "imagenet2012", "dataset.image_size": 32, "dataset.val_size": 8,
                         "dataset.train_subset": 0, "dataset.test_subset": 0, "num_members": members,
                         "mesh.members": members, "mesh.data": data, "training.batch_size": 8, "training.epochs": 2,
                         "augment.random_resized_crop": True, "augment.flip": True, "checkpoint_every_steps": 5,
                         "eval_batch_size": 8,
                         "model": {"name": "imagenet_resnet", "depth": 50, "width": 4}})
    dataset = data_lib.load_dataset(cfg.dataset)
    assert streaming.is_streamed(dataset.x_train) and dataset.num_classes == 1000
    run = context.build(cfg, api.build_model(cfg, dataset), dataset, tempfile.mkdtemp())
    full, _ = fit(dataclasses.replace(run, workdir=None))  # the same compiled step serves the three runs
    try:
      fit(run, stop_after=7)  # 8 steps per epoch: the checkpoint after step 5 is mid-epoch
    except Interrupted:
      pass
    resumed, info = fit(run)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), jax.device_get(full), jax.device_get(resumed))
    out[f"{members}x{data}"] = {"resumed_from": info["resumed_from"], "equal": all(jax.tree.leaves(same)),
                                "sharding": str(full.params["Dense_0"]["kernel"].sharding.spec)}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow  # about 3 minutes: a ResNet-50 step compiled for two 8-device layouts
def test_imagenet_streams_on_a_mesh_and_resumes_mid_epoch():
  """tfds' mock imagenet2012 (images of varying sizes) streamed with random-resized crops into a
  reduced-width ResNet-50 on 8 forced host devices as members x data = 2 x 4 and 4 x 2: each
  interrupted run, resumed mid-epoch from its checkpoint and reader state, ends with the
  uninterrupted run's parameters. (Width 4: at width 2, XLA:CPU's partitioner fails on the 4 x 2
  layout's vmapped 1x1 convolutions of 8 channels, "output feature dimension (value 2) to be
  divisible by feature_group_count (value 4)".)"""
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", IMAGENET_SCRIPT, json.dumps([[2, 4], [4, 2]])], cwd=root, env=env,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.split("RESULT ", 1)[1])
  for layout in ("2x4", "4x2"):
    assert result[layout]["resumed_from"] == 5 and result[layout]["equal"], result
  assert "members" in result["2x4"]["sharding"]


def test_imagenet_evaluation_streams_shifted_and_corrupted_sets(tmp_path):
  """tfds' mock imagenet2012 trained through the config; evaluated on imagenet_v2, imagenet_a and
  imagenet_r (shifted sets) and ImageNet-C (two types, one severity), every set read per batch at
  the model's input size; the report shows them."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from experiments import report  # pylint: disable=g-import-not-at-top
  cfg = tiny_config(**{"dataset.name": "imagenet2012", "dataset.image_size": 16, "dataset.val_size": 8,
                       "dataset.train_subset": 0, "dataset.test_subset": 0, "training.batch_size": 8,
                       "training.epochs": 1, "eval_batch_size": 8, "model.hidden": (8,),
                       "evaluation.shift_datasets": ("imagenet_v2", "imagenet_a", "imagenet_r"),
                       "evaluation.shift_examples": 12, "evaluation.corruptions": ("gaussian_noise", "fog"),
                       "evaluation.corruption_severities": (3,), "evaluation.corruption_examples": 10})
  with tfds.testing.mock_data(num_examples=40):
    results = api.run_config(cfg, str(tmp_path))
  assert set(results["shift"]) == {"imagenet_v2", "imagenet_a", "imagenet_r"}
  assert all(m["num_examples"] == 12 and 0 <= m["accuracy"] <= 1 for m in results["shift"].values())
  assert set(results["corruption"]["types"]) == {"gaussian_noise", "fog"} and results["corruption"]["num_examples"] == 10
  classes = results["shift"]["imagenet_a"]["num_classes"]
  assert 1 < classes < 1000  # the classes present in the (mock) set, as for ImageNet-A's 200
  assert f"| imagenet_a | 12 | {classes} |" in report.run_table(results)
  with pytest.raises(Exception, match="evaluation.shift_datasets"):
    config_lib.validate(tiny_config(**{"evaluation.shift_datasets": ("imagenet_v2",)}))  # not for fashion_mnist
