"""EDST Ensemble (FreeTickets, Liu et al., ICLR 2022): one sparse run yields M diverse tickets.

Recipe (one sparse network, trained in a single `trainer.fit` driven by step hooks):
  1. exploration: DST (prune-and-grow every ΔT) at a large constant lr for ``edst.exploration_epochs``;
  2. M refinement phases of ``edst.refinement_epochs`` each at ``edst.refine_lr``, multiplied by
     ``edst.refine_decay`` at mid-phase; regular DST updates continue;
  3. before every refinement phase after the first: global exploration, one prune-and-grow of every
     sparse layer with the large drop fraction ``edst.global_drop_fraction`` (q), so the next ticket
     lies in a different region;
  4. the ticket of a phase is saved with Orbax in ``workdir/tickets``; the tickets are loaded back as
     one stacked M-member ensemble for evaluation.
Our choices (the paper is silent or we differ, each a config field):
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

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ensembles import checkpoints
from ensembles import members as members_lib
from ensembles import metrics as metrics_lib
from ensembles import sparse
from ensembles import train as train_lib
from ensembles import trainer
from ensembles.errors import ConfigError, is_int, is_number
from ensembles.methods import collected, common, sparse_common


def validate(config: Any) -> None:
  sparse_common.validate(config)
  if "edst" not in config:
    raise ConfigError("method 'edst_ensemble' needs a config.edst block; start from experiments/configs/edst_ensemble.py.")
  e = config.edst
  for field in ("exploration_epochs", "refinement_epochs"):
    if not (is_int(e[field]) and e[field] >= 1):
      raise ConfigError(f"config.edst.{field} must be an integer >= 1, got {e[field]!r}.")
  total = e.exploration_epochs + config.num_members * e.refinement_epochs
  if config.training.epochs != total:
    raise ConfigError(f"config.training.epochs must equal edst.exploration_epochs + num_members x "
                      f"edst.refinement_epochs = {e.exploration_epochs} + {config.num_members} x "
                      f"{e.refinement_epochs} = {total}, got {config.training.epochs}.")
  if not (is_number(e.global_drop_fraction) and 0.0 < e.global_drop_fraction < 1.0):
    raise ConfigError(f"config.edst.global_drop_fraction must be in (0, 1), got {e.global_drop_fraction!r}.")
  if e.exploration_growth not in sparse.GROWTH_RULES:
    raise ConfigError(f"config.edst.exploration_growth must be one of {sparse.GROWTH_RULES}, "
                      f"got {e.exploration_growth!r}.")
  for field in ("exploration_lr", "refine_lr"):
    if not (is_number(e[field]) and e[field] > 0):
      raise ConfigError(f"config.edst.{field} must be a number > 0, got {e[field]!r}.")
  if not (is_number(e.refine_decay) and 0.0 < e.refine_decay <= 1.0):
    raise ConfigError(f"config.edst.refine_decay must be in (0, 1], got {e.refine_decay!r}.")
  if not (is_int(e.reference_epochs) and e.reference_epochs >= 1):
    raise ConfigError(f"config.edst.reference_epochs must be an integer >= 1, got {e.reference_epochs!r}.")
  if e.drop_schedule not in DROP_SCHEDULES:
    raise ConfigError(f"config.edst.drop_schedule must be one of {DROP_SCHEDULES}, got {e.drop_schedule!r}.")
  if not (is_number(e.refine_stop_fraction) and 0.0 <= e.refine_stop_fraction <= 1.0):
    raise ConfigError(f"config.edst.refine_stop_fraction must be in [0, 1], got {e.refine_stop_fraction!r}.")
  if e.ticket not in TICKETS:
    raise ConfigError(f"config.edst.ticket must be one of {TICKETS}, got {e.ticket!r}.")
  if e.ticket == "best_val" and config.dataset.val_size < 1:
    raise ConfigError("config.edst.ticket='best_val' needs a validation split: set config.dataset.val_size >= 1.")


DROP_SCHEDULES = ("per_phase", "global")
TICKETS = ("final", "best_val")


def regular_updates(s: Any, e: Any, num_tickets: int, steps_per_epoch: int) -> Callable[[int], float | None]:
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


def edst_gradient_updates(s: Any, e: Any, num_tickets: int, steps_per_epoch: int) -> int:
  """Topology updates of an EDST run that take a dense gradient: the regular ones with gradient
  growth, and the M − 1 global explorations when they grow by gradient."""
  p = regular_updates(s, e, num_tickets, steps_per_epoch)
  total = phase_boundaries(e, num_tickets, steps_per_epoch)[-1][1]
  regular = sum(p(t) is not None for t in range(1, total + 1)) if s.growth == "gradient" else 0
  return regular + (num_tickets - 1 if e.exploration_growth == "gradient" else 0)


def validation_steps(e: Any, num_tickets: int, steps_per_epoch: int) -> list[int]:
  """Steps at which best-on-validation ticket selection evaluates the network (epoch ends inside
  refinement phases); none for ``edst.ticket = final``."""
  if e.ticket != "best_val":
    return []
  return [t for a, b in phase_boundaries(e, num_tickets, steps_per_epoch)
          for t in range(a + steps_per_epoch, b + 1, steps_per_epoch)]


def phase_boundaries(e: Any, num_tickets: int, steps_per_epoch: int) -> list[tuple[int, int]]:
  """[(start, end)] steps of the M refinement phases; exploration is [0, start of phase 0)."""
  ex = e.exploration_epochs * steps_per_epoch
  re = e.refinement_epochs * steps_per_epoch
  return [(ex + k * re, ex + (k + 1) * re) for k in range(num_tickets)]


def edst_lr_schedule(e: Any, num_tickets: int, steps_per_epoch: int) -> optax.Schedule:
  """exploration_lr during exploration; in each refinement phase refine_lr, then refine_lr ·
  refine_decay from mid-phase."""
  phases = phase_boundaries(e, num_tickets, steps_per_epoch)
  boundaries = jnp.array([b for start, end in phases for b in (start, (start + end) // 2)])
  values = jnp.array([e.exploration_lr] + [v for _ in phases for v in (e.refine_lr, e.refine_lr * e.refine_decay)])

  def schedule(step):
    return values[jnp.searchsorted(boundaries, step, side="right")]

  return schedule


def train_and_evaluate(config: Any, workdir: str) -> dict:
  s, e, m = config.sparse, config.edst, config.num_members
  t = config.training
  schedule_fn = lambda total, spe: edst_lr_schedule(e, m, spe)
  run = common.build_run(config, workdir, num_members=1, sparse_training=True, schedule=schedule_fn)
  inner = run.inner_tx
  steps_per_epoch = len(run.data.y_train) // t.batch_size
  state = common.init_members(run, 1)
  plan = sparse.make_plan(members_lib.member(state.params, 0), s.sparsity, s.density_rule)
  state = sparse_common.init_member_masks(state, inner, plan, s.init_rule, jax.random.fold_in(run.init_key, 1))

  aug = dict(execution=run.execution, mean=run.data.mean, std=run.data.std,
             crop_padding=config.augment.crop_padding, flip=config.augment.flip)
  dst_update = sparse_common.make_topology_update(run.model, inner, plan, s, **aug)
  explore_cfg = s.copy_and_resolve_references()
  explore_cfg.growth = e.exploration_growth
  global_update = sparse_common.make_topology_update(run.model, inner, plan, explore_cfg, **aug,
                                                     max_drop_fraction=e.global_drop_fraction)
  regular_p = regular_updates(s, e, m, steps_per_epoch)
  phases = phase_boundaries(e, m, steps_per_epoch)
  starts = {start: k for k, (start, _) in enumerate(phases) if k > 0}
  ends = {end: k for k, (_, end) in enumerate(phases)}
  tickets = collected.Collection(os.path.join(workdir, "tickets"), ends,
                                 {"masks": lambda state: members_lib.member(state.opt_state.masks, 0)})
  best_val_nll: dict[int, float] = {}  # best_val: phase -> lowest validation NLL saved so far
  selection_steps = set(validation_steps(e, m, steps_per_epoch))  # the same steps the FLOPs count charges

  def phase_of(step: int) -> int | None:
    return next((k for k, (a, b) in enumerate(phases) if a < step <= b), None)

  def validation_nll(state) -> float:
    probs = train_lib.predict_probs(run.predict, state, run.data.x_val, config.eval_batch_size)[0]
    return float(metrics_lib.nll(probs, run.data.y_val))

  def save_ticket(state, k: int, done: int, val_nll: float | None = None) -> None:
    tickets.save(state, k, {"phase": k, "step": done, "val_nll": val_nll})

  def select_best(state, done: int) -> None:
    """best_val: at an epoch end of refinement phase k, keep the state if its validation NLL is the
    phase's lowest so far (a resumed run reads the saved ticket's NLL back: same choice)."""
    if done not in selection_steps:
      return
    k = phase_of(done)
    if k not in best_val_nll:
      saved = checkpoints.member_meta(tickets.directory, k)
      best_val_nll[k] = saved["val_nll"] if saved and saved.get("val_nll") is not None else np.inf
    val_nll = validation_nll(state)
    if val_nll < best_val_nll[k]:
      best_val_nll[k] = val_nll
      save_ticket(state, k, done, val_nll)
      run.log.write({"step": done, "event": f"ticket {k} candidate", "val_nll": val_nll})

  def phase_hook(state, done, images, labels, idx):
    """Regular DST updates (`regular_updates`); at a phase end: the ticket (the trained state,
    before any topology change), then the global exploration before every phase after the first."""
    if e.ticket == "best_val":
      select_best(state, done)
    if done not in ends:
      p = regular_p(done)
      return state if p is None else dst_update(state, images, labels, idx, jnp.float32(p))
    if e.ticket == "final":
      save_ticket(state, ends[done], done)
    run.log.write({"step": done, "event": f"ticket {ends[done]} saved"})
    if done in starts:
      state = global_update(state, images, labels, idx, jnp.float32(e.global_drop_fraction))
      run.log.write({"step": done, "event": f"global exploration before phase {starts[done]}"})
    return state

  state, info = trainer.fit(state, run.train_step, run.predict, run.data, config, workdir,
                            data_keys=run.data_keys, mesh=run.mesh, log=run.log, desc=config.method, hooks=[phase_hook])
  members, _ = tickets.load(state)
  ensemble = common.collected_ensemble(run, members)
  densities = sparse.density_of(members["masks"])
  rule = "rigl" if s.growth == "gradient" else "set"
  flops = common.flops_summary(run, m, info["steps"], sparse.density_of(state.opt_state.masks), rule,
                               edst_gradient_updates(s, e, m, steps_per_epoch), trained_members=1,
                               reference_epochs=e.reference_epochs,
                               extra_passes=len(validation_steps(e, m, steps_per_epoch)) * len(run.data.y_val))
  out = common.results(run, ensemble, info, common.evaluate(run, ensemble), flops, masks=members["masks"])
  out["sparsity"] = {"target": s.sparsity, "ticket_nonzero_density": {k: densities[k] for k in plan.sizes}}
  out["tickets"] = {"mask_overlap": ticket_overlaps(members["masks"], plan)}
  return out


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
