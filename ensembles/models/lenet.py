"""LeNet-5-style convolutional network."""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ensembles.models.layers import Conv, max_pool_2x2


class LeNet(nn.Module):
  """[Conv(k x k, SAME) -> ReLU -> 2x2 max-pool] per entry of ``features``, then
  [Dense -> ReLU -> Dropout] per entry of ``hidden``, then Dense(num_classes).

  Input [B, H, W, C], output logits [B, num_classes]. Defaults: conv 32, conv 64 (5x5), dense 128.
  """

  num_classes: int
  features: Sequence[int] = (32, 64)
  hidden: Sequence[int] = (128,)
  kernel_size: int = 5
  dropout_rate: float = 0.0
  conv_impl: str = "auto"  # auto | xla | patches (see layers.Conv)

  has_conv = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.astype(jnp.float32)
    k = self.kernel_size
    conv = functools.partial(Conv, impl=self.conv_impl)
    for width in self.features:
      x = max_pool_2x2(nn.relu(conv(width, (k, k), padding="SAME")(x)))
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not (train))(x)
    return nn.Dense(self.num_classes)(x)
