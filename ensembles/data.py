"""Datasets: offline Fashion-MNIST (IDX files), named datasets through tfds, folders of images.

Small datasets are held whole in (device) memory as uint8 images [N, H, W, C] and int32 labels [N];
normalisation and augmentation happen inside the jitted step (`ensembles.augment`). Large ones
stream (``dataset.input``): their images are `streaming.ImageView`s read from disk per batch, their
labels numpy arrays.
A validation split is carved from the training set with a fixed ``split_seed`` (independent of the
run's seed, so every method sees the same split); checkpoint selection uses it, never the test set.
"""
from __future__ import annotations

import dataclasses
import gzip
import math
import os
import struct
import types
import zlib
from typing import Any

import numpy as np

from ensembles.errors import DataNotFoundError  # noqa: F401  (re-exported: data.DataNotFoundError)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# Named datasets read through tensorflow-datasets: name -> (test split, number of classes).
TFDS_DATASETS = {
    "cifar10": ("test", 10),
    "cifar100": ("test", 100),
    "svhn_cropped": ("test", 10),
    "mnist": ("test", 10),
    "fashion_mnist": ("test", 10),
    "imagenet2012": ("validation", 1000),            # manual download (tfds catalog); streams
    "imagenet_resized/64x64": ("validation", 1000),  # downsampled ImageNet, a Tiny-ImageNet-scale stand-in
    "fashion_mnist_records": ("test", 10),  # Fashion-MNIST as ArrayRecord files (experiments/prepare_records.py)
}
FOLDER = "folder"  # data_dir/train/<class>/... (any depth) and data_dir/{test,val}/<class>/...
DATASETS = tuple(sorted(TFDS_DATASETS)) + (FOLDER,)
INPUTS = ("auto", "memory", "stream")
# `auto` streams these (their images vary in size or do not fit in memory), and any training set
# larger than dataset.memory_limit_gb at the model's input size
STREAMED_BY_DEFAULT = ("imagenet2012", "imagenet_resized/64x64", FOLDER)

# Sizes of the named datasets' splits (training examples before the validation split), and the
# stored image shape where it is fixed: what pre-flight and the cost estimates need without the data.
TRAIN_EXAMPLES = {"imagenet2012": 1_281_167, "imagenet_resized/64x64": 1_281_167, "cifar10": 50_000,
                  "cifar100": 50_000, "svhn_cropped": 73_257, "mnist": 60_000, "fashion_mnist": 60_000,
                  "fashion_mnist_records": 60_000}
TEST_EXAMPLES = {"imagenet2012": 50_000, "imagenet_resized/64x64": 50_000, "cifar10": 10_000, "cifar100": 10_000,
                 "svhn_cropped": 26_032, "mnist": 10_000, "fashion_mnist": 10_000, "fashion_mnist_records": 10_000}
IMAGE_SHAPES = {"cifar10": (32, 32, 3), "cifar100": (32, 32, 3), "svhn_cropped": (32, 32, 3),
                "imagenet_resized/64x64": (64, 64, 3), "mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1),
                "fashion_mnist_records": (28, 28, 1)}

