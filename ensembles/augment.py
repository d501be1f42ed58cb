"""Input preprocessing inside the jitted step: normalisation and per-example augmentation.

Each member calls these with its own key, so members see different augmentations.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """Inputs [B, ..., C] -> float32 (s(x) - mean) / std, mean and std per channel [C].

  The input contract: integer inputs are images in 0..255 and are first scaled to [0, 1]
  (s(x) = x / 255; `data.Dataset` stores its mean and std in those units); float inputs (features,
  images already scaled) are used as they are (s(x) = x), so mean and std must be in their units.
  """
  if jnp.issubdtype(x.dtype, jnp.integer):
    return (x.astype(jnp.float32) / 255.0 - mean) / std
  return (x.astype(jnp.float32) - mean) / std


def random_crop(key: jax.Array, x: jax.Array, padding: int) -> jax.Array:
  """Zero-pads each image by ``padding`` pixels and crops a random H x W window per example."""
  if padding <= 0:
    return x
  b, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
  """Flips each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
  return jnp.where(flip, x[:, :, ::-1, :], x)


def augment(key: jax.Array, x: jax.Array, crop_padding: int, flip: bool) -> jax.Array:
  """Random crop (if crop_padding > 0) then random horizontal flip (if flip)."""
  crop_key, flip_key = jax.random.split(key)
  x = random_crop(crop_key, x, crop_padding)
  return random_flip(flip_key, x) if flip else x
