"""ImageNet ResNets (He et al., 2016, Table 1): ResNet-18/34 (basic blocks) and ResNet-50/101/152
(bottleneck blocks), with the ImageNet stem or a small-image stem for 64x64 inputs (Tiny-ImageNet).

ResNet-50 at 1,000 classes and 224x224 inputs: 25,557,032 parameters and about 4.1 GMACs per image
(`flops.layer_costs` counts it; tests/test_models.py). Stride of a bottleneck on its 3x3 convolution
(the "v1.5" layout of torchvision and most JAX ImageNet code; the paper strides the first 1x1).
"""
from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax

from ensembles.models.layers import Conv, as_float, block_maker, global_avg_pool
from ensembles.models.resnet import BasicBlock

# depth -> (block kind, blocks per stage)
STAGES = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
          101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}
STEMS = ("imagenet", "small")


class Bottleneck(nn.Module):
  """1x1(w)-BN-ReLU, 3x3(w, stride)-BN-ReLU, 1x1(4w)-BN (scale initialised to 0), + shortcut
  (1x1 conv + BN when the shape changes), ReLU."""

  features: int
  stride: int
  norm: functools.partial
  conv_cls: Callable = Conv

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = (self.stride, self.stride)
    y = nn.relu(self.norm()(self.conv_cls(self.features, (1, 1), use_bias=False)(x)))
    y = nn.relu(self.norm()(self.conv_cls(self.features, (3, 3), strides=s, use_bias=False)(y)))
    y = self.norm(scale_init=nn.initializers.zeros)(self.conv_cls(4 * self.features, (1, 1), use_bias=False)(y))
    if x.shape != y.shape:
      x = self.norm()(self.conv_cls(4 * self.features, (1, 1), strides=s, use_bias=False)(x))
    return nn.relu(x + y)


class ImageNetResNet(nn.Module):
  """ResNet-``depth``: stem -> 4 stages (``width``, 2, 4, 8 x ``width`` channels, x4 at the output
  of bottlenecks; stride 2 at stages 2-4) -> global average pool -> Dense(num_classes).

  stem ``imagenet``: 7x7/2 conv, BN, ReLU, 3x3/2 max pool (224x224 -> 56x56); ``small``: 3x3/1 conv,
  BN, ReLU, no pool (64x64 inputs keep 64x64 in stage 1; the usual Tiny-ImageNet adaptation).
  ``width`` 64 is the paper's; smaller widths make reduced models for tests.
  """

  num_classes: int
  depth: int = 50
  width: int = 64
  stem: str = "imagenet"
  dropout_rate: float = 0.0
  bn_momentum: float = 0.9
  conv_impl: str = "auto"  # auto | xla | patches (see layers.Conv)
  remat: str = "none"  # none | blocks | dots: what the backward pass recomputes (layers.block_maker)

  has_conv = True
  choices = {"depth": tuple(STAGES), "stem": STEMS}  # checked by config.validate_model

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.depth not in STAGES:
      raise ValueError(f"model.depth for imagenet_resnet must be one of {tuple(STAGES)}, got {self.depth}.")
    if self.stem not in STEMS:
      raise ValueError(f"model.stem must be one of {STEMS}, got {self.stem!r}.")
    kind, blocks = STAGES[self.depth]
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum)
    conv_cls = functools.partial(Conv, impl=self.conv_impl)
    make_block = block_maker(Bottleneck if kind == "bottleneck" else BasicBlock, self.remat)  # CIFAR's basic block
    x = as_float(x)
    if self.stem == "imagenet":
      x = nn.relu(norm()(conv_cls(self.width, (7, 7), strides=(2, 2), use_bias=False)(x)))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    else:
      x = nn.relu(norm()(conv_cls(self.width, (3, 3), use_bias=False)(x)))
    for stage, n in enumerate(blocks):
      for block in range(n):
        stride = 2 if (stage > 0 and block == 0) else 1
        x = make_block(self.width * 2 ** stage, stride, norm, conv_cls)(x)
    x = global_avg_pool(x)
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)
