"""Fast geometric ensembling (FGE, Garipov et al., NeurIPS 2018): one run, first trained as usual,
then a short cyclical learning rate whose minima are M snapshots close to each other in weight space.

Within one single model's budget (``training.epochs``, T steps; fields of the ``fge`` block,
`FGEOptions`):
  1. pre-training: the first P = round(pretrain_fraction · T) steps follow the configured schedule
     (``training.lr_schedule`` compressed into P steps);
  2. M triangular cycles of c = (T - P) / (M - ½) steps; within a cycle, at t = (step - start) / c,
       lr(t) = (1 - 2t) α1 + 2t α2           for t <= ½   (α1 -> α2)
       lr(t) = (2 - 2t) α2 + (2t - 1) α1     for t > ½    (α2 -> α1)
     with α1 = lr_max_factor · training.lr and α2 = lr_min_factor · training.lr;
  3. the snapshot k is the model at the middle of cycle k (lr = α2); the run ends at the last
     snapshot, so no half cycle is trained for nothing;
  4. prediction: the mean of the snapshots' probabilities.

The paper's: the triangular schedule and snapshots at its minima. Our defaults take α1 = 1e-2 and
α2 = 5e-4 at base lr 0.05 (0.2 and 0.01 of it), the values we read in the paper for VGG-16 on CIFAR
(check them against the paper before quoting). Ours: the paper starts the cycles from a
pre-trained network; we fit pre-training and cycles into one budget, with pretrain_fraction = 0.8
our choice.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

from ensembles import train as train_lib
from ensembles import trainer
from ensembles.context import Run
from ensembles.errors import require
from ensembles.methods.base import Method, Trained, register
from ensembles.options import number


@dataclasses.dataclass(frozen=True)
class FGEOptions:
  """The ``fge`` block (defaults: the paper's ratios for VGG-16; the pre-training share is ours)."""

  pretrain_fraction: float = number(0.8, 0.0, 1.0, "()")  # P / T: steps before the cycles
  lr_max_factor: float = number(0.2, 0.0, 10.0, "(]")     # α1 / training.lr (a cycle's start and end)
  lr_min_factor: float = number(0.01, 0.0, 10.0, "(]")    # α2 / training.lr (a cycle's middle: snapshots)

  def check(self):
    require(self.lr_min_factor <= self.lr_max_factor, "fge.lr_min_factor",
            f"<= fge.lr_max_factor ({self.lr_max_factor})", self.lr_min_factor)


def cycle_layout(total_steps: int, cycles: int, pretrain_fraction: float) -> tuple[int, float, list[int]]:
  """(P pre-training steps, c steps per cycle, snapshot steps [M]): the snapshot of cycle k at
  step round(P + (k + ½) c), the last at ``total_steps``."""
  pretrain = int(round(pretrain_fraction * total_steps))
  length = (total_steps - pretrain) / (cycles - 0.5)
  return pretrain, length, [int(round(pretrain + (k + 0.5) * length)) for k in range(cycles)]


def fge_schedule(pretrain_schedule: optax.Schedule, pretrain: int, length: float, lr_max: float,
                 lr_min: float) -> optax.Schedule:
  """``pretrain_schedule`` for the first ``pretrain`` steps, then the triangular cycles of
  ``length`` steps from ``lr_max`` down to ``lr_min`` and back."""

  def schedule(step):
    t = jnp.mod(step - pretrain, length) / length
    cyclic = jnp.where(t <= 0.5, (1 - 2 * t) * lr_max + 2 * t * lr_min, (2 - 2 * t) * lr_min + (2 * t - 1) * lr_max)
    return jnp.where(step < pretrain, pretrain_schedule(step), cyclic)

  return schedule


def fge_phase(run: Run, o: FGEOptions) -> Run:
  """The one network of the run, on the pre-training schedule and then the triangular cycles."""
  m, t = run.num_members, run.config.training
  pretrain, length, _ = cycle_layout(run.total_steps, m, o.pretrain_fraction)
  require(length >= 2, "fge.pretrain_fraction", f"small enough that each of the M = {m} cycles gets 2 or more "
          f"of the {run.total_steps - pretrain} steps after pre-training", o.pretrain_fraction)
  base = train_lib.learning_rate_schedule(t, pretrain, run.steps_per_epoch)
  return run.phase(num_members=1, schedule=fge_schedule(base, pretrain, length, o.lr_max_factor * t.lr,
                                                         o.lr_min_factor * t.lr))


def programs(run: Run, options, plan) -> None:
  plan.one_network(fge_phase(run, options.fge), run.num_members)


def train(run: Run, options) -> list[Trained]:
  o, m = options.fge, run.num_members
  pretrain, length, snapshot_steps = cycle_layout(run.total_steps, m, o.pretrain_fraction)
  run = fge_phase(run, o)
  snapshots = run.collection("members", {step: k for k, step in enumerate(snapshot_steps)})

  def snapshot(state, done, batch):  # at a cycle's middle, where lr = α2
    snapshots.save(state, snapshots.ends[done], {"step": done})
    run.log.write({"step": done, "event": f"snapshot {snapshots.ends[done]} saved"})
    return state

  state, info = trainer.fit(run, run.init_members(), [trainer.Hook(frozenset(snapshots.ends), snapshot)])
  members, _ = snapshots.load(state)
  results = {"fge": {"pretrain_steps": pretrain, "cycle_steps": length, "snapshot_steps": snapshot_steps}}
  return [Trained(r.ensemble(members), info, r.flops(m, info["steps"], trained_members=1), results=results)
          for r, members in zip(run.seed_runs(), run.split_seeds(members))]


METHOD = register(Method("fge", train, {"fge": FGEOptions}, defaults={"num_members": 3}, trains_seeds=True,
                         trains_one_network=True, programs=programs))
