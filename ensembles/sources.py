"""Example sources on disk: random access to one decoded example at a time, nothing held whole.

A source has ``len(source)``, ``source.images(indices) -> [uint8 [H, W, C], ...]`` (decoded; sizes
may differ between examples), ``source.labels() -> int32 [N]`` and ``source.image_shape`` (the fixed
[H, W, C] of every example, or None when sizes vary). ``describe()`` names it for messages;
``identity()`` names its content without its location (a run's data fingerprint: the same data
mounted elsewhere after a preemption is still the same data).

* `TfdsSource`: a prepared tensorflow-datasets split through `tfds.data_source` (ArrayRecord
  files; no TensorFlow needed; JPEG/PNG decoded by PIL);
* `FolderSource`: a folder of class sub-folders of images (Tiny-ImageNet, CUB-200 as users keep
  them): classes are the sorted sub-folder names, examples the sorted image files;
* `ArraySource`: arrays in memory (tests, and the in-memory equivalent of a stream).
"""
from __future__ import annotations

import hashlib
import os
import zlib
from typing import Any, Protocol

import numpy as np

from ensembles.errors import DataNotFoundError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
LABELS_CACHE_ENV = "ENSEMBLES_LABELS_CACHE"  # a folder; 'off' disables the cache


class ExampleSource(Protocol):
  image_shape: tuple[int, int, int] | None

  def __len__(self) -> int: ...

  def images(self, indices: list[int]) -> list[np.ndarray]: ...

  def labels(self) -> np.ndarray: ...

  def describe(self) -> str: ...

  def identity(self) -> str: ...


def _as_hwc(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.dtype != np.uint8:
    raise ValueError(f"Expected a uint8 image [H, W, C], got {image.dtype} {image.shape}.")
  return image


class ArraySource:
  """Examples of uint8 arrays x [N, H, W, C] and labels y [N] held in memory."""

  def __init__(self, x: np.ndarray, y: np.ndarray, name: str = "arrays"):
    self.x, self.y, self.name = np.asarray(x), np.asarray(y, np.int32), name
    self.image_shape = tuple(self.x.shape[1:])

  def __len__(self) -> int:
    return len(self.y)

  def images(self, indices: list[int]) -> list[np.ndarray]:
    return [_as_hwc(self.x[i]) for i in indices]

  def labels(self) -> np.ndarray:
    return self.y

  def describe(self) -> str:
    return f"{self.name} {self.x.shape}"

  def identity(self) -> str:
    return f"arrays {self.x.shape} crc {zlib.crc32(np.ascontiguousarray(self.x).tobytes()):08x}"


def _get_many(source: Any, keys: Any) -> list:
  """Records ``keys`` of a tfds data source, read together (one call) where the source can."""
  keys = [int(k) for k in keys]
  try:
    return source.__getitems__(keys)
  except TypeError:  # tfds' mock data sources read one record at a time
    return [source[k] for k in keys]


class TfdsSource:
  """One split of a prepared tfds dataset, read record by record (`tfds.data_source`); never
  downloads. Labels are read once (images not decoded where tfds allows) and cached in
  $ENSEMBLES_LABELS_CACHE (default ~/.cache/ensembles/labels) when the data folder is local."""

  def __init__(self, name: str, split: str, data_dir: str = "", image_key: str = "image", label_key: str = "label"):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self.name, self.split, self.data_dir = name, split, data_dir
    self.image_key, self.label_key = image_key, label_key
    try:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as err:
      raise DataNotFoundError(
          f"tensorflow-datasets has not prepared {name!r} split {split!r} in {data_dir or 'its default data folder'} "
          f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). Prepare it where it can be downloaded "
          f"(`tfds build {name}`; imagenet2012 needs its manual download, see the tfds catalog) and point "
          "dataset.data_dir at that tfds data folder.") from err
    shape = tfds.builder(name, data_dir=data_dir or None).info.features[image_key].shape
    self.image_shape = tuple(shape) if all(d is not None for d in shape) else None
    self._labels = None

  def __len__(self) -> int:
    return len(self.source)

  def images(self, indices: list[int]) -> list[np.ndarray]:
    return [_as_hwc(e[self.image_key]) for e in _get_many(self.source, indices)]

  def labels(self) -> np.ndarray:
    if self._labels is None:
      cache = self._cache_path()
      if cache and os.path.exists(cache):
        self._labels = np.load(cache)
      else:
        self._labels = self._read_labels()
        if cache:
          os.makedirs(os.path.dirname(cache), exist_ok=True)
          np.save(cache + ".tmp.npy", self._labels)
          os.replace(cache + ".tmp.npy", cache)
    return self._labels

  def _read_labels(self) -> np.ndarray:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    def read(source):
      blocks = (_get_many(source, range(i, min(i + 1024, len(source)))) for i in range(0, len(source), 1024))
      return np.asarray([int(e[self.label_key]) for block in blocks for e in block], np.int32)

    try:  # records without decoding the images
      return read(tfds.data_source(self.name, split=self.split, data_dir=self.data_dir or None, download=False,
                                   decoders={self.image_key: tfds.decode.SkipDecoding()}))
    except Exception:  # noqa: BLE001  (e.g. tfds' mock data, which encodes with TensorFlow)
      return read(self.source)

  def _cache_path(self) -> str | None:
    """The labels' cache file, named by the split's record files (paths, sizes, modification
    times): a rewritten dataset gets a new file. None for remote, default or missing folders."""
    folder = os.environ.get(LABELS_CACHE_ENV, os.path.expanduser("~/.cache/ensembles/labels"))
    dataset_dir = os.path.join(self.data_dir, *self.name.split("/")) if self.data_dir else ""
    if folder == "off" or not os.path.isdir(dataset_dir):
      return None
    stamp = [f"{os.path.abspath(self.data_dir)}|{self.name}|{self.split}|{len(self)}"]
    for root, _, files in sorted(os.walk(dataset_dir)):
      for f in sorted(files):
        if f"-{self.split}." in f:
          st = os.stat(os.path.join(root, f))
          stamp.append(f"{root}/{f}|{st.st_size}|{st.st_mtime_ns}")
    key = hashlib.sha1("\n".join(stamp).encode()).hexdigest()
    return os.path.join(folder, f"{self.name.replace('/', '_')}-{self.split}-{key[:16]}.npy")

  def describe(self) -> str:
    return f"tfds {self.name}[{self.split}] in {self.data_dir or 'default'} ({len(self)} examples)"

  def identity(self) -> str:
    return f"tfds {self.name}[{self.split}] ({len(self)} examples)"


