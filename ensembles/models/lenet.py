"""LeNet-5-style convolutional network."""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax

from ensembles.models.layers import Conv, as_float, max_pool_2x2


class LeNet(nn.Module):
  """[Conv(k x k, ``padding``) -> ReLU -> 2x2 max-pool] per entry of ``features``, then
  [Dense -> ReLU -> Dropout] per entry of ``hidden``, then Dense(num_classes).

  Input [B, H, W, C], output logits [B, num_classes]. Defaults: conv 32, conv 64 (5x5, SAME),
  dense 128 (ours). The classic shapes are `LeNet5Caffe` and `LeNet5`.
  """

  num_classes: int
  features: Sequence[int] = (32, 64)
  hidden: Sequence[int] = (128,)
  kernel_size: int = 5
  dropout_rate: float = 0.0
  padding: str = "SAME"  # SAME | VALID (the classic LeNet-5)
  conv_impl: str = "auto"  # auto | xla | patches (see layers.Conv)

  has_conv = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = as_float(x)
    k = self.kernel_size
    conv = functools.partial(Conv, impl=self.conv_impl)
    for width in self.features:
      x = max_pool_2x2(nn.relu(conv(width, (k, k), padding=self.padding)(x)))
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


class LeNet5Caffe(LeNet):
  """LeNet-5 as in Caffe's MNIST example (the shape the sparse-training literature calls
  "LeNet-5"): conv 20 and 50 (5x5, VALID), 2x2 max-pools, fc 800 -> 500 -> classes on 28x28 inputs."""

  features: Sequence[int] = (20, 50)
  hidden: Sequence[int] = (500,)
  padding: str = "VALID"


class LeNet5(LeNet):
  """LeNet-5 (LeCun et al., 1998) on 28x28 inputs: conv 6 and 16 (5x5, VALID), 2x2 max-pools
  (max, not the original subsampling), fc 256 -> 120 -> 84 -> classes. The original pads
  28x28 digits to 32x32 (fc 400 -> 120); ours does not."""

  features: Sequence[int] = (6, 16)
  hidden: Sequence[int] = (120, 84)
  padding: str = "VALID"
