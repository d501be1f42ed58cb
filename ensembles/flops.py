"""Parameter and FLOPs accounting from the model's real shapes (DESIGN.md §5).

Forward FLOPs count conv and dense layers only, 2 per multiply-accumulate:
  f_l = 2 · (output elements per example) · (fan-in of one output) ; a sparse layer costs d_l · f_l.
Training FLOPs per example and step:
  dense 3·f_D;  static sparse and SET 3·f_S;  RigL (3·f_S·ΔT + 2·f_S + f_D) / (ΔT + 1).
Methods count what their run really did (`sparse_training_flops`: the gradient-growth updates made,
none after the stop fraction) plus the passes their algorithm needs (CBNN's training-set
predictions, EDST's validation for best tickets), each pass f per example.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from ensembles.models import layers

PyTree = Any


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
    # a layer whose weights live in a sub-scope (TreeNet's branches) is counted there
    if (context.method_name == "__call__" and isinstance(module, (nn.Dense, nn.Conv, layers.Conv))
        and "kernel" in module.variables.get("params", {})):
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


def sparse_training_flops(f_dense: float, f_sparse: float, steps: int, batch_size: int,
                          gradient_updates: int = 0) -> float:
  """B · (3·f_S·steps + (f_D − f_S)·U): every step costs 3·f_S per example, and each of the U
  topology updates that grow by gradient (RigL) takes a dense weight gradient instead of a sparse one
  (2·f_S + f_D for that step). With U = steps / (ΔT + 1) this is RigL's per-step formula;
  prune-and-grow by magnitude and random growth add no FLOPs. f_S = f_D gives the dense cost."""
  return batch_size * (3.0 * f_sparse * steps + (f_dense - f_sparse) * gradient_updates)


def positive_variables(variables: dict, masks: PyTree) -> dict:
  """``variables`` for structural analysis: every kept parameter (``masks``) 1, masked ones 0,
  normalisation statistics mean 0 and variance 1, so that with positive inputs an activation is
  zero exactly when the masks make it so."""
  positive = {"params": jax.tree.map(lambda m: jnp.where(m, 1.0, 0.0).astype(jnp.float32), masks)}
  for collection, tree in variables.items():
    if collection != "params":
      positive[collection] = jax.tree_util.tree_map_with_path(
          lambda p, x: jnp.ones_like(x) if jax.tree_util.keystr(p).endswith("['var']") else jnp.zeros_like(x), tree)
  return positive


def live_input_densities(model: nn.Module, variables: dict, input_shape: tuple[int, ...],
                         masks: PyTree | None = None) -> dict[str, float]:
  """Fraction of each conv/dense layer's multiply-accumulates that a masked network really does
  (keyed by kernel path): kernel weights that are kept and read an input channel that is not
  structurally zero. A unit removed from a layer (kernel column and bias masked, then ReLU) outputs
  zeros whatever the input, so the next layer's weights from it do no work.

  Structural, not data-dependent: the network is run with every kept parameter set to a positive
  value, BatchNorm statistics to mean 0 / variance 1, and positive inputs, so a channel is zero only
  if the masks make it so (a dead ReLU of the trained weights still counts as work).
  ``variables``: one network's {"params": ..., other collections}; ``masks``: a bool tree like
  its params (None: dense)."""
  masks = jax.tree.map(lambda x: jnp.ones(x.shape, bool), variables["params"]) if masks is None else masks
  positive = positive_variables(variables, masks)
  live: dict[str, jax.Array] = {}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (nn.Dense, nn.Conv, layers.Conv)):
      x = args[0]
      path = "".join(f"['{p}']" for p in module.scope.path) + "['kernel']"
      live[path] = jnp.any(x.reshape(-1, x.shape[-1]) != 0, axis=0)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    model.apply(positive, jnp.ones((1, *input_shape)), train=False)
  flat_masks = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_flatten_with_path(masks)[0]}
  return {path: float(jnp.mean(flat_masks[path] & channels.reshape(-1, 1))) for path, channels in live.items()}