class FolderSource:
  """Images in ``root/<class>/.../<file>`` (at any depth, e.g. Tiny-ImageNet's
  train/<wnid>/images/): class k is the k-th sub-folder in sorted order (or the order of
  ``classes``); files with an image suffix, sorted by path. Decoded with PIL, as RGB (or L when
  ``channels`` is 1)."""

  def __init__(self, root: str, classes: tuple[str, ...] | None = None, channels: int = 3):
    if not os.path.isdir(root):
      raise DataNotFoundError(f"dataset.data_dir: the image folder {root!r} does not exist; it must hold one "
                              "sub-folder of images per class (root/<class>/<image>).")
    self.root, self.channels = root, channels
    self.classes = tuple(classes) if classes else tuple(sorted(
        d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))))
    files, labels = [], []
    for k, c in enumerate(self.classes):
      folder = os.path.join(root, c)
      if not os.path.isdir(folder):
        raise DataNotFoundError(f"{root!r} has no class folder {c!r} (the training split's classes must all be there).")
      names = sorted(os.path.join(root_, f) for root_, _, fs in os.walk(folder) for f in fs
                     if f.lower().endswith(IMAGE_SUFFIXES))
      files += names
      labels += [k] * len(names)
    if not files:
      raise DataNotFoundError(f"{root!r} holds no images in class sub-folders (suffixes {IMAGE_SUFFIXES}).")
    self.files, self._labels = files, np.asarray(labels, np.int32)
    self.image_shape = None

  def __len__(self) -> int:
    return len(self.files)

  def images(self, indices: list[int]) -> list[np.ndarray]:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    out = []
    for i in indices:
      with Image.open(self.files[int(i)]) as image:
        out.append(_as_hwc(np.asarray(image.convert("RGB" if self.channels == 3 else "L"))))
    return out

  def labels(self) -> np.ndarray:
    return self._labels

  def describe(self) -> str:
    return f"folder {self.root} ({len(self)} images, {len(self.classes)} classes)"

  def identity(self) -> str:
    names = "\n".join(os.path.relpath(f, self.root) for f in self.files)
    return f"folder {self.classes} files crc {zlib.crc32(names.encode()):08x}"
