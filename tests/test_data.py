import gzip
import os
import struct

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ensembles import data as data_lib
from conftest import requires_fashion_mnist


def _cfg(name="fashion_mnist", **kw):
  c = ml_collections.ConfigDict(dict(name=name, data_dir="", val_size=0, split_seed=0, train_subset=0,
                                     test_subset=0))
  c.update(kw)
  return c


def _write_idx(path, array):
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion_mnist(directory, n_train=50, n_test=20, max_label=9):
  rng = np.random.default_rng(0)
  files = data_lib.FASHION_MNIST_FILES
  _write_idx(os.path.join(directory, files["train_images"]), rng.integers(0, 256, (n_train, 28, 28)))
  _write_idx(os.path.join(directory, files["train_labels"]), rng.integers(0, max_label + 1, n_train))
  _write_idx(os.path.join(directory, files["test_images"]), rng.integers(0, 256, (n_test, 28, 28)))
  _write_idx(os.path.join(directory, files["test_labels"]), np.full(n_test, max_label))


def test_idx_reader_and_split(tmp_path):
  _fake_fashion_mnist(tmp_path)
  ds = data_lib.load_dataset(_cfg(data_dir=str(tmp_path), val_size=10))
  assert ds.x_train.shape == (40, 28, 28, 1) and ds.x_val.shape == (10, 28, 28, 1)
  assert ds.x_test.shape == (20, 28, 28, 1) and ds.x_train.dtype == np.uint8
  assert ds.y_train.dtype == np.int32 and ds.num_classes == 10
  # the split is a partition of the original training set, fixed by split_seed
  again = data_lib.load_dataset(_cfg(data_dir=str(tmp_path), val_size=10))
  np.testing.assert_array_equal(ds.x_val, again.x_val)
  other = data_lib.load_dataset(_cfg(data_dir=str(tmp_path), val_size=10, split_seed=1))
  assert not np.array_equal(ds.x_val, other.x_val)
  assert ds.mean.shape == (1,) and 0 < ds.mean[0] < 1


def test_truncated_idx_file_is_rejected(tmp_path):
  path = tmp_path / "bad.gz"
  with gzip.open(path, "wb") as f:
    f.write(struct.pack(">HBBI", 0, 8, 1, 100) + b"\x00" * 10)
  with pytest.raises(ValueError, match="truncated"):
    data_lib.read_idx(str(path))


def test_labels_out_of_range_are_rejected(tmp_path):
  _fake_fashion_mnist(tmp_path, max_label=12)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
    data_lib.load_dataset(_cfg(data_dir=str(tmp_path)))


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
  def no_tfds(name, data_dir=None):
    raise ConnectionError("no network")

  monkeypatch.setattr(data_lib, "load_tfds", no_tfds)
  with pytest.raises(data_lib.DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
    data_lib.load_dataset(_cfg(data_dir=str(tmp_path)))


def test_unknown_dataset_lists_names():
  with pytest.raises(ValueError, match=r"dataset.name must be one of \['cifar10', 'cifar100', 'fashion_mnist'"):
    data_lib.load_dataset(_cfg(name="imagenet"))


def test_val_size_too_large(tmp_path):
  _fake_fashion_mnist(tmp_path)
  with pytest.raises(ValueError, match="dataset.val_size"):
    data_lib.load_dataset(_cfg(data_dir=str(tmp_path), val_size=50))


@pytest.mark.parametrize("name,shape,classes", [
    ("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 100), ("svhn_cropped", (32, 32, 3), 10),
    ("mnist", (28, 28, 1), 10), ("fashion_mnist", (28, 28, 1), 10)])
def test_tfds_datasets_under_mock_data(name, shape, classes, tmp_path):
  with tfds.testing.mock_data(num_examples=24):
    arrays = data_lib.load_tfds(name)
    ds = data_lib.load_dataset(_cfg(name, data_dir=str(tmp_path), val_size=4)) \
        if name != "fashion_mnist" else None
  assert arrays["x_train"].shape == (24, *shape) and arrays["x_train"].dtype == np.uint8
  assert arrays["y_train"].dtype == np.int32
  assert arrays["y_train"].min() >= 0 and arrays["y_train"].max() < classes
  if ds is not None:
    assert ds.num_classes == classes and ds.x_val.shape == (4, *shape) and len(ds.y_train) == 20


@requires_fashion_mnist
def test_real_fashion_mnist():
  ds = data_lib.load_dataset(_cfg(val_size=5000))
  assert ds.x_train.shape == (55000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
  assert ds.x_val.shape == (5000, 28, 28, 1)
  assert set(np.unique(ds.y_test)) == set(range(10))
  assert np.bincount(ds.y_test).tolist() == [1000] * 10
  sub = data_lib.load_dataset(_cfg(val_size=100, train_subset=500, test_subset=200))
  assert len(sub.y_train) == 500 and len(sub.y_test) == 200


def test_input_statistics_of_uint8_images_equal_the_float_mean_and_std():
  """The per-value histogram path gives the float64 mean and std of images / 255 per channel (to
  float32), and the std floor for a constant channel."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (500, 6, 6, 3)).astype(np.uint8)
  x[..., 2] = 7  # a constant channel
  mean, std = data_lib.input_statistics(x)
  scaled = x.astype(np.float64) / 255.0
  np.testing.assert_array_equal(mean, scaled.mean(axis=(0, 1, 2)).astype(np.float32))
  np.testing.assert_array_equal(std, np.maximum(scaled.std(axis=(0, 1, 2)), 1e-3).astype(np.float32))
  assert std[2] == np.float32(1e-3) and mean.dtype == std.dtype == np.float32
