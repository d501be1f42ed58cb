"""Shared pieces of the sparse recipes (DST, static sparse, EDST): the ``sparse`` options, mask
set-up for M members, the all-members topology update and its schedule."""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from ensembles import members as members_lib
from ensembles import sparse
from ensembles import train as train_lib
from ensembles import trainer
from ensembles.context import Run
from ensembles.errors import require
from ensembles.options import choice, flag, integer, number

_TOPOLOGY_SALT = 0x7090  # folds into a member's rng so topology keys differ from augmentation keys


@dataclasses.dataclass(frozen=True)
class SparseOptions:
  """The ``sparse`` block. Defaults: the FreeTickets CIFAR recipe's sparsity, ERK allocation, drop
  fraction and RigL growth; ΔT = 50 (ours: 1000 in the official run, shortened so a 10-epoch
  Fashion-MNIST run makes a comparable number of updates, 85 vs about 88); cosine decay of the drop
  fraction to 0 (ours)."""

  sparsity: float = number(0.8, 0, 1, "[)")          # S: fraction of prunable weights that are zero
  density_rule: str = choice("erk", sparse.DENSITY_RULES)  # per-layer density allocation
  init_rule: str = choice("random", sparse.INIT_RULES)     # which positions the initial masks keep
  growth: str = choice("gradient", sparse.GROWTH_RULES)    # gradient (RigL) | random (SET)
  update_every: int = integer(50, 1)                  # ΔT: steps between prune-and-grow updates
  drop_fraction: float = number(0.5, 0, 1, "()")      # p_0: fraction of each layer's active weights replaced
  drop_schedule: str = choice("cosine", ("constant", "cosine"))  # p_t = p_min + ½(p_0 − p_min)(1 + cos(π t / T_end))
  drop_fraction_min: float = number(0.0, 0, 1, "[)")  # p_min (<= drop_fraction)
  stop_fraction: float = number(1.0, 0, 1, "(]")      # topology updates stop after this fraction (RigL: 0.75)
  allow_regrow: bool = flag(False)                    # True: a just-pruned position may be regrown (reference code)

  def check(self) -> None:
    require(self.drop_fraction_min <= self.drop_fraction, "sparse.drop_fraction_min",
            f"in [0, drop_fraction={self.drop_fraction}]", self.drop_fraction_min)

  def topology(self, plan: sparse.SparsityPlan, tx: sparse.MaskedOptimizer, **changes) -> sparse.Topology:
    """The regular updates' `sparse.Topology` (``changes``: e.g. another growth rule)."""
    fields = dict(growth=self.growth, allow_regrow=self.allow_regrow, max_drop_fraction=self.drop_fraction)
    return sparse.Topology(plan, tx, **{**fields, **changes})


def make_plan(state: train_lib.TrainState, options: SparseOptions) -> sparse.SparsityPlan:
  """The sparsity plan of the members' model (from the shapes of one member's params: ``state`` may
be abstract, `jax.eval_shape`'s)."""
  one_member = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state.params)
  return sparse.make_plan(one_member, options.sparsity, options.density_rule)


def init_sparse_members(run: Run, options: SparseOptions) -> tuple[train_lib.TrainState, sparse.SparsityPlan]:
  """The run's members (`Run.init_members`) with their own exact-count masks (`init_member_masks`,
  rule ``sparse.init_rule``), and the sparsity plan."""
  state = run.init_members()
  plan = make_plan(state, options)
  return init_member_masks(run, state, plan, options.init_rule), plan


def init_member_masks(run: Run, state: train_lib.TrainState, plan: sparse.SparsityPlan,
                      rule: str) -> train_lib.TrainState:
  """Gives each member its own exact-count masks (keys split from fold_in(its seed's init key, 1):
  `Run.member_keys`), masks its params and puts the masks in its `sparse.masked` optimizer state."""
  params, opt_state = make_mask_init(run, plan, rule)(run.member_keys(1), state.params)
  return state.replace(params=params, opt_state=opt_state)


def make_mask_init(run: Run, plan: sparse.SparsityPlan, rule: str) -> Callable:
  """The jitted ``init(keys [M, 2], params) -> (masked params, opt_state with masks)`` of
  `init_member_masks` (`sparse.init_sparse` per member)."""
  return jax.jit(jax.vmap(lambda k, params: sparse.init_sparse(k, params, run.tx, plan, rule)))


