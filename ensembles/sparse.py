"""Sparse machinery (DESIGN.md §3.1): density allocation, exact masks, prune-and-grow, schedules,
and an optax wrapper that keeps pruned weights at exactly zero.

Everything is a pure per-member function of pytrees; `ensembles.members.member_map` lifts it to M
members (each with its own key, so members get different masks). Masks are boolean trees with the
structure of the params and no ``None`` leaves: non-prunable leaves (biases, norms) get all-True masks.

Deliberate differences from the FreeTickets/RigL reference code (all documented in the README):
(a) by default a position pruned in an update is not regrown in the same update, so every update
    changes exactly k connections (``allow_regrow=True`` restores the reference behaviour);
(b) masks have exact per-layer counts, not Bernoulli draws;
(c) layers that the allocation makes dense (density 1) are never pruned.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any
Path = tuple
DENSITY_RULES = ("uniform", "erk")
GROWTH_RULES = ("random", "gradient")
INIT_RULES = ("random", "magnitude")


def default_prunable(path: Path, leaf: Any) -> bool:
  """Conv and dense kernels (leaves named ``kernel`` with ndim >= 2) are prunable; biases and
  normalisation parameters stay dense."""
  last = path[-1]
  name = getattr(last, "key", getattr(last, "name", str(last)))
  return name == "kernel" and len(np.shape(leaf)) >= 2


def prunable_shapes(params: PyTree, prunable: Callable = default_prunable) -> dict[str, tuple[int, ...]]:
  """{path string: shape} of the prunable leaves of one member's params (in tree order)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if prunable(path, leaf):
      out[jax.tree_util.keystr(path)] = tuple(np.shape(leaf))
  if not out:
    raise ValueError("The model has no prunable leaves (the predicate selected none of its parameters); "
                     "sparse training needs at least one conv or dense kernel.")
  return out


def layer_densities(shapes: dict[str, tuple[int, ...]], density: float, rule: str = "erk") -> dict[str, float]:
  """Per-layer densities whose kept-weight total is density · Σ_l n_l.

  uniform: every layer gets ``density``.
  erk (Erdős–Rényi-Kernel): raw_l = Σ(shape_l) / Π(shape_l); density_l = ε · raw_l with ε solved so
  Σ_l density_l · n_l = density · N; a layer whose density would exceed 1 is made dense and ε is
  re-solved over the others until none does.
  """
  if rule not in DENSITY_RULES:
    raise ValueError(f"sparse.density_rule must be one of {DENSITY_RULES}, got {rule!r}.")
  if not 0.0 < density <= 1.0:
    raise ValueError(f"density must be in (0, 1] (sparsity in [0, 1)), got {density}.")
  if rule == "uniform" or density == 1.0:
    return {k: float(density) for k in shapes}
  sizes = {k: math.prod(s) for k, s in shapes.items()}
  raw = {k: sum(s) / sizes[k] for k, s in shapes.items()}
  target = density * sum(sizes.values())
  dense: set[str] = set()
  while True:
    budget = target - sum(sizes[k] for k in dense)
    eps = budget / sum(raw[k] * sizes[k] for k in shapes if k not in dense)
    over = {k for k in shapes if k not in dense and eps * raw[k] > 1.0}
    if not over:
      return {k: 1.0 if k in dense else eps * raw[k] for k in shapes}
    dense |= over


def layer_counts(shapes: dict[str, tuple[int, ...]], densities: dict[str, float]) -> dict[str, int]:
  """Exact number of kept weights per layer: largest-remainder rounding of density_l · n_l, so the
  total equals round(Σ_l density_l · n_l) and each layer keeps at least one weight (weights the
  floor adds are taken back from other layers; the total is exceeded only when every layer is at 1)."""
  sizes = {k: math.prod(s) for k, s in shapes.items()}
  exact = {k: densities[k] * sizes[k] for k in shapes}
  counts = {k: min(max(int(math.floor(v)), 1), sizes[k]) for k, v in exact.items()}
  missing = int(round(sum(exact.values()))) - sum(counts.values())
  order = sorted(shapes, key=lambda k: exact[k] - math.floor(exact[k]), reverse=True)
  for k in order:  # short: add one to the layers with the largest remainders
    if missing <= 0:
      break
    if counts[k] < sizes[k]:
      counts[k] += 1
      missing -= 1
  while missing < 0 and any(counts[k] > 1 for k in order):  # over (the one-weight floor): take back,
    for k in reversed(order):                                 # smallest remainders first
      if missing < 0 and counts[k] > 1:
        counts[k] -= 1
        missing += 1
  return counts


