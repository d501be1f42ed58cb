"""EDST Ensemble (FreeTickets, Liu et al., ICLR 2022): one sparse run yields M diverse tickets.

Recipe (one sparse network, trained in a single `trainer.fit` driven by step hooks):
  1. exploration: DST (prune-and-grow every ΔT) at a large constant lr for ``edst.exploration_epochs``;
  2. M refinement phases of ``edst.refinement_epochs`` each at ``edst.refine_lr``, multiplied by
     ``edst.refine_decay`` at mid-phase; regular DST updates continue;
  3. before every refinement phase after the first: global exploration, one prune-and-grow of every
     sparse layer with the large drop fraction ``edst.global_drop_fraction`` (q), so the next ticket
     lies in a different region;
  4. the ticket of a phase is its final state, saved with Orbax in ``workdir/tickets``; the tickets
     are loaded back as one stacked M-member ensemble for evaluation.
Our choices (the paper is silent or we differ, each a config field): growth rule of the global
exploration (``edst.exploration_growth``, default random); the ticket is the phase's final state.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ensembles import checkpoints
from ensembles import members as members_lib
from ensembles import sparse
from ensembles import train as train_lib
from ensembles import trainer
from ensembles.config import ConfigError
from ensembles.methods import common, sparse_common


def validate(config: Any) -> None:
  sparse_common.validate(config)
  if "edst" not in config:
    raise ConfigError("method 'edst_ensemble' needs a config.edst block; start from experiments/configs/edst_ensemble.py.")
  e = config.edst
  for field in ("exploration_epochs", "refinement_epochs"):
    if not (isinstance(e[field], int) and e[field] >= 1):
      raise ConfigError(f"config.edst.{field} must be an integer >= 1, got {e[field]!r}.")
  total = e.exploration_epochs + config.num_members * e.refinement_epochs
  if config.training.epochs != total:
    raise ConfigError(f"config.training.epochs must equal edst.exploration_epochs + num_members x "
                      f"edst.refinement_epochs = {e.exploration_epochs} + {config.num_members} x "
                      f"{e.refinement_epochs} = {total}, got {config.training.epochs}.")
  if not 0.0 < e.global_drop_fraction < 1.0:
    raise ConfigError(f"config.edst.global_drop_fraction must be in (0, 1), got {e.global_drop_fraction!r}.")
  if e.exploration_growth not in sparse.GROWTH_RULES:
    raise ConfigError(f"config.edst.exploration_growth must be one of {sparse.GROWTH_RULES}, "
                      f"got {e.exploration_growth!r}.")
  for field in ("exploration_lr", "refine_lr"):
    if not e[field] > 0:
      raise ConfigError(f"config.edst.{field} must be > 0, got {e[field]!r}.")
  if not 0.0 < e.refine_decay <= 1.0:
    raise ConfigError(f"config.edst.refine_decay must be in (0, 1], got {e.refine_decay!r}.")
  if not (isinstance(e.reference_epochs, int) and e.reference_epochs >= 1):
    raise ConfigError(f"config.edst.reference_epochs must be an integer >= 1, got {e.reference_epochs!r}.")


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
  total_steps = t.epochs * steps_per_epoch
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
  dst_hook = sparse_common.topology_hook(dst_update, s, total_steps)
  phases = phase_boundaries(e, m, steps_per_epoch)
  starts = {start: k for k, (start, _) in enumerate(phases) if k > 0}
  ends = {end: k for k, (_, end) in enumerate(phases)}
  tickets_dir = os.path.join(workdir, "tickets")

  def phase_hook(state, done, images, labels, idx):
    """At a phase end: save the ticket (the trained state, before any topology change), then the
    global exploration (before every phase after the first) instead of a regular DST update."""
    if done not in ends:
      return dst_hook(state, done, images, labels, idx)
    checkpoints.save_member(tickets_dir, ends[done], _ticket(state), {"phase": ends[done], "step": done})
    run.log.write({"step": done, "event": f"ticket {ends[done]} saved"})
    if done in starts:
      state = global_update(state, images, labels, idx, jnp.float32(e.global_drop_fraction))
      run.log.write({"step": done, "event": f"global exploration before phase {starts[done]}"})
    return state

  state, info = trainer.fit(state, run.train_step, run.predict, run.data, config, workdir,
                            data_keys=run.data_keys, mesh=run.mesh, log=run.log, desc=config.method, hooks=[phase_hook])
  tickets, _ = checkpoints.load_members(tickets_dir, _ticket(state))
  ensemble = common.collected_ensemble(run, tickets)
  densities = sparse.density_of(tickets["masks"])
  rule = "rigl" if s.growth == "gradient" else "set"
  flops = common.flops_summary(run, m, info["steps"], sparse.density_of(state.opt_state.masks), rule,
                               s.update_every, trained_members=1, reference_epochs=e.reference_epochs)
  out = common.results(run, ensemble, info, common.evaluate(run, ensemble), flops, masks=tickets["masks"])
  out["sparsity"] = {"target": s.sparsity, "ticket_nonzero_density": {k: densities[k] for k in plan.sizes}}
  out["tickets"] = {"mask_overlap": ticket_overlaps(tickets["masks"], plan)}
  return out


def _ticket(state: train_lib.TrainState) -> dict:
  """What a ticket keeps of the (single-member) run state: params, BatchNorm statistics, masks."""
  return {"params": members_lib.member(state.params, 0), "model_state": members_lib.member(state.model_state, 0),
          "masks": members_lib.member(state.opt_state.masks, 0)}


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
