"""EfficientNet-B0 (Tan & Le, 2019), the network of CBNN's imbalanced-data experiments.

stem 3x3/2 conv (32) -> 16 MBConv blocks in 7 stages -> 1x1 conv (1280) -> global average pool ->
dropout -> Dense(num_classes); swish activations, BatchNorm after every convolution. At 1,000
classes and 224x224: 5,288,548 parameters and about 0.39 GMACs per image (tests/test_models.py).
Ours: no stochastic depth (the paper drops blocks with rate up to 0.2); ``width`` scales every
channel count (1.0 is B0; smaller values make reduced models for tests).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ensembles.models.layers import as_float, block_maker, global_avg_pool

# (expansion, output channels, blocks, stride of the first block, kernel size) per stage
STAGES_B0 = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
             (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))


class MBConv(nn.Module):
  """Inverted residual: 1x1 expansion (if expansion > 1), depthwise kxk (stride), squeeze-and-
  excitation (to a quarter of the block's input channels), 1x1 projection; identity shortcut
  when stride is 1 and the channel count is kept."""

  expansion: int
  features: int
  stride: int
  kernel: int
  norm: functools.partial

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c_in = x.shape[-1]
    hidden = c_in * self.expansion
    y = x
    if self.expansion != 1:
      y = nn.swish(self.norm()(nn.Conv(hidden, (1, 1), use_bias=False)(y)))
    y = nn.Conv(hidden, (self.kernel, self.kernel), strides=(self.stride, self.stride), padding="SAME",
                feature_group_count=hidden, use_bias=False)(y)
    y = nn.swish(self.norm()(y))
    squeeze = jnp.mean(y, axis=(1, 2), keepdims=True)
    squeeze = nn.swish(nn.Conv(max(1, c_in // 4), (1, 1))(squeeze))
    y = y * nn.sigmoid(nn.Conv(hidden, (1, 1))(squeeze))
    y = self.norm()(nn.Conv(self.features, (1, 1), use_bias=False)(y))
    if self.stride == 1 and c_in == self.features:
      y = y + x
    return y


class EfficientNetB0(nn.Module):
  num_classes: int
  width: float = 1.0
  dropout_rate: float = 0.2
  bn_momentum: float = 0.99
  remat: str = "none"  # none | blocks | dots: what the backward pass recomputes (layers.block_maker)

  has_conv = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-3)
    scale = lambda c: max(8, int(round(c * self.width)))
    x = as_float(x)
    x = nn.swish(norm()(nn.Conv(scale(32), (3, 3), strides=(2, 2), padding="SAME", use_bias=False)(x)))
    make_block = block_maker(MBConv, self.remat)
    for expansion, features, blocks, stride, kernel in STAGES_B0:
      for i in range(blocks):
        x = make_block(expansion, scale(features), stride if i == 0 else 1, kernel, norm)(x)
    x = nn.swish(norm()(nn.Conv(scale(1280), (1, 1), use_bias=False)(x)))
    x = global_avg_pool(x)
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)