MISSING_FASHION_MNIST = (
    "Fashion-MNIST was not found in {dir!r} and tensorflow-datasets could not provide it ({err}).\n"
    "Get it offline with Debian's package:  sudo apt-get install dataset-fashion-mnist\n"
    "(installs the IDX .gz files into /usr/share/datasets/fashion-mnist/), or point "
    "dataset.data_dir / $ENSEMBLES_FASHION_MNIST_DIR at a folder holding {files}."
)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset held in memory. Inputs [N, ..., C]: uint8 images (0..255, scaled by 1/255 before
  normalisation) or float features (used as they are); labels int32 [N] in [0, num_classes).
  mean / std are in the units the model sees before normalisation (`augment.normalize`)."""

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  mean: np.ndarray  # [C] per-channel mean of the training inputs ([0, 1] units for uint8 images)
  std: np.ndarray  # [C] per-channel std of the training images

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.x_train.shape[1:])

  def summary(self) -> str:
    return (f"{self.name}: train {len(self.y_train)}, val {len(self.y_val)}, test {len(self.y_test)}, "
            f"image {self.image_shape}, {self.num_classes} classes")


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzipped): uint8 arrays of any rank (MNIST's format)."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
  if zero != 0 or dtype_code != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file (header {data[:4]!r}).")
  shape = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
  array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise ValueError(f"{path} is truncated: header says {shape}, found {array.size} values.")
  return array.reshape(shape)


def load_fashion_mnist_idx(directory: str) -> dict[str, np.ndarray]:
  """Fashion-MNIST from its four IDX .gz files: images [N, 28, 28, 1] uint8, labels int32."""
  paths = {k: os.path.join(directory, f) for k, f in FASHION_MNIST_FILES.items()}
  missing = [p for p in paths.values() if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f"missing {missing}")
  out = {k: read_idx(p) for k, p in paths.items()}
  return {
      "x_train": out["train_images"][..., None],
      "y_train": out["train_labels"].astype(np.int32),
      "x_test": out["test_images"][..., None],
      "y_test": out["test_labels"].astype(np.int32),
  }


def _read_tfds_split(name: str, split: str, data_dir: str | None,
                     download: bool = True) -> tuple[np.ndarray, np.ndarray]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
  images, labels = [], []
  for i in range(len(source)):
    example = source[i]
    images.append(np.asarray(example["image"], dtype=np.uint8))
    labels.append(int(example["label"]))
  x = np.stack(images)
  if x.ndim == 3:
    x = x[..., None]
  return x, np.asarray(labels, dtype=np.int32)


def load_tfds(name: str, data_dir: str | None = None, download: bool = False) -> dict[str, np.ndarray]:
  """A named dataset through `tfds.data_source` (works without TensorFlow and under mock_data);
  ``download``: let tfds fetch and prepare it when missing (needs network)."""
  test_split, _ = TFDS_DATASETS[name]
  x_train, y_train = _read_tfds_split(name, "train", data_dir, download)
  x_test, y_test = _read_tfds_split(name, test_split, data_dir, download)
  return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _subset(x: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator):
  if n <= 0 or n >= len(y):
    return x, y
  idx = np.sort(rng.permutation(len(y))[:n])
  return x.take(idx, axis=0), y[idx]


def long_tailed_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
  """Per-class counts of a long-tailed set: n_c = floor(n_max · ρ^(−c / (K − 1))), c = 0..K−1, so
  class 0 keeps n_max and class K−1 keeps n_max / ρ (imbalance ratio ρ >= 1)."""
  if not ratio >= 1.0:
    raise ValueError(f"dataset.imbalance_ratio must be >= 1, got {ratio}.")
  if num_classes < 2:
    return [n_max]
  return [int(math.floor(n_max * ratio ** (-c / (num_classes - 1)) + 1e-9)) for c in range(num_classes)]


def long_tailed_subset(x: np.ndarray, y: np.ndarray, num_classes: int, ratio: float,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Keeps `long_tailed_counts` examples of each class (random ones, in original order);
  n_max is the smallest class count of the input, so every class can supply its share."""
  n_max = int(np.bincount(y, minlength=num_classes).min())
  keep = []
  for c, n in enumerate(long_tailed_counts(n_max, num_classes, ratio)):
    idx = np.flatnonzero(y == c)
    keep.append(rng.choice(idx, size=n, replace=False))
  keep = np.sort(np.concatenate(keep))
  return x.take(keep, axis=0), y[keep]


def check_arrays(x: np.ndarray, y: np.ndarray, num_classes: int, where: str) -> None:
  """Rejects mismatched shapes and labels outside [0, num_classes) at load time."""
  if x.ndim != 4 or x.dtype != np.uint8:
    raise ValueError(f"{where}: images must be uint8 [N, H, W, C], got {x.dtype} {x.shape}.")
  if y.shape != (x.shape[0],):
    raise ValueError(f"{where}: labels shape {y.shape} does not match {x.shape[0]} images.")
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"{where}: labels must lie in [0, {num_classes}), found [{y.min()}, {y.max()}].")


