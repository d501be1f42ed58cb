"""EDST Ensemble (FreeTickets, Liu et al., ICLR 2022): one sparse run yields M diverse tickets.

Recipe (one sparse network, trained in a single `trainer.fit` driven by step hooks):
  1. exploration: DST (prune-and-grow every ΔT) at a large constant lr for ``edst.exploration_epochs``;
  2. M refinement phases of ``edst.refinement_epochs`` each at ``edst.refine_lr``, multiplied by
     ``edst.refine_decay`` at mid-phase; regular DST updates continue;
  3. before every refinement phase after the first: global exploration, one prune-and-grow of every
     sparse layer with the large drop fraction ``edst.global_drop_fraction`` (q), so the next ticket
     lies in a different region;
  4. the ticket of a phase is collected (``workdir/tickets``); the tickets are loaded back as one
     stacked M-member ensemble.
Our choices (the paper is silent or we differ, each a field of `EDSTOptions`):
  * growth rule of the global exploration (``edst.exploration_growth``, default random);
  * ``edst.drop_schedule``: ``per_phase`` (default) restarts the drop-fraction schedule
    (``sparse.drop_schedule``, e.g. cosine p_0 -> p_min) at the start of exploration and of every
    refinement phase, decaying over the phase's update window; ``global`` decays it once over the
    whole run (kept for ablation: the later phases then barely update). The official CIFAR code keeps
    p constant, its ImageNet code restarts it per phase;
  * ``edst.refine_stop_fraction`` f: regular DST updates run in the first f of each refinement
    phase only, so a ticket is not taken right after connections were regrown at zero;
  * ``edst.ticket``: ``final`` (the phase's last state) or ``best_val`` (the state of lowest
    validation NLL among the phase's epoch ends; validation is carved from the training set).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ensembles import members as members_lib
from ensembles import options as options_lib
from ensembles import metrics as metrics_lib
from ensembles import sparse
from ensembles import trainer
from ensembles.context import Run
from ensembles.errors import is_int, is_number, require
from ensembles.methods import cbnn, sparse_common
from ensembles.methods.base import Method, Trained, register
from ensembles.methods.sparse_common import SparseOptions
from ensembles.options import choice, integer, number, option

DROP_SCHEDULES = ("per_phase", "global")
TICKETS = ("final", "best_val")


@dataclasses.dataclass(frozen=True)
class EDSTOptions:
  """The ``edst`` block. Official CIFAR schedule: 150 exploration + 3 x 100 refinement epochs (450)
  against 250 for a single dense model; the defaults scale it by the same ratios to a 10-epoch
  single-model budget: 6 + 3 x 4 = 18 epochs. Exploration lr 0.1 constant, refinement lr 0.01 with
  x0.1 at mid-phase, q = 0.8: the official values. Ours: one epoch of linear lr warm-up (warmup_epochs;
  the official schedule has none, and the paper-scale recipes set it to 0)."""

  exploration_epochs: int = integer(6, 1)          # t_ex
  refinement_epochs: int = integer(4, 1)           # t_re, per ticket
  exploration_lr: float = option(0.1, "a number > 0, or 0 (= training.lr)",  # 0: the lr every other method
                                 lambda v: is_number(v) and v >= 0)            #   of a study trains at
  warmup_epochs: float = number(1.0, 0, float("inf"), "[)")  # ours (validation, README): the lr rises linearly
                                                    #   over max(this, training.warmup_epochs) epochs; 0: none
  exploration_milestones: tuple = option(  # exploration epochs at which its lr is multiplied by exploration_decay
      (), "a tuple of increasing integer epochs >= 1", lambda v: isinstance(v, (tuple, list)) and all(
          is_int(x) and x >= 1 for x in v) and list(v) == sorted(set(v)))  # ImageNet recipe: (30, 60, 90)
  exploration_decay: float = number(0.1, 0, 1, "(]")
  refine_lr: float = number(0.01, 0, float("inf"), "()")
  refine_decay: float = number(0.1, 0, 1, "(]")    # refine lr multiplier from mid-phase
  global_drop_fraction: float = number(0.8, 0, 1, "()")  # q: drop fraction of the global exploration
  exploration_growth: str = choice("random", sparse.GROWTH_RULES)  # ours: growth of the global exploration
  reference_epochs: int = integer(10, 1)           # the single dense model's epochs (train FLOPs x dense)
  drop_schedule: str = choice("per_phase", DROP_SCHEDULES)  # ours: drop schedule restarts each phase | global
  refine_stop_fraction: float = number(0.5, 0, 1, "[]")  # ours (validation, README): regular updates in each
                                                         #   refinement phase's first half only
  ticket: str = choice("final", TICKETS)           # final (phase's last state) | best_val (lowest val NLL)

  def epochs(self, num_tickets: int) -> int:
    """The run's epochs: exploration + M x refinement."""
    return self.exploration_epochs + num_tickets * self.refinement_epochs


