"""CIFAR ResNet (He et al., 2016, section 4.2): depth 6n+2, stages of 16/32/64 channels."""
from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax

from ensembles.models.layers import Conv, as_float, block_maker, global_avg_pool


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut (1x1 conv + BN when the shape changes), ReLU."""

  features: int
  stride: int
  norm: functools.partial
  conv_cls: Callable = Conv

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(self.conv_cls, kernel_size=(3, 3), padding="SAME", use_bias=False)
    y = nn.relu(self.norm()(conv(self.features, strides=(self.stride, self.stride))(x)))
    y = self.norm(scale_init=nn.initializers.zeros)(conv(self.features)(y))
    if x.shape != y.shape:
      x = self.conv_cls(self.features, (1, 1), strides=(self.stride, self.stride), use_bias=False)(x)
      x = self.norm()(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """CIFAR ResNet-(6n+2): conv3x3(16) -> 3 stages of n BasicBlocks (16, 32, 64 x ``width``
  channels; stride 2 at stages 2 and 3) -> global average pool -> Dense(num_classes).

  depth in {20, 32, 44, 56, 110, ...}. BatchNorm statistics live in the ``batch_stats`` collection
  and are per ensemble member (never reduced across the member axis).
  """

  num_classes: int
  depth: int = 20
  width: int = 1
  dropout_rate: float = 0.0
  bn_momentum: float = 0.9
  conv_impl: str = "auto"  # auto | xla | patches (see layers.Conv)
  remat: str = "none"  # none | blocks | dots: what the backward pass recomputes (layers.block_maker)

  has_conv = True
  depth_rule = (6, 2)  # depth = 6n + 2, n >= 1 (also checked by config.validate_model)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    step, offset = self.depth_rule
    if self.depth <= offset or (self.depth - offset) % step:
      raise ValueError(f"model.depth for resnet must be 6n+2 with n >= 1 (20, 32, 56, 110, ...), got {self.depth}.")
    n = (self.depth - 2) // 6
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum)
    conv_cls = functools.partial(Conv, impl=self.conv_impl)
    x = as_float(x)
    x = conv_cls(16 * self.width, (3, 3), padding="SAME", use_bias=False)(x)
    x = nn.relu(norm()(x))
    make_block = block_maker(BasicBlock, self.remat)
    for stage, features in enumerate((16, 32, 64)):
      for block in range(n):
        stride = 2 if (stage > 0 and block == 0) else 1
        x = make_block(features * self.width, stride, norm, conv_cls)(x)
    x = global_avg_pool(x)
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not (train))(x)
    return nn.Dense(self.num_classes)(x)