DEFAULT_FIELDS = {"name": "fashion_mnist", "data_dir": "", "download": False, "val_size": 5000, "split_seed": 0,
                  "train_subset": 0, "test_subset": 0, "imbalance_ratio": 1.0, "input": "auto", "image_size": 0,
                  "memory_limit_gb": 4.0, "statistics_examples": 100_000}


def load_dataset(config: Any = None, **fields: Any) -> Dataset:
  """Loads a dataset from the config's ``dataset`` block, or from keyword fields over the defaults.

  Fields: name, data_dir ('' = default), download (let tfds fetch a missing named dataset), val_size (examples carved from train), split_seed,
  train_subset / test_subset (0 = all; for quick runs and tests), imbalance_ratio (ρ > 1 makes the
  training set long-tailed with `long_tailed_counts`; validation and test sets stay balanced).
  ``load_dataset(name="fashion_mnist", val_size=1000)`` works without a config.
  """
  if config is None:
    unknown = sorted(set(fields) - set(DEFAULT_FIELDS))
    if unknown:
      raise ValueError(f"Unknown dataset field(s) {unknown}; allowed: {sorted(DEFAULT_FIELDS)}.")
    config = types.SimpleNamespace(**{**DEFAULT_FIELDS, **fields})
  name = config.name
  if name not in DATASETS:
    raise ValueError(f"dataset.name must be one of {list(DATASETS)}, got {name!r}.")
  if name in STREAMED_BY_DEFAULT or name == "fashion_mnist_records" or getattr(config, "input", "auto") == "stream":
    return load_from_source(config)
  num_classes = TFDS_DATASETS[name][1]
  check_training_source(config)
  data_dir = config.data_dir or None
  download = bool(getattr(config, "download", False))
  if name == "fashion_mnist":
    directory = data_dir or os.environ.get("ENSEMBLES_FASHION_MNIST_DIR", FASHION_MNIST_DIR)
    try:
      arrays = load_fashion_mnist_idx(directory)
    except FileNotFoundError:
      try:
        arrays = load_tfds(name, data_dir, download)
      except Exception as err:  # no network / not prepared: say how to get the files.
        raise DataNotFoundError(MISSING_FASHION_MNIST.format(
            dir=directory, err=f"{type(err).__name__}: {str(err).splitlines()[0][:200]}",
            files=list(FASHION_MNIST_FILES.values()))) from err
  else:
    try:
      arrays = load_tfds(name, data_dir, download)
    except Exception as err:
      raise DataNotFoundError(
          f"tensorflow-datasets could not provide {name!r} ({type(err).__name__}: {err}). "
          f"Prepare it on a machine with network access (`tfds build {name}`) and point "
          f"dataset.data_dir at the tfds data folder.") from err

  rng = np.random.default_rng(config.split_seed)
  x_train, y_train = arrays["x_train"], arrays["y_train"]
  x_test, y_test = arrays["x_test"], arrays["y_test"]
  check_arrays(x_train, y_train, num_classes, f"{name} train")
  check_arrays(x_test, y_test, num_classes, f"{name} test")
  if not 0 <= config.val_size < len(y_train):
    raise ValueError(f"dataset.val_size must be in [0, {len(y_train)}), got {config.val_size}.")
  perm = rng.permutation(len(y_train))
  val_idx, train_idx = np.sort(perm[: config.val_size]), np.sort(perm[config.val_size:])
  x_val, y_val = x_train[val_idx], y_train[val_idx]
  x_train, y_train = x_train[train_idx], y_train[train_idx]
  x_train, y_train = _subset(x_train, y_train, config.train_subset, rng)
  ratio = float(getattr(config, "imbalance_ratio", 1.0))
  if ratio != 1.0:
    x_train, y_train = long_tailed_subset(x_train, y_train, num_classes, ratio, rng)
  x_test, y_test = _subset(x_test, y_test, config.test_subset, rng)
  return Dataset(name, x_train, y_train, x_val, y_val, x_test, y_test, num_classes, *input_statistics(x_train))


