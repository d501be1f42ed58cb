"""DST Ensemble (FreeTickets, Liu et al., ICLR 2022): M sparse members, each with its own random
init and ERK mask, trained independently with prune-and-grow every ΔT steps -- here all M in one
compiled step. With ``config.method = 'static_sparse_ensemble'`` the masks stay fixed after init.

Recipe:
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
from ensembles import train as train_lib
from ensembles import trainer
from ensembles.methods import common, sparse_common

validate = sparse_common.validate


def train_and_evaluate(config: Any, workdir: str) -> dict:
  s = config.sparse
  run = common.build_run(config, workdir, sparse_training=True)
  inner = run.inner_tx
  state = common.init_members(run, config.num_members)
  plan = sparse.make_plan(members_lib.member(state.params, 0), s.sparsity, s.density_rule)
  state = sparse_common.init_member_masks(state, inner, plan, s.init_rule, jax.random.fold_in(run.init_key, 1))
  static = config.method == "static_sparse_ensemble"
  t = config.training
  total_steps = t.epochs * (len(run.data.y_train) // t.batch_size)
  hooks = []
  if not static:
    update = sparse_common.make_topology_update(
        run.model, inner, plan, s, execution=run.execution, mean=run.data.mean, std=run.data.std,
        crop_padding=config.augment.crop_padding, flip=config.augment.flip)
    hooks.append(sparse_common.topology_hook(update, s, total_steps))
  state, info = trainer.fit(state, run.train_step, run.predict, run.data, config, workdir,
                            data_keys=run.data_keys, mesh=run.mesh, log=run.log, desc=config.method, hooks=hooks)
  densities = sparse.density_of(state.opt_state.masks)
  rule = "static" if static else ("rigl" if s.growth == "gradient" else "set")
  gradient_updates = len(sparse_common.update_steps(s, total_steps)) if rule == "rigl" else 0
  flops = common.flops_summary(run, config.num_members, info["steps"], densities, rule,
                               config.num_members * gradient_updates)
  out = common.results(run, state, info, common.evaluate(run, state), flops, masks=state.opt_state.masks)
  out["sparsity"] = {"target": s.sparsity, "realised_prunable_density": _prunable_density(state, plan),
                     "layer_densities": {k: densities[k] for k in plan.sizes}}
  return out


def _prunable_density(state: train_lib.TrainState, plan: sparse.SparsityPlan) -> float:
  """Kept fraction of all prunable weights, averaged over members (exact counts: equals the plan)."""
  flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_flatten_with_path(state.opt_state.masks)[0]}
  kept = sum(float(flat[k].sum()) for k in plan.sizes) / members_lib.num_members(state.params)
  return kept / sum(plan.sizes.values())
