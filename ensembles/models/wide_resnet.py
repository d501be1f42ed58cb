"""Wide ResNet (Zagoruyko & Komodakis, 2016): WRN-depth-width with pre-activation blocks."""
from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax

from ensembles.models.layers import Conv, as_float, block_maker, global_avg_pool


class WideBlock(nn.Module):
  """BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3, plus shortcut (1x1 conv when the shape changes)."""

  features: int
  stride: int
  dropout_rate: float
  norm: functools.partial
  stochastic: bool  # dropout active (training; MC dropout turns it on through train.make_mc_predict)
  conv_cls: Callable = Conv

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(self.conv_cls, kernel_size=(3, 3), padding="SAME", use_bias=False)
    pre = nn.relu(self.norm()(x))
    y = conv(self.features, strides=(self.stride, self.stride))(pre)
    y = nn.relu(self.norm()(y))
    if self.dropout_rate > 0:
      y = nn.Dropout(self.dropout_rate, deterministic=not self.stochastic)(y)
    y = conv(self.features)(y)
    if x.shape != y.shape:
      x = self.conv_cls(self.features, (1, 1), strides=(self.stride, self.stride), use_bias=False)(pre)
    return x + y


class WideResNet(nn.Module):
  """WRN-d-k: conv3x3(16) -> 3 stages of (d-4)/6 WideBlocks with 16k, 32k, 64k channels
  (stride 2 at stages 2 and 3) -> BN-ReLU -> global average pool -> Dense(num_classes).

  depth must be 6n+4 (16, 22, 28, 40, ...); WRN-28-10 is depth=28, width=10 (36.5M params).
  """

  num_classes: int
  depth: int = 28
  width: int = 10
  dropout_rate: float = 0.0
  bn_momentum: float = 0.9
  conv_impl: str = "auto"  # auto | xla | patches (see layers.Conv)
  remat: str = "none"  # none | blocks | dots: what the backward pass recomputes (layers.block_maker)

  has_conv = True
  depth_rule = (6, 4)  # depth = 6n + 4, n >= 1 (also checked by config.validate_model)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    step, offset = self.depth_rule
    if self.depth <= offset or (self.depth - offset) % step:
      raise ValueError(f"model.depth for wide_resnet must be 6n+4 (16, 22, 28, 40, ...), got {self.depth}.")
    n = (self.depth - 4) // 6
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum)
    conv_cls = functools.partial(Conv, impl=self.conv_impl)
    x = as_float(x)
    x = conv_cls(16, (3, 3), padding="SAME", use_bias=False)(x)
    make_block = block_maker(WideBlock, self.remat)
    for stage, features in enumerate((16, 32, 64)):
      for block in range(n):
        stride = 2 if (stage > 0 and block == 0) else 1
        x = make_block(features * self.width, stride, self.dropout_rate, norm, train, conv_cls)(x)
    x = nn.relu(norm()(x))
    return nn.Dense(self.num_classes)(global_avg_pool(x))
