"""Multi-layer perceptron."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from ensembles.models.layers import as_float


class MLP(nn.Module):
  """Flatten -> [Dense -> ReLU -> Dropout] * len(hidden) -> Dense(num_classes).

  Input [B, ...] (flattened), output logits [B, num_classes].
  """

  num_classes: int
  hidden: Sequence[int] = (512, 512)
  dropout_rate: float = 0.0

  has_conv = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = as_float(x.reshape(x.shape[0], -1))
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


class LeNet300100(MLP):
  """LeNet-300-100 (LeCun et al., 1998): fully connected 784 -> 300 -> 100 -> classes."""

  hidden: Sequence[int] = (300, 100)
