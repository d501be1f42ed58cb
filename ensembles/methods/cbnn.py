"""Checkpoint-boosted networks (CBNN, Wang et al., NeurIPS 2021) -- our documented design.

Known: one run with a single model's budget; training samples reweighted boosting-style between
checkpoints so the loss surface moves and checkpoints are diverse; no cyclical learning rate.
Our design (DESIGN.md §3.5; fields of the config's ``cbnn`` block):
  1. the budget (``training.epochs``, the configured lr schedule) is split into M equal segments;
  2. per-example weights w [N_train] (mean 1) live in the train state (``extra.sample_weights``,
     checkpointed, so a resumed run restores them); the loss is the w-weighted cross-entropy;
  3. at each segment's end: a deterministic pass over the training set, the checkpoint's α and new
     weights from `boosting.reweight` (``cbnn.rule`` samme | samme_r, ``cbnn.eps``,
     ``cbnn.max_weight_ratio``), and the checkpoint (params, BatchNorm statistics, α, weights)
     saved with Orbax in ``workdir/members``;
  4. prediction: α-weighted mean of the checkpoints' probabilities (``cbnn.combine = vote`` for a
     weighted vote).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ensembles import boosting
from ensembles import metrics as metrics_lib
from ensembles import train as train_lib
from ensembles import trainer
from ensembles.errors import ConfigError, is_number
from ensembles.methods import collected, common


def validate(config: Any) -> None:
  if "cbnn" not in config:
    raise ConfigError("method 'cbnn' needs a config.cbnn block; start from experiments/configs/cbnn.py.")
  c = config.cbnn
  if not 1 <= config.num_members <= config.training.epochs:
    raise ConfigError(f"config.num_members (checkpoints) must be in [1, training.epochs={config.training.epochs}] "
                      f"for method 'cbnn', got {config.num_members}.")
  if c.rule not in boosting.RULES:
    raise ConfigError(f"config.cbnn.rule must be one of {boosting.RULES}, got {c.rule!r}.")
  if c.combine not in metrics_lib.COMBINE_RULES:
    raise ConfigError(f"config.cbnn.combine must be one of {metrics_lib.COMBINE_RULES}, got {c.combine!r}.")
  if not (is_number(c.eps) and 0 < c.eps < 0.5):
    raise ConfigError(f"config.cbnn.eps must be in (0, 0.5), got {c.eps!r}.")
  if not (is_number(c.max_weight_ratio) and (c.max_weight_ratio == 0 or c.max_weight_ratio >= 1)):
    raise ConfigError(f"config.cbnn.max_weight_ratio must be 0 (no cap) or >= 1, got {c.max_weight_ratio!r}.")


def train_and_evaluate(config: Any, workdir: str) -> dict:
  c, m = config.cbnn, config.num_members
  run = common.build_run(config, workdir, num_members=1)
  n = len(run.data.y_train)
  state = common.init_members(run, 1)
  state = state.replace(extra={"sample_weights": jnp.ones((1, n), jnp.float32)})
  total_steps = config.training.epochs * (n // config.training.batch_size)
  saved = collected.Collection.at_segment_ends(os.path.join(workdir, "members"), total_steps, m,
                                              sample_weights=lambda state: state.extra["sample_weights"][0])
  reweight = jax.jit(lambda w, p, y: boosting.reweight(w, p, y, c.rule, c.eps, c.max_weight_ratio or None))
  labels = jnp.asarray(run.data.y_train)

  def boosting_hook(state, done, images, labels_dev, idx):
    if done not in saved.ends:
      return state
    probs = train_lib.predict_probs(run.predict, state, run.data.x_train, config.eval_batch_size)[0]
    weights, alpha, error = reweight(state.extra["sample_weights"][0], jnp.asarray(probs), labels)
    k = saved.ends[done]
    saved.save(state, k, {"alpha": float(alpha), "train_error": float(error), "step": done})
    run.log.write({"step": done, "event": f"checkpoint {k} saved", "alpha": float(alpha),
                   "weighted_train_error": float(error), "max_weight": float(jnp.max(weights))})
    return state.replace(extra={"sample_weights": weights[None]})

  state, info = trainer.fit(state, run.train_step, run.predict, run.data, config, workdir,
                            data_keys=run.data_keys, mesh=run.mesh, log=run.log, desc=config.method, hooks=[boosting_hook])
  members, metas = saved.load(state)
  alphas = [meta["alpha"] for meta in metas]
  ensemble = common.collected_ensemble(run, members)
  flops = common.flops_summary(run, m, info["steps"], trained_members=1, extra_passes=m * n)  # M training-set passes
  out = common.results(run, ensemble, info, common.evaluate(run, ensemble, alphas, c.combine), flops)
  w = np.asarray(members["sample_weights"])
  out["cbnn"] = {"alphas": alphas, "train_errors": [meta["train_error"] for meta in metas],
                 "weight_max_over_mean": (w.max(1) / w.mean(1)).tolist()}
  return out