def training_sources(config: Any) -> tuple[Any, Any, int]:
  """(train source, test source or None, number of classes) of the ``dataset`` block
  (`ensembles.sources`): a folder of class folders, or a prepared tfds dataset."""
  from ensembles import sources  # pylint: disable=g-import-not-at-top
  data_dir = config.data_dir
  if config.name == FOLDER:
    if not data_dir:
      raise DataNotFoundError("dataset.name='folder' needs dataset.data_dir: a folder holding train/<class>/<images> "
                              "(and optionally test/ or val/ with the same class folders).")
    train = sources.FolderSource(os.path.join(data_dir, "train"))
    test_dirs = [os.path.join(data_dir, d) for d in ("test", "val", "validation") if os.path.isdir(os.path.join(data_dir, d))]
    test = sources.FolderSource(test_dirs[0], classes=train.classes) if test_dirs else None
    return train, test, len(train.classes)
  if data_dir and "://" not in data_dir and not os.path.isdir(data_dir):  # gs:// folders: tfds reads them
    raise DataNotFoundError(f"dataset.data_dir {data_dir!r} does not exist; it must be a tfds data folder with "
                            f"{config.name!r} prepared.")
  test_split, num_classes = TFDS_DATASETS[config.name]
  return sources.TfdsSource(config.name, "train", data_dir), sources.TfdsSource(config.name, test_split, data_dir), num_classes


def model_image_shape(source: Any, image_size: int) -> tuple[int, int, int]:
  """The model's input [H, W, C]: image_size x image_size when set, else the source's fixed shape."""
  if image_size:
    channels = source.image_shape[-1] if source.image_shape else 3
    return (int(image_size), int(image_size), int(channels))
  if source.image_shape is None:
    raise ValueError(f"dataset.image_size must be set (e.g. 224) for {source.describe()}: its images differ in size.")
  return tuple(source.image_shape)


def load_from_source(config: Any) -> Dataset:
  """A `Dataset` read through `ensembles.sources`: streamed (`streaming.ImageView` splits, read per
  batch) when ``dataset.input`` is 'stream', or 'auto' and the set is one of `STREAMED_BY_DEFAULT`
  or larger than ``memory_limit_gb`` at the model's input size; otherwise read whole into memory.
  Splits, subsets and the long-tailed set are drawn as `load_dataset` draws them (the same examples
  for the same seed); mean / std come from `statistics_examples` training images (all when fewer)."""
  from ensembles import streaming  # pylint: disable=g-import-not-at-top
  train_source, test_source, num_classes = training_sources(config)
  shape = model_image_shape(train_source, getattr(config, "image_size", 0))
  y_all = train_source.labels()
  train = streaming.ImageView(train_source, shape)
  rng = np.random.default_rng(config.split_seed)
  if not 0 <= config.val_size < len(y_all):
    raise ValueError(f"dataset.val_size must be in [0, {len(y_all)}), got {config.val_size}.")
  perm = rng.permutation(len(y_all))
  val_idx, train_idx = np.sort(perm[: config.val_size]), np.sort(perm[config.val_size:])
  x_val, y_val = train.take(val_idx), y_all[val_idx]
  x_train, y_train = train.take(train_idx), y_all[train_idx]
  x_train, y_train = _subset(x_train, y_train, config.train_subset, rng)
  ratio = float(getattr(config, "imbalance_ratio", 1.0))
  if ratio != 1.0:
    x_train, y_train = long_tailed_subset(x_train, y_train, num_classes, ratio, rng)
  if test_source is None:
    x_test, y_test = train.take(np.zeros(0, np.int64)), np.zeros(0, np.int32)
  else:
    x_test, y_test = streaming.ImageView(test_source, shape), test_source.labels()
  x_test, y_test = _subset(x_test, y_test, config.test_subset, rng)
  for y, where in ((y_train, "train"), (y_test, "test")):
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f"{config.name} {where}: labels must lie in [0, {num_classes}), found [{y.min()}, {y.max()}].")
  limit = int(getattr(config, "statistics_examples", 100_000))
  sample = np.arange(len(y_train)) if len(y_train) <= limit else np.sort(
      np.random.default_rng(0).choice(len(y_train), limit, replace=False))
  mean, std = streamed_statistics(x_train, sample)
  if not _streams(config, len(y_train), shape):
    x_train, x_val, x_test = x_train[:], x_val[:], x_test[:]
  return Dataset(config.name, x_train, y_train, x_val, y_val, x_test, y_test, num_classes, mean, std)


