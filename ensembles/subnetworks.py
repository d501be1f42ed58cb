"""Disjoint subnetwork masks for Ex uno plures (Zhang, Gao & Sabuncu, 2021), DESIGN.md §3.4.

The paper's exact partition rule is not available to us; this is our documented rule. From a trained
parent, every partitioned layer is scored and its parts are dealt round-robin, in order of score, to
the M children, so each child gets an equal share of strong and weak parts:
  * ``weight`` granularity: parts are single weights, scored by |w|; the children's masks are
    pairwise disjoint and together cover every weight of the layer;
  * ``unit`` granularity: parts are output units (neurons / channels, the kernel's last axis),
    scored by the L1 norm of their incoming weights; a child keeps its units' incoming weights and
    biases; units of other children are removed from it, and `silence_removed_units` also masks
    the scale and bias of the BatchNorm channels they feed, so a removed unit outputs exactly zero.
    In residual models the shortcut still carries every channel of a block's input into its sum:
    a removed channel of a block's last convolution is zero in the residual branch only. The output
    layer's units are the classes, so unit granularity requires ``share_input_output``.
Layers that are not partitioned (non-prunable leaves such as biases and norms at weight
granularity, and the input / output layers when shared) are kept whole by every child.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ensembles import flops
from ensembles import sparse

PyTree = Any
GRANULARITIES = ("weight", "unit")
SCORES = ("magnitude", "random")


def round_robin(scores: jax.Array, m: int) -> jax.Array:
  """Child index (0..m-1) of every entry: entries sorted by descending score are dealt 0, 1, ...,
  m-1, 0, 1, ... (ties by position). scores [n] -> int32 [n]."""
  order = jnp.argsort(-scores, stable=True)
  return jnp.zeros(scores.shape, jnp.int32).at[order].set(jnp.arange(scores.size, dtype=jnp.int32) % m)


def partitioned_kernels(params: PyTree, share_input_output: bool, layer_order: Sequence[str] | None = None,
                        prunable: Callable = sparse.default_prunable) -> list[str]:
  """Keystr paths of the kernels that are partitioned: prunable leaves, minus the first and last
  prunable layer *in call order* when ``share_input_output``. The params tree is sorted by name
  (``Conv_0`` of a ResNet's stem comes after its blocks), so the call order must be given:
  ``layer_order`` = kernel paths in the order the model calls them, e.g.
  ``[c.path for c in flops.layer_costs(model, input_shape)]``."""
  paths = list(sparse.prunable_shapes(params, prunable))
  if share_input_output:
    if layer_order is None:
      raise ValueError("share_input_output needs layer_order (kernel paths in call order, e.g. from "
                       "flops.layer_costs): the params tree is sorted by name, not by depth.")
    ordered = [p for p in layer_order if p in paths]
    if sorted(ordered) != sorted(paths):
      raise ValueError(f"layer_order does not list every prunable kernel: missing {sorted(set(paths) - set(ordered))}.")
    shared = {ordered[0], ordered[-1]}
    paths = [p for p in paths if p not in shared]
  if not paths:
    raise ValueError("subnetwork.share_input_output leaves no layer to partition: the model has only "
                     f"{len(sparse.prunable_shapes(params, prunable))} prunable layers (set "
                     "subnetwork.share_input_output=False to partition them all, or use a deeper model).")
  return paths


def partition_masks(params: PyTree, num_children: int, granularity: str = "weight",
                    share_input_output: bool = True, score: str = "magnitude", key: jax.Array | None = None,
                    layer_order: Sequence[str] | None = None, prunable: Callable = sparse.default_prunable) -> PyTree:
  """M disjoint child masks from one parent's params: a bool tree with leaves [M, *leaf.shape].

  See the module docstring for the rule. ``score``: ``magnitude`` (|w|, or a unit's L1 norm) or
  ``random`` (uniform scores from ``key``: a random disjoint partition, for ablations).
  ``layer_order``: see `partitioned_kernels` (needed with ``share_input_output``). Raises
  ValueError when a partitioned layer has fewer units (or weights) than children.
  """
  if granularity not in GRANULARITIES:
    raise ValueError(f"subnetwork.granularity must be one of {GRANULARITIES}, got {granularity!r}.")
  if score not in SCORES:
    raise ValueError(f"subnetwork.score must be one of {SCORES}, got {score!r}.")
  if score == "random":
    key = jax.random.PRNGKey(0) if key is None else key
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    params = jax.tree_util.tree_unflatten(treedef, [jax.random.uniform(k, x.shape) for k, x in zip(keys, leaves)])
  if num_children < 1:
    raise ValueError(f"num_members must be >= 1, got {num_children}.")
  if granularity == "unit" and not share_input_output:
    raise ValueError("subnetwork.granularity='unit' needs subnetwork.share_input_output=True: the output "
                     "layer's units are the classes.")
  parts = set(partitioned_kernels(params, share_input_output, layer_order, prunable))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  by_path = {jax.tree_util.keystr(p): leaf for p, leaf in leaves}
  unit_owner: dict[str, jax.Array] = {}  # module path -> [C_out] child of each unit
  if granularity == "unit":
    for name in parts:
      kernel = by_path[name]
      if kernel.shape[-1] < num_children:
        raise ValueError(f"num_members ({num_children}) exceeds the {kernel.shape[-1]} units of layer {name}; "
                         "use fewer members, granularity 'weight', or share that layer.")
      l1 = jnp.sum(jnp.abs(kernel.reshape(-1, kernel.shape[-1])), axis=0)
      unit_owner[name[: -len("['kernel']")]] = round_robin(l1, num_children)
  children = jnp.arange(num_children)
  masks = []
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    module = name[: name.rfind("[")]
    if granularity == "weight" and name in parts:
      if leaf.size < num_children:
        raise ValueError(f"num_members ({num_children}) exceeds the {leaf.size} weights of layer {name}.")
      owner = round_robin(jnp.abs(leaf).ravel(), num_children).reshape(leaf.shape)
      masks.append(owner[None] == children.reshape(-1, *([1] * leaf.ndim)))
    elif granularity == "unit" and module in unit_owner and leaf.shape[-1:] == unit_owner[module].shape:
      owner = jnp.broadcast_to(unit_owner[module], leaf.shape)  # kernel columns and bias entries
      masks.append(owner[None] == children.reshape(-1, *([1] * leaf.ndim)))
    else:
      masks.append(jnp.ones((num_children, *leaf.shape), bool))
  return jax.tree_util.tree_unflatten(treedef, masks)


def child_shares(masks: PyTree, params: PyTree, share_input_output: bool, layer_order: Sequence[str] | None = None,
                 prunable: Callable = sparse.default_prunable) -> np.ndarray:
  """Fraction of the partitioned kernels' weights each child keeps: [M] (1/M each when exact)."""
  flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_flatten_with_path(masks)[0]}
  names = partitioned_kernels(params, share_input_output, layer_order, prunable)
  kept = sum(np.asarray(flat[n]).reshape(flat[n].shape[0], -1).sum(1) for n in names)
  total = sum(int(np.prod(flat[n].shape[1:])) for n in names)
  return kept / total


def silence_removed_units(model: nn.Module, variables: dict, masks: PyTree, input_shape: tuple[int, ...]) -> PyTree:
  """Child masks [M, ...] extended to the BatchNorm layers: a norm's scale and bias are masked on
  every channel whose input is structurally zero in that child (a removed unit), so the channel
  outputs exactly zero instead of ReLU(bias). Channels a residual shortcut keeps alive stay.

  Structural: each child runs with every kept parameter set to 1, norm statistics mean 0 / variance
  1 and an input of ones, until no more channels are silenced (a silenced norm can silence the
  next). ``variables``: the parent's {"params": ..., "batch_stats": ...}."""
  flat_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(masks)[0]]
  treedef = jax.tree_util.tree_structure(masks)
  children = []
  for i in range(jax.tree.leaves(masks)[0].shape[0]):
    child = dict(zip(flat_paths, jax.tree.leaves(jax.tree.map(lambda m: m[i], masks))))
    while True:
      zero_inputs = _norm_zero_inputs(model, variables, jax.tree_util.tree_unflatten(treedef, list(child.values())),
                                      input_shape)
      changed = False
      for module, zero in zero_inputs.items():
        for leaf in ("scale", "bias"):
          path = f"{module}['{leaf}']"
          if path in child and bool(jnp.any(child[path] & zero)):
            child[path] = child[path] & ~zero
            changed = True
      if not changed:
        break
    children.append(jax.tree_util.tree_unflatten(treedef, list(child.values())))
  return jax.tree.map(lambda *xs: jnp.stack(xs), *children)


def _norm_zero_inputs(model, variables, masks, input_shape) -> dict[str, jax.Array]:
  """{BatchNorm module path: [C] bool, True where its input channel is structurally zero}."""
  positive = flops.positive_variables(variables, masks)
  zero: dict[str, jax.Array] = {}

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, nn.BatchNorm):
      x = args[0]
      zero["".join(f"['{p}']" for p in context.module.scope.path)] = jnp.all(x.reshape(-1, x.shape[-1]) == 0, axis=0)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    model.apply(positive, jnp.ones((1, *input_shape)), train=False)
  return zero
