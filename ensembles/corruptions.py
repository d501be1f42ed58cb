"""Image corruptions at five severities, generated in code (for datasets without a -C version).

CIFAR-10 uses tfds `cifar10_corrupted` (Hendrycks & Dietterich, 2019); for every other dataset
(Fashion-MNIST offline) the same corruption *types* are generated here. The severity parameters are
the published CIFAR-10-C ones (for 32-pixel images); the implementations are ours, written with
numpy/scipy/PIL, and are not pixel-identical to CIFAR-10-C. Our choices, documented per function:
colour images get brightness added to every channel (not to HSV value), motion blur uses a one-sided
Gaussian-weighted streak at a random angle per image.

All functions take images uint8 [N, H, W, C] and return uint8 of the same shape; randomness comes from
``seed`` (fixed per corruption and severity by `corrupt`), so every method sees the same images.
"""
from __future__ import annotations

import io
import zlib
from typing import Callable

import numpy as np
from PIL import Image


def _to_float(images: np.ndarray) -> np.ndarray:
  return np.asarray(images, np.float64) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def gaussian_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
  """x + N(0, c²) per pixel (x in [0, 1])."""
  return x + rng.normal(0.0, c, x.shape)


def shot_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
  """Poisson(c·x) / c: photon noise with c photons at full brightness (smaller c = stronger)."""
  return rng.poisson(x * c) / c


def impulse_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
  """Salt and pepper: each value becomes 0 or 1 (equally likely) with probability c."""
  u = rng.random(x.shape)
  out = x.copy()
  out[u < c / 2] = 0.0
  out[(u >= c / 2) & (u < c)] = 1.0
  return out


def speckle_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
  """x + x·N(0, c²): multiplicative noise."""
  return x + x * rng.normal(0.0, c, x.shape)