def regular_updates(s: SparseOptions, e: EDSTOptions, num_tickets: int, steps_per_epoch: int) -> Callable[[int], float | None]:
  """The regular DST updates of an EDST run: ``p(step)`` is the drop fraction of the update made
  after ``step`` steps, or None when there is none at that step.

  Updates every ``sparse.update_every`` steps while step < ``sparse.stop_fraction`` of the run, not
  at phase ends (the global exploration or nothing happens there), and in each refinement phase
  [a, b) only while step < a + refine_stop_fraction·(b − a). ``per_phase``: the drop schedule
  restarts at 0 and at every phase start a, with T_end = the phase's update window; ``global``: one
  schedule over the run's update window (T_end = stop_fraction · total steps).
  """
  phases = phase_boundaries(e, num_tickets, steps_per_epoch)
  total = phases[-1][1]
  stop = int(s.stop_fraction * total)
  windows = [(0, phases[0][0])] + [(a, a + int(e.refine_stop_fraction * (b - a))) for a, b in phases]
  if e.drop_schedule == "global":
    schedule = sparse.drop_fraction_schedule(s.drop_fraction, s.drop_schedule, stop, s.drop_fraction_min)
    starts_and_schedules = [(0, schedule)] * len(windows)
  else:
    starts_and_schedules = [(a, sparse.drop_fraction_schedule(s.drop_fraction, s.drop_schedule, end - a,
                                                              s.drop_fraction_min)) for a, end in windows]

  def p(step: int) -> float | None:
    if step % s.update_every or step >= stop:
      return None
    for (a, end), (origin, schedule) in zip(windows, starts_and_schedules):
      if a < step < end:
        return float(schedule(step - origin))
    return None

  return p


def edst_gradient_updates(s: SparseOptions, e: EDSTOptions, num_tickets: int, steps_per_epoch: int) -> int:
  """Topology updates of an EDST run that take a dense gradient: the regular ones with gradient
  growth, and the M − 1 global explorations when they grow by gradient."""
  p = regular_updates(s, e, num_tickets, steps_per_epoch)
  total = phase_boundaries(e, num_tickets, steps_per_epoch)[-1][1]
  regular = sum(p(t) is not None for t in range(1, total + 1)) if s.growth == "gradient" else 0
  return regular + (num_tickets - 1 if e.exploration_growth == "gradient" else 0)


def validation_steps(e: EDSTOptions, num_tickets: int, steps_per_epoch: int) -> list[int]:
  """Steps at which best-on-validation ticket selection evaluates the network (epoch ends inside
  refinement phases); none for ``edst.ticket = final``."""
  if e.ticket != "best_val":
    return []
  return [t for a, b in phase_boundaries(e, num_tickets, steps_per_epoch)
          for t in range(a + steps_per_epoch, b + 1, steps_per_epoch)]


def phase_boundaries(e: EDSTOptions, num_tickets: int, steps_per_epoch: int) -> list[tuple[int, int]]:
  """[(start, end)] steps of the M refinement phases; exploration is [0, start of phase 0)."""
  ex = e.exploration_epochs * steps_per_epoch
  re = e.refinement_epochs * steps_per_epoch
  return [(ex + k * re, ex + (k + 1) * re) for k in range(num_tickets)]


