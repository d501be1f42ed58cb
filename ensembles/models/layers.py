"""Small layers shared by the models."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2, [B, H, W, C] -> [B, H//2, W//2, C].

  Written as reshape + max: on XLA:CPU its backward pass is several times faster than
  `flax.linen.max_pool`'s (reduce_window) and it is identical in value. Odd sizes drop the last
  row/column, as VALID pooling does.
  """
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def global_avg_pool(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, C]."""
  return jnp.mean(x, axis=(1, 2))