@dataclasses.dataclass(frozen=True)
class SparsityPlan:
  """Static description of a sparse model, keyed like its params tree.

  kept: a params-shaped tree of ints, the weights each leaf keeps (its full size where the leaf is
  dense: not prunable, or made dense by the allocation, and then never pruned). size: a
  params-shaped tree of each leaf's number of weights. prunable: a params-shaped tree of bools.
  `counts` and `sizes` are the same numbers keyed by path string, for reports. Build with `make_plan`.
  """

  kept: PyTree
  size: PyTree
  prunable: PyTree

  def sparse_leaves(self) -> PyTree:
    """A params-shaped tree of bools: the leaves that prune-and-grow changes (kept < size)."""
    return jax.tree.map(lambda k, n, p: bool(p and k < n), self.kept, self.size, self.prunable)

  @property
  def counts(self) -> dict[str, int]:
    """{path string: kept weights} of the sparse leaves."""
    return {name: k for name, k, s in _named(self.kept, self.sparse_leaves()) if s}

  @property
  def sizes(self) -> dict[str, int]:
    """{path string: n_l} of the prunable leaves."""
    return {name: n for name, n, p in _named(self.size, self.prunable) if p}

  @property
  def density(self) -> float:
    """Kept fraction of all prunable weights."""
    kept = sum(k for _, k, p in _named(self.kept, self.prunable) if p)
    return kept / sum(self.sizes.values())