def edst_lr_schedule(e: EDSTOptions, num_tickets: int, steps_per_epoch: int, warmup_epochs: float = 0.0,
                     base_lr: float | None = None) -> optax.Schedule:
  """exploration_lr (where it is 0: ``base_lr``, the config's training.lr) during exploration
  (multiplied by exploration_decay at each of exploration_milestones, in epochs); in each
  refinement phase refine_lr, then refine_lr · refine_decay from mid-phase. With ``warmup_epochs``
  > 0 (the run passes `warmup_epochs`(edst, training.warmup_epochs)) the lr rises linearly from 0
  over the first warm-up steps: lr(t) · min(1, t / T_warmup)."""
  exploration_lr = e.exploration_lr or base_lr
  if not exploration_lr:
    raise ValueError("edst.exploration_lr = 0 follows training.lr: pass base_lr.")
  phases = phase_boundaries(e, num_tickets, steps_per_epoch)
  milestones = [m * steps_per_epoch for m in e.exploration_milestones]
  boundaries = jnp.array(milestones + [b for start, end in phases for b in (start, (start + end) // 2)])
  values = jnp.array([exploration_lr * e.exploration_decay ** k for k in range(len(milestones) + 1)] +
                     [v for _ in phases for v in (e.refine_lr, e.refine_lr * e.refine_decay)])
  warmup = int(round(warmup_epochs * steps_per_epoch))

  def schedule(step):
    lr = values[jnp.searchsorted(boundaries, step, side="right")]
    return lr * jnp.minimum(1.0, step / warmup) if warmup > 0 else lr

  return schedule


def train(run: Run, options) -> list[Trained]:
  return train_tickets(run, options)


def ticket_phase(run: Run, options) -> Run:
  """The one sparse network of the EDST run, on the EDST lr schedule (`edst_lr_schedule`)."""
  return run.phase(num_members=1, sparse_training=True,
                   schedule=edst_lr_schedule(options.edst, run.num_members, run.steps_per_epoch,
                                             warmup_epochs(options.edst, run.config.training.warmup_epochs),
                                             run.config.training.lr))


def warmup_epochs(e: EDSTOptions, training_warmup_epochs: float) -> float:
  """EDST's lr warm-up in epochs: the larger of ``edst.warmup_epochs`` (ours, 1 by default: without it
  the official exploration lr 0.1 made a LeNet without normalisation collapse after the first topology
  update, README) and ``training.warmup_epochs`` (every method's)."""
  return max(e.warmup_epochs, training_warmup_epochs)


def ticket_topology(run: Run, options, plan: sparse.SparsityPlan) -> sparse.Topology:
  """One compiled update serves the regular and the global ones: the drop fraction and growth rule
  are traced arguments, the selection bound the larger of the two drop fractions."""
  s, e = options.sparse, options.edst
  growth = s.growth if s.growth == e.exploration_growth else "either"
  return s.topology(plan, run.tx, growth=growth, max_drop_fraction=max(s.drop_fraction, e.global_drop_fraction))


def programs(run: Run, options, plan, boost: Any = None) -> None:
  """Pre-flight (`preflight.Plan`): the ticket network's phase, its topology update (regular and
  global), the boosted tickets' reweighting, the evaluation of the M tickets."""
  phase = ticket_phase(run, options)

  def prepare():
    state = sparse_common.init_sparse_members(phase, options.sparse)[0]
    return state if boost is None else cbnn.with_sample_weights(phase, state)

  state = sparse_common.mask_programs(phase, options.sparse, plan, prepare)
  topology = ticket_topology(phase, options, sparse_common.make_plan(state, options.sparse))
  by_gradient = True if topology.growth == "either" else None
  plan.topology_update(phase, state, sparse_common.make_topology_update(phase, topology), by_gradient)
  if boost is not None:
    plan.reweighting(phase, state, cbnn.make_reweight(boost))
  plan.ensemble(phase, state, run.num_members)


def train_tickets(run: Run, options, boost: Any = None) -> list[Trained]:
  """The EDST run; with ``boost`` (`cbnn.BoostingRuleOptions`: rule, eps, max_weight_ratio, combine, shrinkage)
  each ticket's training-set predictions also reweight the samples before the next phase and give
  the ticket its α (`boosting.reweight`), and the tickets combine with their α."""
  s, e, m = options.sparse, options.edst, run.num_members
  spe = run.steps_per_epoch
  run = ticket_phase(run, options)
  state, plan = sparse_common.init_sparse_members(run, s)
  n = len(run.data.y_train)
  if boost is not None:
    state = cbnn.with_sample_weights(run, state)
    boost_at = cbnn.make_boost(run, boost)
  update = sparse_common.make_topology_update(run, ticket_topology(run, options, plan))
  regular_p = regular_updates(s, e, m, spe)
  phases = phase_boundaries(e, m, spe)
  starts = {start: k for k, (start, _) in enumerate(phases) if k > 0}
  ends = {end: k for k, (_, end) in enumerate(phases)}
  tickets = run.collection("tickets", ends, masks=lambda state: members_lib.member(sparse.masks_of(state.opt_state), 0))
  best_val_nll: dict[tuple[int, int], float] = {}  # best_val: (phase, seed) -> lowest validation NLL saved so far
  selection_steps = set(validation_steps(e, m, spe))  # the same steps the FLOPs count charges

  def phase_of(step: int) -> int | None:
    return next((k for k, (a, b) in enumerate(phases) if a < step <= b), None)

  def validation_nlls(state) -> list[float]:
    """Each seed's network's validation NLL."""
    return [float(metrics_lib.nll(p, run.data.y_val)) for p in run.member_probs(state, run.data.x_val)]

  def ticket_meta(k: int, done: int, val_nll: float | None = None, **meta) -> dict:
    return {"phase": k, "step": done, "val_nll": val_nll, **meta}

  def boosted_ticket(state, k: int, done: int):
    """The ticket with its α; the samples reweighted from its training-set predictions."""
    return boost_at(state, done, f"ticket {k} reweighted",
                    lambda metas: tickets.save(state, k, [ticket_meta(k, done, **meta) for meta in metas]))

  def select_best(state, done: int) -> None:
    """best_val: at an epoch end of refinement phase k, keep each seed's state if its validation
    NLL is the phase's lowest so far (a resumed run reads the saved ticket's NLL back: same choice)."""
    if done not in selection_steps:
      return
    k = phase_of(done)
    for i, val_nll in enumerate(validation_nlls(state)):  # i: the seed's index
      if (k, i) not in best_val_nll:
        saved = tickets.meta(k, i)
        best_val_nll[(k, i)] = saved["val_nll"] if saved and saved.get("val_nll") is not None else np.inf
      if val_nll < best_val_nll[(k, i)]:
        best_val_nll[(k, i)] = val_nll
        tickets.save_seed(state, k, i, ticket_meta(k, done, val_nll))
        run.log.write({"step": done, "event": f"ticket {k} candidate", "val_nll": val_nll,
                       **({"seed": run.seeds[i]} if run.num_seeds > 1 else {})})

  def phase_hook(state, done, batch):
    """Regular DST updates (`regular_updates`); at a phase end: the ticket (the trained state,
    before any topology change), then the global exploration before every phase after the first."""
    if e.ticket == "best_val":
      select_best(state, done)
    if done not in ends:
      p = regular_p(done)
      return state if p is None else update(state, batch, p, s.growth == "gradient")
    if boost is not None:
      state = boosted_ticket(state, ends[done], done)
    elif e.ticket == "final":
      tickets.save(state, ends[done], ticket_meta(ends[done], done))
    run.log.write({"step": done, "event": f"ticket {ends[done]} saved"})
    if done in starts:
      state = update(state, batch, e.global_drop_fraction, e.exploration_growth == "gradient")
      run.log.write({"step": done, "event": f"global exploration before phase {starts[done]}"})
    return state

  total = phases[-1][1]
  regular = {t for t in range(s.update_every, total + 1, s.update_every) if regular_p(t) is not None}
  hook_steps = regular | set(ends) | selection_steps
  state, info = trainer.fit(run, state, [trainer.Hook(frozenset(hook_steps), phase_hook)])
  members, metas = tickets.load(state)
  trained = []
  for r, members, metas, final_masks in zip(run.seed_runs(), run.split_seeds(members), run.split_seeds(metas),
                                            run.split_seeds(sparse.masks_of(state.opt_state))):
    densities = sparse.density_of(members["masks"])
    flops = r.flops(m, info["steps"], sparse.density_of(final_masks),
                    sparse_common.growth_rule(s), edst_gradient_updates(s, e, m, spe), trained_members=1,
                    reference_epochs=e.reference_epochs,
                    extra_passes=len(validation_steps(e, m, spe)) * len(run.data.y_val)
                    + (m * n if boost is not None else 0))  # + the boosted tickets' training-set passes
    results = {"sparsity": {"target": s.sparsity, "ticket_nonzero_density": {k: densities[k] for k in plan.sizes}},
               "tickets": {"mask_overlap": ticket_overlaps(members["masks"], plan)}}
    if boost is None:
      trained.append(Trained(r.ensemble(members), info, flops, members["masks"], results))
      continue
    alphas = [meta["alpha"] for meta in metas]
    results["boosting"] = {"alphas": alphas, "train_errors": [meta["train_error"] for meta in metas]}
    trained.append(Trained(r.ensemble(members, alphas, boost.combine), info, flops, members["masks"], results))
  return trained


def derived(config) -> dict:
  """training.epochs = exploration + M x refinement epochs (where a user does not set it)."""
  e = options_lib.from_block(EDSTOptions, config.get("edst"), "edst")
  return {"training.epochs": e.epochs(config.num_members)}


def check(config, options) -> None:
  e = options.edst
  require(config.training.epochs == e.epochs(config.num_members), "training.epochs",
          f"equal to edst.exploration_epochs + num_members x edst.refinement_epochs = {e.exploration_epochs} + "
          f"{config.num_members} x {e.refinement_epochs} = {e.epochs(config.num_members)}", config.training.epochs)
  require(e.warmup_epochs <= e.exploration_epochs, "edst.warmup_epochs",
          f"at most edst.exploration_epochs = {e.exploration_epochs} (the warm-up is part of the exploration)",
          e.warmup_epochs)
  require(all(m < e.exploration_epochs for m in e.exploration_milestones), "edst.exploration_milestones",
          f"epochs within exploration (< edst.exploration_epochs = {e.exploration_epochs})", e.exploration_milestones)
  if e.ticket == "best_val":
    require(config.dataset.val_size >= 1, "dataset.val_size",
            ">= 1 for edst.ticket='best_val' (a validation split)", config.dataset.val_size)


def ticket_overlaps(masks: Any, plan: sparse.SparsityPlan) -> list[list[float]]:
  """[M, M]: fraction of ticket i's active sparse-layer weights that are also active in ticket j."""
  flat = {jax.tree_util.keystr(p): w for p, w in jax.tree_util.tree_flatten_with_path(masks)[0]}
  if not plan.counts:  # sparsity 0: every ticket is dense
    m = members_lib.num_members(masks)
    return [[1.0] * m for _ in range(m)]
  active = jnp.concatenate([flat[k].reshape(flat[k].shape[0], -1) for k in plan.counts], axis=1)
  active = active.astype(jnp.float32)
  inter = active @ active.T
  return (inter / jnp.diag(inter)[:, None]).tolist()


METHOD = register(Method("edst_ensemble", train, {"sparse": SparseOptions, "edst": EDSTOptions},
                         defaults={"num_members": 3, "training.lr_schedule": "constant"},  # epochs: `derived`
                         check=check, derived=derived, trains_seeds=True,
                         trains_one_network=True, programs=programs))
