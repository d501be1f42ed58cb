"""Streaming input: images read from disk when a batch needs them, never the whole set in memory.

* `ImageView`: a lazy array over an example source (`ensembles.sources`): ``len``, ``shape``,
  ``take(idx)`` (a sub-view) and ``view[i]`` / ``view[a:b]`` / ``view[idx]`` (decoded images, uint8
  [n, H, W, C]). Images whose size differs from the view's are resized so the shorter side is
  H / crop_fraction and centre-cropped (the evaluation transform; ImageNet: 256 -> 224). Datasets
  built from views (`data.load_dataset` with ``dataset.input = 'stream'``) evaluate through the same
  code as arrays, which only ever slices them.
* `TrainBatches`: the run's training batches, step after step: the examples of the same per-member
  order as the in-memory path (`train.epoch_indices`), each host reading only the rows of the
  [M, B] batch that its own devices hold, optionally with host-side random-resized crops (per
  member, example and step seeds), read ahead by grain threads. Its iterator state goes into every
  checkpoint, so a resumed run continues at the exact next batch.
"""
from __future__ import annotations

import concurrent.futures
import math
import threading
from typing import Any, Sequence

import jax
import numpy as np

from ensembles import members as members_lib
from ensembles import train as train_lib

CROP_FRACTION = 0.875  # evaluation: shorter side resized to size / 0.875, then the centre crop
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="decode")
_CHUNK = 64  # examples per read call (tfds reads several records at once)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [H', W', C] -> [height, width, C], bilinear (PIL), channels resized together."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if image.shape[:2] == (height, width):
    return image
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  out = np.asarray(pil.resize((width, height), Image.BILINEAR))
  return out[..., None] if out.ndim == 2 else out


def center_crop(image: np.ndarray, shape: Sequence[int], crop_fraction: float = CROP_FRACTION) -> np.ndarray:
  """The evaluation transform: ``image`` unchanged if it has ``shape`` [H, W, C]; otherwise resized
  (aspect kept) so its shorter side is max(H, W) / crop_fraction, then the centre H x W."""
  h, w, c = shape
  if image.shape[-1] != c:
    raise ValueError(f"An image has {image.shape[-1]} channels, the model takes {c}.")
  if image.shape[:2] == (h, w):
    return image
  side = max(h, w) / crop_fraction
  scale = side / min(image.shape[:2])
  image = resize(image, max(h, round(image.shape[0] * scale)), max(w, round(image.shape[1] * scale)))
  top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
  return image[top:top + h, left:left + w]


def random_resized_crop(rng: np.random.Generator, image: np.ndarray, shape: Sequence[int],
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """Inception-style crop: an area fraction s ~ U(scale) of the image with aspect ratio r,
  log r ~ U(log ratio), at a uniform position, resized to ``shape`` [H, W, C]; 10 tries, then the
  largest centred crop within ``ratio``."""
  height, width = image.shape[:2]
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
      return resize(image[top:top + h, left:left + w], shape[0], shape[1])
  aspect = width / height
  w, h = (width, height) if ratio[0] <= aspect <= ratio[1] else (
      (int(round(height * ratio[1])), height) if aspect > ratio[1] else (width, int(round(width / ratio[0]))))
  top, left = (height - h) // 2, (width - w) // 2
  return resize(image[top:top + h, left:left + w], shape[0], shape[1])


class ImageView:
  """A lazy uint8 array [N, H, W, C] of a source's images (positions ``indices`` of it, default
  all) under the evaluation transform `center_crop` to ``image_shape``."""

  dtype = np.dtype(np.uint8)

  def __init__(self, source: Any, image_shape: Sequence[int], indices: np.ndarray | None = None,
               crop_fraction: float = CROP_FRACTION):
    self.source, self.image_shape = source, tuple(int(d) for d in image_shape)
    self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64)
    self.crop_fraction = crop_fraction

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self.indices), *self.image_shape)

  @property
  def ndim(self) -> int:
    return 1 + len(self.image_shape)

  def __len__(self) -> int:
    return len(self.indices)

  def take(self, positions: Any, axis: int = 0) -> "ImageView":
    """The sub-view of these positions (nothing is read)."""
    if axis != 0:
      raise ValueError("ImageView.take works along the example axis only.")
    return ImageView(self.source, self.image_shape, self.indices[np.asarray(positions, np.int64)], self.crop_fraction)

  def __getitem__(self, key: Any) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
      return self.read([int(key)])[0]
    if isinstance(key, slice):
      return self.read(np.arange(len(self))[key])
    return self.read(np.asarray(key, np.int64))

  def __array__(self, *args, **kwargs):
    raise TypeError(f"{self.describe()} streams from disk and is not converted to one array; read slices of it "
                    "(view[a:b]) or set dataset.input = 'memory'.")

  def read(self, positions: Sequence[int], transforms: Sequence[Any] | None = None) -> np.ndarray:
    """Images at ``positions`` of the view, uint8 [n, H, W, C], read and decoded in chunks on a
    thread pool; each through ``transforms[i](image)`` if given, else the evaluation transform."""
    positions = np.asarray(positions, np.int64)
    if len(positions) == 0:
      return np.zeros((0, *self.image_shape), np.uint8)

    def chunk(start):
      part = positions[start:start + _CHUNK]
      images = self.source.images([int(i) for i in self.indices[part]])
      out = [transforms[start + j](image) if transforms is not None else
             center_crop(image, self.image_shape, self.crop_fraction) for j, image in enumerate(images)]
      for j, image in enumerate(out):
        if image.shape != self.image_shape:
          raise ValueError(f"{self.describe()}: example {int(self.indices[part[j]])} has shape {image.shape} after "
                           f"its transform, expected {self.image_shape}.")
      return out

    return np.stack([image for part in _POOL.map(chunk, range(0, len(positions), _CHUNK)) for image in part])

  def describe(self) -> str:
    return f"{self.source.describe()} as {self.image_shape}"

  def identity(self) -> str:
    """The source's content (not its location) and the view's shape; with `indices`, the view."""
    return f"{self.source.identity()} as {self.image_shape} crop {self.crop_fraction}"


