"""Snapshot ensemble (Huang et al., 2017): one run whose cosine learning rate restarts M times;
the model at the end of each cycle is a snapshot (saved with Orbax in ``workdir/members``), and the
prediction is the mean of the snapshots' probabilities. Budget: ``training.epochs`` split into M
equal cycles; lr_k(t) = lr · ½(1 + cos(π t / T_cycle)) within each cycle."""
from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import optax

from ensembles import trainer
from ensembles.errors import ConfigError
from ensembles.methods import collected, common


def validate(config: Any) -> None:
  if not 1 <= config.num_members <= config.training.epochs:
    raise ConfigError(f"config.num_members (snapshots) must be in [1, training.epochs={config.training.epochs}] "
                      f"for method 'snapshot_ensemble', got {config.num_members}.")


def cyclic_cosine(lr: float, total_steps: int, cycles: int) -> optax.Schedule:
  """Cosine from lr to 0 within each of ``cycles`` equal cycles of a ``total_steps`` run."""
  ends = jnp.array(collected.segment_ends(total_steps, cycles))
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
  snapshots = collected.Collection.at_segment_ends(os.path.join(workdir, "members"), total_steps, m)

  def snapshot_hook(state, done, images, labels, idx):
    if done in snapshots.ends:
      snapshots.save(state, snapshots.ends[done], {"step": done})
      run.log.write({"step": done, "event": f"snapshot {snapshots.ends[done]} saved"})
    return state

  state, info = trainer.fit(state, run.train_step, run.predict, run.data, config, workdir,
                            data_keys=run.data_keys, mesh=run.mesh, log=run.log, desc=config.method, hooks=[snapshot_hook])
  members, _ = snapshots.load(state)
  ensemble = common.collected_ensemble(run, members)
  flops = common.flops_summary(run, m, info["steps"], trained_members=1)
  return common.results(run, ensemble, info, common.evaluate(run, ensemble), flops)
