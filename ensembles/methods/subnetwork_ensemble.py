"""Subnetwork ensemble (Ex uno plures, Zhang, Gao & Sabuncu, 2021) -- our documented recipe.

Known: M subnetworks with non-overlapping masks found by pruning one parent, trained independently.
Our decisions (DESIGN.md §3.4), each a field of the config's ``subnetwork`` block:
  1. parent: one dense member trained for ``parent_fraction`` of ``training.epochs`` (its own lr
     schedule over those epochs), in ``workdir/parent``;
  2. partition: `subnetworks.partition_masks` (round-robin by score, ``granularity`` weight or unit,
     ``share_input_output``);
  3. children: start from the parent's weights (and BatchNorm statistics) under their masks and
     train for the remaining epochs with their own optimizer state, data order and augmentation, all
     M in one compiled step with `sparse.masked` keeping masked weights at zero (``workdir/children``);
  4. prediction: mean of the children's probabilities.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from ensembles import flops as flops_lib
from ensembles import members as members_lib
from ensembles import sparse
from ensembles import subnetworks
from ensembles import train as train_lib
from ensembles import trainer
from ensembles.errors import ConfigError, is_number
from ensembles.methods import common


def validate(config: Any) -> None:
  if "subnetwork" not in config:
    raise ConfigError("method 'subnetwork_ensemble' needs a config.subnetwork block; start from "
                      "experiments/configs/subnetwork_ensemble.py.")
  s = config.subnetwork
  if not (is_number(s.parent_fraction) and 0.0 < s.parent_fraction < 1.0):
    raise ConfigError(f"config.subnetwork.parent_fraction must be in (0, 1), got {s.parent_fraction!r}.")
  if s.granularity not in subnetworks.GRANULARITIES:
    raise ConfigError(f"config.subnetwork.granularity must be one of {subnetworks.GRANULARITIES}, "
                      f"got {s.granularity!r}.")
  if s.score not in subnetworks.SCORES:
    raise ConfigError(f"config.subnetwork.score must be one of {subnetworks.SCORES}, got {s.score!r}.")
  if not isinstance(s.share_input_output, bool):
    raise ConfigError(f"config.subnetwork.share_input_output must be True or False, got {s.share_input_output!r}.")
  parent, children = split_epochs(config)
  if parent < 1 or children < 1:
    raise ConfigError(f"config.subnetwork.parent_fraction={s.parent_fraction} of training.epochs="
                      f"{config.training.epochs} leaves {parent} parent and {children} child epochs; both must be >= 1.")


def split_epochs(config: Any) -> tuple[int, int]:
  """(parent epochs, children epochs) of the ``training.epochs`` budget."""
  parent = int(round(config.subnetwork.parent_fraction * config.training.epochs))
  return parent, config.training.epochs - parent


def _phase_config(config: Any, epochs: int) -> Any:
  c = config.copy_and_resolve_references()
  c.training.epochs = epochs
  return c


def child_densities(run: common.Run, children: train_lib.TrainState, masks: Any,
                    layer_order: list[str]) -> dict[str, float]:
  """Per conv/dense layer, the fraction of its multiply-accumulates the children really do, averaged
  over children (`flops.live_input_densities`): their masks, and for unit granularity also the
  weights reading units another child owns (zero inputs)."""
  per_child = []
  for i in range(members_lib.num_members(children.params)):
    variables = {"params": members_lib.member(children.params, i), **members_lib.member(children.model_state, i)}
    per_child.append(flops_lib.live_input_densities(run.model, variables, run.data.image_shape,
                                                    members_lib.member(masks, i)))
  return {k: sum(d[k] for d in per_child) / len(per_child) for k in layer_order}


def train_and_evaluate(config: Any, workdir: str) -> dict:
  s, m = config.subnetwork, config.num_members
  parent_epochs, child_epochs = split_epochs(config)

  parent_cfg = _phase_config(config, parent_epochs)
  parent_dir = os.path.join(workdir, "parent")
  run_p = common.build_run(parent_cfg, parent_dir, num_members=1)
  state = common.init_members(run_p, 1)
  layer_order = [c.path for c in flops_lib.layer_costs(run_p.model, run_p.data.image_shape)]
  # fail before training the parent if the model cannot be split (e.g. fewer units than children)
  subnetworks.partition_masks(members_lib.member(state.params, 0), m, s.granularity, s.share_input_output,
                              layer_order=layer_order)
  state, info_p = trainer.fit(state, run_p.train_step, run_p.predict, run_p.data, parent_cfg, parent_dir,
                              data_keys=run_p.data_keys, mesh=run_p.mesh, log=run_p.log, desc="parent")
  parent_params = members_lib.member(state.params, 0)
  parent_model_state = members_lib.member(state.model_state, 0)
  masks = subnetworks.partition_masks(parent_params, m, s.granularity, s.share_input_output, s.score,
                                      jax.random.fold_in(run_p.init_key, 2), layer_order)
  if s.granularity == "unit":  # removed units output exactly zero, also through BatchNorm
    masks = subnetworks.silence_removed_units(run_p.model, {"params": parent_params, **parent_model_state},
                                              masks, run_p.data.image_shape)

  child_cfg = _phase_config(config, child_epochs)
  child_dir = os.path.join(workdir, "children")
  run = common.build_run(child_cfg, child_dir, sparse_training=True, key_salt=1)  # not the parent's streams
  children = common.init_members(run, m)
  params = jax.tree.map(lambda p, k: jnp.where(k, p[None], 0.0), parent_params, masks)
  opt_state = jax.vmap(lambda p, k: sparse.SparseState(k, run.inner_tx.init(p)))(params, masks)
  children = children.replace(params=params, opt_state=opt_state,
                              model_state=jax.tree.map(lambda x: jnp.stack([x] * m), parent_model_state))
  children, info_c = trainer.fit(children, run.train_step, run.predict, run.data, child_cfg, child_dir,
                                 data_keys=run.data_keys, mesh=run.mesh, log=run.log, desc="children")

  masks = children.opt_state.masks  # the arrays passed in were donated to the train step
  densities = child_densities(run, children, masks, layer_order)
  parent_flops = common.flops_summary(run_p, 1, info_p["steps"], reference_epochs=config.training.epochs)
  child_flops = common.flops_summary(run, m, info_c["steps"], densities, "static",
                                     reference_epochs=config.training.epochs)
  flops = {**child_flops, "flops_rule": "dense parent + static children",
           "train_flops": parent_flops["train_flops"] + child_flops["train_flops"],
           "train_x_dense": parent_flops["train_x_dense"] + child_flops["train_x_dense"]}
  info = {"train_time_s": info_p["train_time_s"] + info_c["train_time_s"], "steps": info_p["steps"] + info_c["steps"]}
  out = common.results(run, children, info, common.evaluate(run, children), flops, masks=masks)
  out["subnetwork"] = {"parent_epochs": parent_epochs, "child_epochs": child_epochs,
                       "child_shares": subnetworks.child_shares(masks, parent_params, s.share_input_output,
                                                                layer_order).tolist()}
  return out
