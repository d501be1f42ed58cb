"""Snapshot ensemble (Huang et al., 2017): one run whose cosine learning rate restarts M times;
the model at the end of each cycle is a snapshot, and the prediction is the mean of the snapshots'
probabilities. Budget: ``training.epochs`` split into M equal cycles;
lr_k(t) = lr · ½(1 + cos(π t / T_cycle)) within each cycle."""
from __future__ import annotations

import jax.numpy as jnp
import optax

from ensembles import trainer
from ensembles.collected import at_segment_ends, segment_ends
from ensembles.context import Run
from ensembles.errors import require
from ensembles.methods.base import Method, Trained, register


def cyclic_cosine(lr: float, total_steps: int, cycles: int) -> optax.Schedule:
  """Cosine from lr to 0 within each of ``cycles`` equal cycles of a ``total_steps`` run."""
  ends = jnp.array(segment_ends(total_steps, cycles))
  starts = jnp.concatenate([jnp.zeros(1, ends.dtype), ends[:-1]])

  def schedule(step):
    k = jnp.minimum(jnp.searchsorted(ends, step, side="right"), cycles - 1)
    t = (step - starts[k]) / (ends[k] - starts[k])
    return lr * 0.5 * (1 + jnp.cos(jnp.pi * t))

  return schedule


def snapshot_phase(run: Run) -> Run:
  """The one network of the run, on M cycles of the cosine schedule."""
  return run.phase(num_members=1, schedule=cyclic_cosine(run.config.training.lr, run.total_steps, run.num_members))


def programs(run: Run, options, plan) -> None:
  plan.one_network(snapshot_phase(run), run.num_members)


def train(run: Run, options) -> list[Trained]:
  m = run.num_members
  run = snapshot_phase(run)
  snapshots = run.collection("members", at_segment_ends(run.total_steps, m))

  def snapshot(state, done, batch):  # a snapshot at the end of every cycle
    snapshots.save(state, snapshots.ends[done], {"step": done})
    run.log.write({"step": done, "event": f"snapshot {snapshots.ends[done]} saved"})
    return state

  state, info = trainer.fit(run, run.init_members(), [trainer.Hook(frozenset(snapshots.ends), snapshot)])
  members, _ = snapshots.load(state)
  return [Trained(r.ensemble(members), info, r.flops(m, info["steps"], trained_members=1))
          for r, members in zip(run.seed_runs(), run.split_seeds(members))]


def check(config, options) -> None:
  require(1 <= config.num_members <= config.training.epochs, "num_members",
          f"in [1, training.epochs={config.training.epochs}] for method 'snapshot_ensemble' (snapshots)",
          config.num_members)


METHOD = register(Method("snapshot_ensemble", train, defaults={"num_members": 3}, check=check, trains_seeds=True,
                         trains_one_network=True, programs=programs))
