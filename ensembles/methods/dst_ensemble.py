"""DST Ensemble (FreeTickets, Liu et al., ICLR 2022): M sparse members, each with its own random
init and ERK mask, trained independently with prune-and-grow every ΔT steps -- here all M in one
compiled step.

  1. per member: dense init, exact-count mask (``sparse.init_rule``), params masked;
  2. train with `sparse.masked(optimizer)` (pruned weights stay exactly zero);
  3. every ``sparse.update_every`` steps until ``sparse.stop_fraction`` of training: prune the
     smallest-|w| fraction p_t of each sparse layer and regrow as many (``sparse.growth``);
  4. predict with the mean of the members' probabilities.
"""
from __future__ import annotations

from typing import Any

import jax

from ensembles import members as members_lib
from ensembles import sparse
from ensembles import trainer
from ensembles.context import Run, stacked_members
from ensembles.methods import sparse_common
from ensembles.methods.base import Method, Trained, register
from ensembles.methods.sparse_common import SparseOptions


def train(run: Run, options, topology_updates: bool = True) -> list[Trained]:
  s = options.sparse
  run = run.phase(sparse_training=True)
  state, plan = sparse_common.init_sparse_members(run, s)
  hooks = []
  if topology_updates:
    update = sparse_common.make_topology_update(run, s.topology(plan, run.tx))
    hooks.append(sparse_common.topology_hook(update, s, run.total_steps))
  state, info = trainer.fit(run, state, hooks)

  rule = sparse_common.growth_rule(s) if topology_updates else "static"
  gradient_updates = len(sparse_common.update_steps(s, run.total_steps)) if rule == "rigl" else 0
  trained = []
  for r, members, masks in zip(run.seed_runs(), run.split_seeds(stacked_members(state)),
                               run.split_seeds(sparse.masks_of(state.opt_state))):
    densities = sparse.density_of(masks)
    flops = r.flops(run.num_members, info["steps"], densities, rule, run.num_members * gradient_updates)
    results = {"sparsity": {"target": s.sparsity, "realised_prunable_density": prunable_density(masks, plan),
                            "layer_densities": {k: densities[k] for k in plan.sizes}}}
    trained.append(Trained(r.ensemble(members), info, flops, masks, results))
  return trained


def programs(run: Run, options, plan, topology_updates: bool = True) -> None:
  """Pre-flight (`preflight.Plan`): the sparse phase, its topology update, the M members' evaluation."""
  s = options.sparse
  run = run.phase(sparse_training=True)
  state = sparse_common.mask_programs(run, s, plan)
  if topology_updates:
    update = sparse_common.make_topology_update(run, s.topology(sparse_common.make_plan(state, s), run.tx))
    plan.topology_update(run, state, update, None if s.growth == "gradient" else False)
  plan.ensemble(run, state, run.num_members)


def prunable_density(masks: Any, plan: sparse.SparsityPlan) -> float:
  """Kept fraction of all prunable weights of stacked masks [M, ...], averaged over members (exact
  counts: equals the plan)."""
  kept = sum(float(m.sum()) for m, p in zip(jax.tree.leaves(masks), jax.tree.leaves(plan.prunable)) if p)
  return kept / members_lib.num_members(masks) / sum(plan.sizes.values())


METHOD = register(Method("dst_ensemble", train, {"sparse": SparseOptions}, defaults={"num_members": 3},
                         trains_seeds=True, programs=programs))
