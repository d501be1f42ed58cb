"""Snapshot ensemble (Huang et al., 2017): one run whose cosine learning rate restarts M times;
the model at the end of each cycle is a snapshot (saved with Orbax in ``workdir/members``), and the
prediction is the mean of the snapshots' probabilities. Budget: ``training.epochs`` split into M
equal cycles; lr_k(t) = lr · ½(1 + cos(π t / T_cycle)) within each cycle."""
from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import optax

from ensembles import checkpoints
from ensembles import members as members_lib
from ensembles import train as train_lib
from ensembles import trainer
from ensembles.config import ConfigError
from ensembles.methods import cbnn, common


def validate(config: Any) -> None:
  if not 1 <= config.num_members <= config.training.epochs:
    raise ConfigError(f"config.num_members (snapshots) must be in [1, training.epochs={config.training.epochs}] "
                      f"for method 'snapshot_ensemble', got {config.num_members}.")


def cyclic_cosine(lr: float, total_steps: int, cycles: int) -> optax.Schedule:
  """Cosine from lr to 0 within each of ``cycles`` equal cycles of a ``total_steps`` run."""
  ends = jnp.array(cbnn.segment_ends(total_steps, cycles))
  starts = jnp.concatenate([jnp.zeros(1, ends.dtype), ends[:-1]])

  def schedule(step):
    k = jnp.minimum(jnp.searchsorted(ends, step, side="right"), cycles - 1)
    t = (step - starts[k]) / (ends[k] - starts[k])
    return lr * 0.5 * (1 + jnp.cos(jnp.pi * t))

  return schedule


def train_and_evaluate(config: Any, workdir: str) -> dict:
  m = config.num_members
  schedule = lambda total, spe: cyclic_cosine(config.training.lr, total, m)
  run = common.build_run(config, workdir, num_members=1, schedule=schedule)
  state = common.init_members(run, 1)
  total_steps = config.training.epochs * (len(run.data.y_train) // config.training.batch_size)
  ends = {step: k for k, step in enumerate(cbnn.segment_ends(total_steps, m))}
  members_dir = os.path.join(workdir, "members")

  def snapshot_hook(state, done, images, labels, idx):
    if done in ends:
      snapshot = {"params": members_lib.member(state.params, 0), "model_state": members_lib.member(state.model_state, 0)}
      checkpoints.save_member(members_dir, ends[done], snapshot, {"step": done})
      run.log.write({"step": done, "event": f"snapshot {ends[done]} saved"})
    return state

  state, info = trainer.fit(state, run.train_step, run.predict, run.data, config, workdir,
                            data_keys=run.data_keys, mesh=run.mesh, log=run.log, desc=config.method, hooks=[snapshot_hook])
  like = {"params": members_lib.member(state.params, 0), "model_state": members_lib.member(state.model_state, 0)}
  members, _ = checkpoints.load_members(members_dir, like)
  ensemble = common.collected_ensemble(run, members)
  flops = common.flops_summary(run, m, info["steps"], trained_members=1)
  return common.results(run, ensemble, info, common.evaluate(run, ensemble), flops)