def mask_programs(run: Run, options: SparseOptions, plan, prepare: Callable | None = None):
  """Pre-flight (`preflight.Plan`): a sparse phase's programs (its members' initialisation, masks,
  train step, validation prediction); returns its abstract state (``prepare``: the recipe's, default
  `init_sparse_members`)."""
  from ensembles import preflight  # pylint: disable=g-import-not-at-top  (preflight imports the trainer)
  state = preflight.abstract_state(run, prepare or (lambda: init_sparse_members(run, options)[0]))
  keys = preflight.abstract(jax.ShapeDtypeStruct((run.total_members, 2), jnp.uint32), run.mesh, members_lib.MEMBER_AXIS)
  plan.training(run, state)
  plan.add("mask initialisation", make_mask_init(run, make_plan(state, options), options.init_rule),
           (keys, state.params), run.mesh)
  return state


def make_topology_update(run: Run, topology: sparse.Topology) -> Callable:
  """Returns jitted ``update(state, batch, drop_fraction, by_gradient=None) -> state`` for all
  members: one `sparse.update_topology` per member, with the gradient of its `train.Batch` for RigL
  growth, executed as the run's train step is (mode, mesh). drop_fraction and by_gradient
  (the growth rule where ``topology.growth`` is ``either``) are traced: one compiled update serves
  every call."""
  options = {**train_lib.gradient_options(run.config), "batch_split": 1}
  gradients = train_lib.make_member_gradients(run.model, mean=run.data.mean, std=run.data.std, **options)
  execution = run.execution

  def member_update(state, batch, drop_fraction, by_gradient):
    key = jax.random.fold_in(jax.random.fold_in(state.rng, _TOPOLOGY_SALT), state.step)
    grads = gradients(state, batch)[0] if topology.growth != "random" else None
    params, opt_state = sparse.update_topology(key, state.params, state.opt_state, grads, drop_fraction, topology,
                                               by_gradient)
    return state.replace(params=params, opt_state=opt_state)

  @functools.partial(jax.jit, donate_argnums=0)
  def jitted(state, batch, drop_fraction, by_gradient):
    state = members_lib.constrain(state, execution.mesh, members_lib.MEMBER_AXIS)
    batch = members_lib.constrain(batch, execution.mesh, members_lib.MEMBER_AXIS, members_lib.DATA_AXIS)
    state = execution.map(member_update, num_shared=2)(state, batch, drop_fraction, by_gradient)
    return members_lib.constrain(state, execution.mesh, members_lib.MEMBER_AXIS)

  def update(state, batch, drop_fraction, by_gradient=None):
    flag = None if by_gradient is None else jnp.bool_(by_gradient)  # None: the topology's own rule
    return jitted(state, batch, jnp.float32(drop_fraction), flag)

  update.jitted = jitted  # the one compiled program (its cache size is tested)
  return update


def update_steps(options: SparseOptions, total_steps: int) -> list[int]:
  """Steps after which `topology_hook` prunes and grows: multiples of ΔT before the stop fraction."""
  stop = stop_step(options, total_steps)
  return [done for done in range(options.update_every, total_steps + 1, options.update_every) if done < stop]


def stop_step(options: SparseOptions, total_steps: int) -> int:
  """The step from which no topology update is made: stop_fraction x total steps."""
  return int(options.stop_fraction * total_steps)


def topology_hook(update: Callable, options: SparseOptions, total_steps: int) -> trainer.Hook:
  """Trainer hook: prune-and-grow every ΔT steps until the stop fraction of training, with the
  drop fraction of `sparse.drop_fraction_schedule` at that step."""
  schedule = sparse.drop_fraction_schedule(options.drop_fraction, options.drop_schedule, stop_step(options, total_steps),
                                           options.drop_fraction_min)

  def hook(state, done, batch):
    return update(state, batch, jnp.float32(schedule(done)))

  return trainer.Hook(frozenset(update_steps(options, total_steps)), hook)  # the steps the FLOPs count charges


def growth_rule(options: SparseOptions) -> str:
  """The FLOPs counting rule of a DST run: rigl (gradient growth) or set (random growth)."""
  return "rigl" if options.growth == "gradient" else "set"