def _named(values: PyTree, flags: PyTree) -> list[tuple[str, Any, bool]]:
  """(path string, value, flag) of each leaf of two trees of the same structure (Python leaves)."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(values)
  return [(jax.tree_util.keystr(path), v, f) for (path, v), f in zip(flat, treedef.flatten_up_to(flags))]


def make_plan(params: PyTree, sparsity: float, rule: str = "erk",
              prunable: Callable = default_prunable) -> SparsityPlan:
  """Per-layer exact counts for a target ``sparsity`` S in [0, 1) over the prunable leaves."""
  if not 0.0 <= sparsity < 1.0:
    raise ValueError(f"sparse.sparsity must be in [0, 1), got {sparsity}.")
  shapes = prunable_shapes(params, prunable)
  counts = layer_counts(shapes, layer_densities(shapes, 1.0 - sparsity, rule))
  name = lambda path: jax.tree_util.keystr(path)
  size = jax.tree.map(lambda x: int(np.size(x)), params)
  kept = jax.tree_util.tree_map_with_path(lambda path, x: counts.get(name(path), int(np.size(x))), params)
  flags = jax.tree_util.tree_map_with_path(lambda path, x: name(path) in shapes, params)
  return SparsityPlan(kept, size, flags)


def _top_k_mask(scores: jax.Array, k: int) -> jax.Array:
  """Boolean mask of the k largest entries of ``scores`` (exactly k, ties broken by position)."""
  flat = scores.ravel()
  order = jnp.argsort(-flat, stable=True)
  mask = jnp.zeros(flat.shape, bool).at[order[:k]].set(True)
  return mask.reshape(scores.shape)


def init_masks(key: jax.Array, params: PyTree, plan: SparsityPlan, rule: str = "random") -> PyTree:
  """Masks with exactly plan.counts[layer] True entries per sparse layer (all True elsewhere).

  random: uniformly random positions; magnitude: the largest |w|. Returns a bool tree shaped as params.
  """
  if rule not in INIT_RULES:
    raise ValueError(f"sparse.init_rule must be one of {INIT_RULES}, got {rule!r}.")
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  masks = []
  for leaf, k, kept, is_sparse in zip(leaves, keys, treedef.flatten_up_to(plan.kept),
                                      treedef.flatten_up_to(plan.sparse_leaves())):
    if is_sparse:
      scores = jax.random.uniform(k, leaf.shape) if rule == "random" else jnp.abs(leaf)
      masks.append(_top_k_mask(scores, kept))
    else:
      masks.append(jnp.ones(leaf.shape, bool))
  return jax.tree_util.tree_unflatten(treedef, masks)


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
  """params · mask (pruned weights set to exactly zero)."""
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def density_of(masks: PyTree) -> dict[str, float]:
  """Realised density of every leaf of a mask tree (over all its entries, members included)."""
  return {jax.tree_util.keystr(p): float(jnp.mean(m)) for p, m in jax.tree_util.tree_flatten_with_path(masks)[0]}


def _order_key(score: jax.Array) -> jax.Array:
  """uint32 keys with the order of the float32 scores (IEEE bits, sign-flipped for negatives;
  −0 counts as +0, so the two zeros tie as they compare)."""
  score = score.astype(jnp.float32)
  bits = jax.lax.bitcast_convert_type(jnp.where(score == 0, jnp.float32(0), score), jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _select_top(score: jax.Array, eligible: jax.Array, k: jax.Array, max_k: int) -> jax.Array:
  """Mask of the min(k, max_k) highest-``score`` eligible positions (all eligible ones if fewer);
  ties go to the lower index. ``score`` must be finite on eligible positions.

  Exact selection without sorting: the k-th largest order key T is found bit by bit (32 passes of
  compare-and-count, T = max{t : #{key >= t} >= k}); then every key > T is taken, plus the first
  k − #{key > T} positions with key = T. On XLA:CPU this beat `lax.top_k` for large layers
  (topology-update cost in benchmarks/sparse_overhead.py, README).
  """
  key = jnp.where(eligible, _order_key(score), jnp.uint32(0))  # eligible keys are all > 0
  k = jnp.minimum(jnp.asarray(k, jnp.int32), max_k)

  def refine(i, t):
    candidate = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    return jnp.where(jnp.sum(key >= candidate, dtype=jnp.int32) >= k, candidate, t)

  threshold = jax.lax.fori_loop(0, 32, refine, jnp.uint32(0))
  above = key > threshold
  tied = (key == threshold) & eligible
  take = above | (tied & (jnp.cumsum(tied, dtype=jnp.int32) <= k - jnp.sum(above, dtype=jnp.int32)))
  return take & eligible & (k > 0)


def prune_and_grow_layer(key: jax.Array, weight: jax.Array, mask: jax.Array, grad: jax.Array | None,
                         drop_fraction: jax.Array | float, growth: str = "random",
                         allow_regrow: bool = False, max_k: int | None = None, active: int | None = None,
                         by_gradient: jax.Array | bool | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One topology update of one layer; returns (weight, mask, grown).

  k = min(round(drop_fraction · n_active), max_k). Prune the k active weights of smallest |w|; grow
  k positions among those inactive before the update (``random`` uniformly, or ``gradient`` by
  largest |grad| of the effective weight). With fewer than k such positions, the rest are taken
  from the just-pruned ones so the count stays constant; ``allow_regrow`` makes just-pruned
  positions ordinary candidates (reference behaviour). Grown weights start at 0. ``growth`` =
  ``either`` picks the rule per call by the (traced) ``by_gradient`` flag, so one compiled update
  serves updates of both rules (EDST's regular and global ones).
  ``drop_fraction`` may be traced; the static ``max_k`` (default: the layer size) bounds k. With the
  static number of ``active`` weights (a plan's count), the fill from just-pruned positions is left
  out when the inactive ones always suffice (n − active >= max_k), saving a third of the work.
  """
  shape = weight.shape
  w, m = weight.ravel(), mask.ravel()
  max_k = int(w.size if max_k is None else min(max_k, w.size))
  k = jnp.minimum(jnp.round(drop_fraction * jnp.sum(m)).astype(jnp.int32), max_k)
  pruned = _select_top(-jnp.abs(w), m, k, max_k)
  if growth not in GROWTH_RULES + ("either",):
    raise ValueError(f"sparse.growth must be one of {GROWTH_RULES}, got {growth!r}.")
  if growth != "random" and grad is None:
    raise ValueError(f"growth={growth!r} needs the gradient of the effective weights.")
  if growth == "either" and by_gradient is None:
    raise ValueError("growth='either' needs by_gradient (True: gradient growth, False: random).")
  if growth == "random":
    score = jax.random.uniform(key, w.shape)
  elif growth == "gradient":
    score = jnp.abs(grad.ravel())
  else:
    score = jnp.where(by_gradient, jnp.abs(grad.ravel()), jax.random.uniform(key, w.shape))
  grown = _select_top(score, ~m | pruned if allow_regrow else ~m, k, max_k)
  fill_possible = active is None or w.size - active < max_k
  if not allow_regrow and fill_possible:  # too few inactive positions: the rest from the just-pruned ones
    grown = grown | _select_top(score, pruned, k - jnp.sum(grown), max_k)
  new_mask = (m & ~pruned) | grown
  new_w = jnp.where(new_mask & ~grown, w, 0.0)
  return new_w.reshape(shape), new_mask.reshape(shape), grown.reshape(shape)


def prune_and_grow(key: jax.Array, params: PyTree, masks: PyTree, grads: PyTree | None,
                   drop_fraction: jax.Array | float, plan: SparsityPlan, growth: str = "random",
                   allow_regrow: bool = False, max_drop_fraction: float = 1.0,
                   by_gradient: jax.Array | bool | None = None) -> tuple[PyTree, PyTree, PyTree]:
  """`prune_and_grow_layer` on every sparse layer of ``plan``; dense leaves are untouched.

  ``max_drop_fraction`` (static) bounds the traced ``drop_fraction``: set it to the schedule's
  largest value to make the top-k selections small (k_max = ceil(max_drop_fraction · count)).

  Returns (params, masks, grown) trees; ``grown`` marks positions whose optimizer moments must be
  reset (see `reset_moments`).
  """
  leaves, treedef = jax.tree_util.tree_flatten(params)
  mask_leaves = treedef.flatten_up_to(masks)
  grad_leaves = treedef.flatten_up_to(grads) if grads is not None else [None] * len(leaves)
  keys = jax.random.split(key, len(leaves))
  out_w, out_m, out_g = [], [], []
  for k, w, m, g, count, is_sparse in zip(keys, leaves, mask_leaves, grad_leaves, treedef.flatten_up_to(plan.kept),
                                          treedef.flatten_up_to(plan.sparse_leaves())):
    if is_sparse:
      max_k = math.ceil(max_drop_fraction * count)
      w, m, grown = prune_and_grow_layer(k, w, m, g, drop_fraction, growth, allow_regrow, max_k, active=count,
                                         by_gradient=by_gradient)
    else:
      grown = jnp.zeros(w.shape, bool)
    out_w.append(w)
    out_m.append(m)
    out_g.append(grown)
  unflat = lambda xs: jax.tree_util.tree_unflatten(treedef, xs)
  return unflat(out_w), unflat(out_m), unflat(out_g)


def drop_fraction_schedule(initial: float, kind: str = "cosine", end_step: int = 1,
                           minimum: float = 0.0) -> Callable[[jax.Array], jax.Array]:
  """p(t): ``constant`` p_0, or ``cosine`` p_min + ½(p_0 − p_min)(1 + cos(π t / T_end)) for t ≤ T_end."""
  if not 0.0 < initial < 1.0:
    raise ValueError(f"sparse.drop_fraction must be in (0, 1), got {initial}.")
  if kind == "constant":
    return lambda t: jnp.asarray(initial, jnp.float32)
  if kind != "cosine":
    raise ValueError(f"sparse.drop_schedule must be 'constant' or 'cosine', got {kind!r}.")
  end = max(int(end_step), 1)
  return lambda t: minimum + 0.5 * (initial - minimum) * (1 + jnp.cos(jnp.pi * jnp.minimum(t, end) / end))


def reset_moments(inner: optax.GradientTransformation, inner_state: optax.OptState, keep: PyTree) -> optax.OptState:
  """Zeroes every params-shaped leaf of an optax state where ``keep`` is False (e.g. momentum of
  pruned and newly grown connections). Generic over optimizers: uses optax's tree_map_params, no
  isinstance checks on state classes."""
  return optax.tree_utils.tree_map_params(
      inner, lambda v, k: jnp.where(k, v, jnp.zeros_like(v)), inner_state, keep,
      transform_non_params=lambda v: v)


class SparseState(NamedTuple):
  """State of `masked`: the masks (bool tree shaped as params) and the inner optimizer's state."""

  masks: PyTree
  inner_state: optax.OptState


class MaskedOptimizer(NamedTuple):
  """An optax transformation (init, update) that keeps masked weights at zero, and the ``inner``
  optimizer it wraps (whose moments topology updates reset)."""

  init: Callable
  update: Callable
  inner: optax.GradientTransformation


def masked(inner: optax.GradientTransformation) -> MaskedOptimizer:
  """Wraps any optax optimizer for sparse training; the masks live in its state (`masks_of`).

  update: gradients are masked before ``inner`` sees them, and the returned updates set every
  masked weight to exactly zero (u = -w there), so momentum and weight decay cannot revive a pruned
  weight. ``init`` starts with all-True masks: set real ones with `init_sparse` or `set_masks`.
  """

  def init(params):
    return SparseState(jax.tree.map(lambda p: jnp.ones(p.shape, bool), params), inner.init(params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("sparse.masked needs params in update() to keep pruned weights at zero.")
    grads = apply_masks(updates, state.masks)
    inner_updates, inner_state = inner.update(grads, state.inner_state, params)
    updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), inner_updates, params, state.masks)
    return updates, SparseState(state.masks, inner_state)

  return MaskedOptimizer(init, update, inner)


def masks_of(opt_state: SparseState) -> PyTree:
  """The masks held by a `masked` optimizer's state (leaves [M, ...] for stacked members)."""
  if not isinstance(opt_state, SparseState):
    raise TypeError(f"Expected the state of a sparse.masked optimizer, got {type(opt_state).__name__}.")
  return opt_state.masks


def with_masks(tx: MaskedOptimizer, params: PyTree, masks: PyTree) -> SparseState:
  """A fresh `masked` state for ``params`` with ``masks`` (one member)."""
  return SparseState(masks, tx.inner.init(params))


def set_masks(tx: MaskedOptimizer, state: SparseState, masks: PyTree) -> SparseState:
  """Replaces the masks of a `masked` state and zeroes the inner moments outside them."""
  return SparseState(masks, reset_moments(tx.inner, state.inner_state, masks))


def init_sparse(key: jax.Array, params: PyTree, tx: MaskedOptimizer, plan: SparsityPlan,
                rule: str = "random") -> tuple[PyTree, SparseState]:
  """Masked params and a state of ``tx`` (a `masked` optimizer) with fresh masks of ``plan`` (one member)."""
  masks = init_masks(key, params, plan, rule)
  return apply_masks(params, masks), with_masks(tx, params, masks)


@dataclasses.dataclass(frozen=True)
class Topology:
  """How prune-and-grow changes one member's masks: the ``plan`` (which leaves, how many weights),
  the ``growth`` rule (``either``: chosen per update, see `update_topology`), ``allow_regrow`` and
  the largest drop fraction it is called with (see `prune_and_grow`), and the masked optimizer
  ``tx`` whose moments it resets."""

  plan: SparsityPlan
  tx: MaskedOptimizer
  growth: str = "random"
  allow_regrow: bool = False
  max_drop_fraction: float = 1.0


def update_topology(key: jax.Array, params: PyTree, state: SparseState, grads: PyTree | None,
                    drop_fraction: jax.Array | float, topology: Topology,
                    by_gradient: jax.Array | bool | None = None) -> tuple[PyTree, SparseState]:
  """One prune-and-grow of every sparse layer (one member): returns (params, state) with the new
  masks and the inner optimizer's moments reset for pruned and grown connections. ``by_gradient``
  (may be traced): the growth rule of this update where ``topology.growth`` is ``either``."""
  t = topology
  params, masks, grown = prune_and_grow(key, params, state.masks, grads, drop_fraction, t.plan, t.growth,
                                        t.allow_regrow, t.max_drop_fraction, by_gradient)
  keep = jax.tree.map(lambda m, g: m & ~g, masks, grown)
  return params, SparseState(masks, reset_moments(t.tx.inner, state.inner_state, keep))
