"""Parameter and FLOPs accounting from the model's real shapes (DESIGN.md §5).

Forward FLOPs count conv and dense layers only, 2 per multiply-accumulate:
  f_l = 2 · (output elements per example) · (fan-in of one output) ; a sparse layer costs d_l · f_l.
Training FLOPs per example and step:
  dense 3·f_D;  static sparse and SET 3·f_S;  RigL (3·f_S·ΔT + 2·f_S + f_D) / (ΔT + 1).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from ensembles.models import layers


@dataclasses.dataclass(frozen=True)
class LayerCost:
  """One conv or dense layer: ``path`` is the keystr of its kernel in the params tree."""

  path: str
  kernel_shape: tuple[int, ...]
  macs: int  # multiply-accumulates per example

  @property
  def flops(self) -> int:
    return 2 * self.macs


def layer_costs(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCost]:
  """Conv/Dense layers of ``model`` on one example of ``input_shape`` (shapes only, no compute)."""
  records: list[LayerCost] = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (nn.Dense, nn.Conv, layers.Conv)):
      kernel = module.variables["params"]["kernel"]
      fan_in = kernel.size // kernel.shape[-1]
      per_example = out.size // out.shape[0]
      path = "".join(f"['{p}']" for p in module.scope.path) + "['kernel']"
      records.append(LayerCost(path, tuple(kernel.shape), per_example * fan_in))
    return out

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_shape)), train=False))
  return records


def forward_flops(costs: list[LayerCost], densities: Mapping[str, float] | None = None) -> float:
  """f = Σ_l d_l · 2 · macs_l per example (d_l = 1 for layers absent from ``densities``)."""
  densities = densities or {}
  return float(sum(densities.get(c.path, 1.0) * c.flops for c in costs))


def train_step_flops(f_dense: float, f_sparse: float, rule: str, update_every: int = 1) -> float:
  """Training FLOPs per example of one step under ``rule`` in {dense, static, set, rigl}."""
  if rule == "dense":
    return 3.0 * f_dense
  if rule in ("static", "set"):
    return 3.0 * f_sparse
  if rule == "rigl":
    dt = update_every
    return (3.0 * f_sparse * dt + 2.0 * f_sparse + f_dense) / (dt + 1)
  raise ValueError(f"FLOPs rule must be one of ('dense', 'static', 'set', 'rigl'), got {rule!r}.")