def gaussian_blur(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
  """Gaussian filter with standard deviation c pixels over height and width."""
  del rng
  from scipy import ndimage  # pylint: disable=g-import-not-at-top  (scipy loads only when corrupting)
  return ndimage.gaussian_filter(x, sigma=(0, c, c, 0), mode="reflect")


def defocus_blur(x: np.ndarray, c: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
  """Convolution with a disk of radius c[0] pixels (normalised), then a Gaussian of std c[1]."""
  del rng
  radius, alias_sigma = c
  r = int(np.ceil(radius))
  yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
  disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
  disk /= disk.sum()
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  out = ndimage.convolve(x, disk[None, :, :, None], mode="reflect")
  return ndimage.gaussian_filter(out, sigma=(0, alias_sigma, alias_sigma, 0), mode="reflect")


def _sample_bilinear(x: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
  """x [N, H, W, C] read at fractional positions yy, xx (broadcastable to [N, H, W]) with bilinear
  interpolation; positions outside the image take the nearest edge pixel."""
  n, h, w, _ = x.shape
  yy, xx = np.broadcast_to(yy, (n, h, w)), np.broadcast_to(xx, (n, h, w))
  yy, xx = np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)
  y0, x0 = np.floor(yy).astype(np.int64), np.floor(xx).astype(np.int64)
  y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
  fy, fx = (yy - y0)[..., None], (xx - x0)[..., None]
  b = np.arange(n)[:, None, None]
  top = x[b, y0, x0] * (1 - fx) + x[b, y0, x1] * fx
  bottom = x[b, y1, x0] * (1 - fx) + x[b, y1, x1] * fx
  return top * (1 - fy) + bottom * fy


def motion_blur(x: np.ndarray, c: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
  """Streak: Σ_t w_t · x shifted by t pixels along a random angle θ ∈ [−45°, 45°] per image,
  t = 0..c[0], w_t ∝ exp(−t² / 2c[1]²) (one-sided, as a camera moving during exposure)."""
  radius, sigma = c
  n, h, w, _ = x.shape
  theta = rng.uniform(-np.pi / 4, np.pi / 4, n)[:, None, None]
  rows, cols = np.arange(h, dtype=np.float64)[None, :, None], np.arange(w, dtype=np.float64)[None, None, :]
  steps = np.arange(int(radius) + 1)
  weights = np.exp(-steps ** 2 / (2.0 * sigma ** 2))
  weights /= weights.sum()
  return sum(wt * _sample_bilinear(x, rows - t * np.sin(theta), cols - t * np.cos(theta))
             for t, wt in zip(steps, weights))


def zoom_blur(x: np.ndarray, c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Mean of the image and its centre zooms by each factor z in c (bilinear)."""
  del rng
  _, h, w, _ = x.shape
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  rows, cols = np.arange(h, dtype=np.float64)[None, :, None], np.arange(w, dtype=np.float64)[None, None, :]
  out = x.copy()
  for z in c:
    out += _sample_bilinear(x, (rows - cy) / z + cy, (cols - cx) / z + cx)
  return out / (len(c) + 1)


def contrast(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
  """(x − mean) · c + mean, the mean taken per image over pixels and channels."""
  del rng
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  return (x - mean) * c + mean


def brightness(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
  """x + c on every channel (our choice; CIFAR-10-C adds c to the HSV value)."""
  del rng
  return x + c


def _per_image_pil(images: np.ndarray, fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
  out = np.empty_like(images)
  for i, image in enumerate(images):
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    result = np.asarray(fn(pil))
    out[i] = result[..., None] if result.ndim == 2 else result
  return out


def pixelate(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
  """Box-downsample to c·size pixels, then nearest-neighbour upsample back."""
  del rng
  images = _to_uint8(x)
  _, h, w, _ = images.shape
  small = (max(1, int(w * c)), max(1, int(h * c)))
  return _to_float(_per_image_pil(images, lambda im: im.resize(small, Image.BOX).resize((w, h), Image.NEAREST)))


def jpeg_compression(x: np.ndarray, c: int, rng: np.random.Generator) -> np.ndarray:
  """JPEG encode and decode at quality c (PIL)."""
  del rng

  def jpeg(im: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG", quality=int(c))
    return Image.open(io.BytesIO(buffer.getvalue()))

  return _to_float(_per_image_pil(_to_uint8(x), jpeg))


# name -> (function, parameters for severities 1..5; CIFAR-10-C's values)
CORRUPTIONS: dict[str, tuple[Callable, list]] = {
    "gaussian_noise": (gaussian_noise, [0.04, 0.06, 0.08, 0.09, 0.10]),
    "shot_noise": (shot_noise, [500, 250, 100, 75, 50]),
    "impulse_noise": (impulse_noise, [0.01, 0.02, 0.03, 0.05, 0.07]),
    "speckle_noise": (speckle_noise, [0.06, 0.1, 0.12, 0.16, 0.2]),
    "gaussian_blur": (gaussian_blur, [0.4, 0.6, 0.7, 0.8, 1.0]),
    "defocus_blur": (defocus_blur, [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)]),
    "motion_blur": (motion_blur, [(10, 1.0), (10, 1.5), (10, 2.0), (10, 2.5), (12, 3.0)]),
    "zoom_blur": (zoom_blur, [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                              np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)]),
    "contrast": (contrast, [0.75, 0.5, 0.4, 0.3, 0.15]),
    "brightness": (brightness, [0.05, 0.1, 0.15, 0.2, 0.3]),
    "pixelate": (pixelate, [0.95, 0.9, 0.85, 0.75, 0.65]),
    "jpeg_compression": (jpeg_compression, [80, 65, 58, 50, 40]),
}
SEVERITIES = (1, 2, 3, 4, 5)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
  """``images`` uint8 [N, H, W, C] under corruption ``name`` at ``severity`` in 1..5; uint8, same shape.

  The random stream depends on (seed, name, severity) only, so a corrupted test set is the same for
  every method and run.
  """
  if name not in CORRUPTIONS:
    raise ValueError(f"Unknown corruption {name!r}; allowed: {sorted(CORRUPTIONS)}.")
  if severity not in SEVERITIES:
    raise ValueError(f"Corruption severity must be one of {SEVERITIES}, got {severity!r}.")
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}.")
  fn, params = CORRUPTIONS[name]
  rng = np.random.default_rng([seed, zlib.crc32(name.encode()), severity])
  return _to_uint8(fn(_to_float(images), params[severity - 1], rng))
