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
  """The sparsity plan of the members' model (from member 0's params)."""
  return sparse.make_plan(members_lib.member(state.params, 0), options.sparsity, options.density_rule)


def init_member_masks(run: Run, state: train_lib.TrainState, plan: sparse.SparsityPlan,
                      rule: str) -> train_lib.TrainState:
  """Gives each member its own exact-count masks (keys split from fold_in(its seed's init key, 1):
  `Run.member_keys`), masks its params and puts the masks in its `sparse.masked` optimizer state."""
  def one(k, params):
    return sparse.init_sparse(k, params, run.tx, plan, rule)

  keys = run.member_keys(1)
  params, opt_state = jax.jit(jax.vmap(one))(keys, state.params)
  return state.replace(params=params, opt_state=opt_state)


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