def is_streamed(x: Any) -> bool:
  return isinstance(x, ImageView)


def local_blocks(sharding: jax.sharding.Sharding | None, shape: tuple[int, int],
                 devices: Sequence[Any] | None = None) -> dict[tuple, list]:
  """The blocks of an [M, B] batch that ``devices`` (default: this process's) hold under
  ``sharding``: {(member slice, batch slice) as (start, stop) pairs: [devices holding it]}. Each
  host reads only these rows. Without a sharding: the whole batch on the default device."""
  if sharding is None:
    return {((0, shape[0]), (0, shape[1])): [None]}
  devices = set(sharding.addressable_devices if devices is None else devices)
  blocks: dict[tuple, list] = {}
  for device, index in sharding.devices_indices_map(shape).items():
    if device in devices:
      key = tuple(s.indices(n)[:2] for s, n in zip(index, shape))
      blocks.setdefault(key, []).append(device)
  return blocks


class TrainBatches:
  """The training batches of ``run`` (whose ``data.x_train`` is an `ImageView`), from step
  ``start``: ``next(batches)`` is the next step's `train.Batch` [M, B, ...] laid out on the run's
  mesh. ``state()`` is the iterator state that resumes at the next batch (saved with checkpoints).

  Step t of epoch e reads the examples ``epoch_indices(e)[:, t]`` (the in-memory order). With
  ``augment.random_resized_crop`` each training image is cropped on the host with a generator seeded
  by (seed, key_salt, member, step, row), so a batch is the same whenever it is read."""

  def __init__(self, run: Any, start: int = 0, state: dict | None = None):
    import grain  # pylint: disable=g-import-not-at-top
    c = run.config
    self.run, self.view, self.labels = run, run.data.x_train, np.asarray(run.data.y_train, np.int32)
    self.batch_shape = (run.total_members, c.training.batch_size)
    mesh = run.mesh
    self.sharding = (members_lib.sharding(mesh, members_lib.MEMBER_AXIS, members_lib.DATA_AXIS)
                     if members_lib.is_distributed(mesh) else None)
    self.blocks = local_blocks(self.sharding, self.batch_shape)
    self.crop = bool(c.augment.get("random_resized_crop", False))
    self.scale = (float(c.augment.get("crop_scale_min", 0.08)), 1.0)
    self.seed = (int(run.seeds[0]), int(run.key_salt))  # a streamed run trains one seed (`trainer.fit`)
    self._orders: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()
    options = grain.ReadOptions(num_threads=int(c.dataset.get("read_threads", 4)),
                                prefetch_buffer_size=int(c.dataset.get("prefetch_batches", 4)))
    dataset = grain.MapDataset.range(run.total_steps).map(self._read)
    self.iterator = iter(dataset.to_iter_dataset(options))
    state = state or {"next_index": start}
    if int(state["next_index"]) != start:
      raise ValueError(f"The checkpoint's input state {state} does not continue at its step {start}.")
    self.iterator.set_state(state)

  def order(self, epoch: int) -> np.ndarray:
    """Example indices [M, S, B] of ``epoch`` (`Run.epoch_order`; two epochs kept)."""
    with self._lock:
      if epoch not in self._orders:
        self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
        self._orders[epoch] = self.run.epoch_order(epoch)
      return self._orders[epoch]

  def _read(self, step: int) -> dict:
    """This host's blocks of step ``step``: {block: (images, labels, ids)}."""
    epoch, position = divmod(int(step), self.run.steps_per_epoch)
    ids = self.order(epoch)[:, position]  # [M, B]
    out = {}
    for key in self.blocks:
      (m0, m1), (b0, b1) = key
      block_ids = ids[m0:m1, b0:b1]
      transforms = None
      if self.crop:
        transforms = [self._crop_for(int(step), m, b) for m in range(m0, m1) for b in range(b0, b1)]
      images = self.view.read(block_ids.reshape(-1), transforms).reshape(*block_ids.shape, *self.view.image_shape)
      out[key] = (images, self.labels[block_ids], block_ids.astype(np.int32))
    return out

  def _crop_for(self, step: int, member: int, row: int):
    rng = np.random.default_rng([*self.seed, member, step, row])
    return lambda image: random_resized_crop(rng, image, self.view.image_shape, self.scale)

  def __iter__(self):
    return self

  def __next__(self) -> train_lib.Batch:
    blocks = next(self.iterator)
    parts = [self._place([blocks[key][k] for key in self.blocks]) for k in range(3)]
    return train_lib.Batch(*parts)

  def _place(self, arrays: list[np.ndarray]) -> jax.Array:
    if self.sharding is None:
      return jax.device_put(arrays[0])
    shape = (*self.batch_shape, *arrays[0].shape[2:])
    singles = [jax.device_put(a, d) for a, devices in zip(arrays, self.blocks.values()) for d in devices]
    return jax.make_array_from_single_device_arrays(shape, members_lib.sharding(
        self.sharding.mesh, members_lib.MEMBER_AXIS, members_lib.DATA_AXIS), singles)

  def state(self) -> dict:
    return dict(self.iterator.get_state())