def _streams(config: Any, num_train: int, shape: tuple[int, ...]) -> bool:
  choice = getattr(config, "input", "auto")
  if choice != "auto":
    return choice == "stream"
  too_large = num_train * int(np.prod(shape)) > float(getattr(config, "memory_limit_gb", 4.0)) * 2 ** 30
  return config.name in STREAMED_BY_DEFAULT or too_large


def abstract_dataset(config: Any) -> Dataset:
  """The ``dataset`` block's splits as shapes only, nothing read (pre-flight, `ensembles.preflight`):
  sizes from `TRAIN_EXAMPLES` / `TEST_EXAMPLES` after the validation split, subsets and the
  long-tailed counts, the model's image shape (``image_size`` or `IMAGE_SHAPES`), zero images that
  take no memory (a broadcast view) and zero labels, held in memory or streamed as the run would
  (`_streams`), normalisation mean 0.5 and std 0.25 per channel (constants of the compiled step)."""
  from ensembles import sources, streaming  # pylint: disable=g-import-not-at-top
  name = config.name
  if name not in TRAIN_EXAMPLES:
    raise ValueError(f"pre-flight knows the sizes of {sorted(TRAIN_EXAMPLES)}; dataset.name={name!r} is not one "
                     "of them.")
  size = getattr(config, "image_size", 0)
  shape = (size, size, 3) if size else IMAGE_SHAPES[name]
  num_classes = TFDS_DATASETS[name][1]
  n = TRAIN_EXAMPLES[name] - config.val_size
  if config.train_subset:
    n = min(n, config.train_subset)
  if float(getattr(config, "imbalance_ratio", 1.0)) != 1.0:
    n = sum(long_tailed_counts(n // num_classes, num_classes, float(config.imbalance_ratio)))
  n_test = min(TEST_EXAMPLES[name], config.test_subset or TEST_EXAMPLES[name])
  images = lambda count: np.broadcast_to(np.zeros((), np.uint8), (count, *shape))
  labels = lambda count: np.zeros(count, np.int32)
  x_train, x_val, x_test = images(n), images(config.val_size), images(n_test)
  if _streams(config, n, shape):
    x_train, x_val, x_test = (streaming.ImageView(sources.ArraySource(x, labels(len(x)), name), shape)
                              for x in (x_train, x_val, x_test))
  channels = shape[-1]
  return Dataset(name, x_train, labels(n), x_val, labels(config.val_size), x_test, labels(n_test), num_classes,
                 np.full(channels, 0.5, np.float32), np.full(channels, 0.25, np.float32))


def fingerprint(data: Dataset) -> str:
  """CRC32 of every split's inputs and labels with their shapes: what identifies a user's data."""
  crc = 0
  for array in (data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test):
    if hasattr(array, "identity"):  # a streamed view: its source's content, examples and shape, not its pixels
      crc = zlib.crc32(array.indices.tobytes(), zlib.crc32(array.identity().encode(), crc))
      continue
    array = np.ascontiguousarray(array)
    crc = zlib.crc32(array.tobytes(), zlib.crc32(f"{array.shape}{array.dtype}".encode(), crc))
  return f"{crc:08x}"


def input_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (last axis) mean and std [C] of training inputs x [N, ..., C] in the units the
  model sees before normalisation (uint8 images / 255; float features as they are); std >= 1e-3.
  uint8 images are counted per value (a 256-bin histogram per channel: no float copy of the
  training set, which took about a second on Fashion-MNIST in a fresh process)."""
  if x.dtype == np.uint8:
    return statistics_from_histograms(uint8_histograms(x))
  scaled = x.astype(np.float64) / 255.0 if np.issubdtype(x.dtype, np.integer) else x.astype(np.float64)
  axes = tuple(range(x.ndim - 1))
  return scaled.mean(axis=axes).astype(np.float32), np.maximum(scaled.std(axis=axes), 1e-3).astype(np.float32)


def uint8_histograms(x: np.ndarray) -> np.ndarray:
  """counts [C, 256]: how often each value occurs in each channel of uint8 images x [N, ..., C]."""
  flat = x.reshape(-1, x.shape[-1])
  rows = 1 << 18  # counted in blocks: bincount copies its input to int64
  return np.stack([sum((np.bincount(flat[i:i + rows, c], minlength=256) for i in range(0, len(flat), rows)),
                       np.zeros(256, np.int64)) for c in range(flat.shape[1])]).astype(np.float64)


def statistics_from_histograms(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std [C] of values v/255 from their counts [C, 256] (std >= 1e-3), float32."""
  values = np.arange(256, dtype=np.float64) / 255.0
  mean = counts @ values / counts.sum(1)
  std = np.sqrt(np.sum(counts * (values[None] - mean[:, None]) ** 2, axis=1) / counts.sum(1))
  return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)


def streamed_statistics(view: Any, positions: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """`input_statistics` of view[positions], read ``chunk`` images at a time (host memory does not
  grow with the number of images); the same values as on the whole array."""
  counts = sum(uint8_histograms(view[positions[i:i + chunk]]) for i in range(0, len(positions), chunk))
  return statistics_from_histograms(counts)


def from_arrays(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None = None,
                y_val: np.ndarray | None = None, x_test: np.ndarray | None = None, y_test: np.ndarray | None = None,
                num_classes: int | None = None, name: str = "arrays") -> Dataset:
  """A `Dataset` from a user's own arrays: inputs x [N, ...] (uint8 images [N, H, W, C], or float
  features [N, D] / [N, ..., C]) and integer labels y [N] in [0, num_classes) (default: max label
  + 1 over all splits). Validation and test splits are optional (empty when None); the ensemble is
  evaluated on the test split when there is one."""
  x_train, y_train = np.asarray(x_train), np.asarray(y_train)
  if x_train.ndim < 2 or len(x_train) < 1:
    raise ValueError(f"x_train must be [N, ...] with N >= 1 examples and at least one feature, got {x_train.shape}.")
  empty = (np.zeros((0, *x_train.shape[1:]), x_train.dtype), np.zeros((0,), np.int32))
  splits = {"train": (x_train, y_train),
            "val": empty if x_val is None else (np.asarray(x_val), np.asarray(y_val)),
            "test": empty if x_test is None else (np.asarray(x_test), np.asarray(y_test))}
  if (x_val is None) != (y_val is None) or (x_test is None) != (y_test is None):
    raise ValueError("x_val and y_val (and x_test and y_test) must be given together.")
  for split, (x, y) in splits.items():
    if x.shape[1:] != x_train.shape[1:] or np.shape(y) != (len(x),):
      raise ValueError(f"x_{split} must be [N, {', '.join(map(str, x_train.shape[1:]))}] (the shape of x_train's "
                       f"examples) with labels y_{split} [N]; got {x.shape} and {np.shape(y)}.")
    if len(y) and not np.issubdtype(np.asarray(y).dtype, np.integer):
      raise ValueError(f"y_{split} must hold integer class labels, got dtype {np.asarray(y).dtype}.")
  largest = max(int(y.max()) for _, y in splits.values() if len(y))
  num_classes = largest + 1 if num_classes is None else num_classes
  for split, (x, y) in splits.items():
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f"y_{split}: labels must lie in [0, num_classes={num_classes}), found [{y.min()}, {y.max()}].")
  (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
      (x, y.astype(np.int32)) for x, y in splits.values())
  return Dataset(name, x_train, y_train, x_val, y_val, x_test, y_test, int(num_classes), *input_statistics(x_train))


# ---------------------------------------------------------------------------------------------------
# Evaluation sets: out-of-distribution images and corrupted test sets.

# OoD sets: any named dataset's test split, or `digits` (offline, bundled with scikit-learn).
OOD_DATASETS = ("digits",) + DATASETS
# tfds `cifar10_corrupted` corruption types (each at severities 1..5).
CIFAR10_C_CORRUPTIONS = (
    "brightness", "contrast", "defocus_blur", "elastic", "fog", "frost", "frosted_glass_blur", "gaussian_blur",
    "gaussian_noise", "impulse_noise", "jpeg_compression", "motion_blur", "pixelate", "saturate", "shot_noise",
    "snow", "spatter", "speckle_noise", "zoom_blur")


def load_digits_mnist_style() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 1797 handwritten digits (8×8, values 0..16), drawn MNIST-style: scaled to
  0..255, resized bilinearly to 20×20 and centred in a 28×28 black image. uint8 [1797, 28, 28, 1]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  digits = load_digits()
  out = np.zeros((len(digits.images), 28, 28, 1), np.uint8)
  for i, image in enumerate(digits.images):
    small = Image.fromarray((image * (255.0 / 16.0)).astype(np.float32))
    out[i, 4:24, 4:24, 0] = np.clip(np.round(np.asarray(small.resize((20, 20), Image.BILINEAR))), 0, 255)
  return out, digits.target.astype(np.int32)


def load_test_split(name: str, data_dir: str = "") -> tuple[np.ndarray, np.ndarray]:
  """The test images (uint8 [N, H, W, C]) and labels of a dataset of `OOD_DATASETS`
  (Fashion-MNIST from the offline IDX files when present)."""
  if name not in OOD_DATASETS:
    raise ValueError(f"Unknown OoD dataset {name!r}; allowed: {list(OOD_DATASETS)}.")
  if name == "digits":
    return load_digits_mnist_style()
  if name == "fashion_mnist":
    arrays = load_dataset(name=name, data_dir=data_dir, val_size=0)
    return arrays.x_test, arrays.y_test
  return _read_prepared(name, TFDS_DATASETS[name][0], data_dir)


EVALUATION_ADVICE = "or leave it out of the evaluation block"
TRAINING_ADVICE = "or set dataset.download=True to let tensorflow-datasets fetch it (needs network)"


def _read_prepared(name: str, split: str, data_dir: str, advice: str = EVALUATION_ADVICE) -> tuple[np.ndarray, np.ndarray]:
  """A set that tfds must already hold (never downloads, so offline runs fail at once)."""
  try:
    return _read_tfds_split(name, split, data_dir or None, download=False)
  except Exception as err:
    raise DataNotFoundError(
        f"tensorflow-datasets has not prepared {name!r} in {data_dir or 'its default data folder'} "
        f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). Prepare it on a machine with network access "
        f"(`tfds build {name.split('/')[0]}`) and point dataset.data_dir at that tfds data folder, {advice}.") from err


def check_prepared(name: str, split: str, data_dir: str = "", advice: str = EVALUATION_ADVICE) -> None:
  """Raises DataNotFoundError unless tfds holds ``name``'s ``split`` (cheap: opens, reads nothing)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # tfds warns about every empty folder it looks into
  try:
    tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except Exception:  # the message comes from the reader, which says how to prepare it
    _read_prepared(name, split, data_dir, advice)
  finally:
    logging.set_verbosity(verbosity)


def _has_idx_files(directory: str) -> bool:
  return all(os.path.isfile(os.path.join(directory, f)) for f in FASHION_MNIST_FILES.values())


def check_training_source(config: Any) -> None:
  """Fails at once (no network wait, before any work) when the training set of the ``dataset``
  block cannot be read: an explicit ``data_dir`` that does not exist, or holds neither the files
  nor a prepared tfds copy; a named tfds dataset that is not prepared (unless ``download``)."""
  name, data_dir = config.name, config.data_dir
  download = bool(getattr(config, "download", False))
  if name == FOLDER:
    if not (data_dir and os.path.isdir(os.path.join(data_dir, "train"))):
      raise DataNotFoundError(f"dataset.data_dir {data_dir!r} must be a folder holding train/<class>/<images> (and "
                              "optionally test/ or val/ with the same class folders) for dataset.name='folder'.")
    return
  if name == "fashion_mnist":
    expected = f"Fashion-MNIST's IDX files {list(FASHION_MNIST_FILES.values())} or a tfds data folder with fashion_mnist"
  else:
    expected = f"a tfds data folder with {name!r} prepared (`tfds build {name} --data_dir DIR`)"
  if data_dir and "://" not in data_dir and not os.path.isdir(data_dir):
    raise DataNotFoundError(f"dataset.data_dir {data_dir!r} does not exist; it must hold {expected}.")
  if name == "fashion_mnist":
    if _has_idx_files(data_dir or os.environ.get("ENSEMBLES_FASHION_MNIST_DIR", FASHION_MNIST_DIR)):
      return
    if data_dir:
      try:
        check_prepared(name, "train", data_dir)
      except DataNotFoundError as err:
        raise DataNotFoundError(f"dataset.data_dir {data_dir!r} holds neither {expected} (Debian's "
                                "`apt-get install dataset-fashion-mnist` puts the IDX files in "
                                f"{FASHION_MNIST_DIR}).") from err
    return  # the default folder: `load_dataset` explains how to get the files
  if not download:
    check_prepared(name, "train", data_dir, TRAINING_ADVICE)


def match_image_shape(images: np.ndarray, shape: tuple[int, ...], resize: bool, what: str) -> np.ndarray:
  """``images`` [N, H', W', C'] as [N, *shape]. Equal shapes pass unchanged. Otherwise, with ``resize``:
  channels 1 -> 3 by repetition, 3 -> 1 by the mean, then a bilinear resize to shape's H × W; without
  it, a ValueError naming both shapes."""
  shape = tuple(shape)
  if images.shape[1:] == shape:
    return images
  if not resize:
    raise ValueError(f"{what} has images of shape {images.shape[1:]} but the model takes {shape}; set "
                     "evaluation.resize_ood=True to resize them (bilinear, channels repeated or averaged).")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w, c = shape
  x = images.astype(np.float32)
  if x.shape[-1] != c:
    if (x.shape[-1], c) == (1, 3):
      x = np.repeat(x, 3, axis=-1)
    elif (x.shape[-1], c) == (3, 1):
      x = x.mean(axis=-1, keepdims=True)
    else:
      raise ValueError(f"{what}: cannot convert {x.shape[-1]} channels to {c}.")
  out = np.empty((len(x), h, w, c), np.float32)
  for i in range(len(x)):
    for k in range(c):
      out[i, ..., k] = np.asarray(Image.fromarray(np.ascontiguousarray(x[i, ..., k])).resize((w, h), Image.BILINEAR))
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


# tfds `imagenet2012_corrupted` corruption types (ImageNet-C; each at severities 1..5, 224x224 crops)
IMAGENET_C_CORRUPTIONS = (
    "brightness", "contrast", "defocus_blur", "elastic_transform", "fog", "frost", "gaussian_blur", "gaussian_noise",
    "glass_blur", "impulse_noise", "jpeg_compression", "motion_blur", "pixelate", "saturate", "shot_noise", "snow",
    "spatter", "speckle_noise", "zoom_blur")
# shifted test sets with the training set's label space: dataset -> {tfds name: split}. imagenet_a and
# imagenet_r hold 200 of the 1,000 classes; we score the full 1,000-way prediction (ours: the usual
# protocol restricts the logits to the 200 classes).
SHIFT_DATASETS = {"imagenet2012": {"imagenet_v2": "test", "imagenet_a": "test", "imagenet_r": "test"}}


def streamed_test_set(name: str, split: str, image_shape: tuple[int, ...], data_dir: str = "") -> tuple[Any, np.ndarray]:
  """A prepared tfds set as (`streaming.ImageView` at ``image_shape`` (centre crop), labels): read
  per batch, never downloaded."""
  from ensembles import sources, streaming  # pylint: disable=g-import-not-at-top
  source = sources.TfdsSource(name, split, data_dir)
  return streaming.ImageView(source, image_shape), source.labels()


def load_cifar10_corrupted(corruption: str, severity: int, data_dir: str = "") -> tuple[np.ndarray, np.ndarray]:
  """One CIFAR-10-C test set (10 000 images) through tfds `cifar10_corrupted/{corruption}_{severity}`."""
  if corruption not in CIFAR10_C_CORRUPTIONS:
    raise ValueError(f"Unknown cifar10_corrupted corruption {corruption!r}; allowed: {list(CIFAR10_C_CORRUPTIONS)}.")
  return _read_prepared(f"cifar10_corrupted/{corruption}_{severity}", "test", data_dir)
