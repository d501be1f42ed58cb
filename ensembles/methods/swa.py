"""Stochastic weight averaging (SWA, Izmailov et al., UAI 2018): each member's weights averaged
over the last part of its run, at a high constant learning rate, with BatchNorm statistics
recomputed for the averaged weights.

Within one budget of T steps (``training.epochs``; fields of the ``swa`` block, `SWAOptions`), for
each of the M members (M = 1: one SWA model; M > 1: SWA of every deep-ensemble member):
  1. lr(i), i = step / T, the paper's schedule with α1 = training.lr and α2 = lr_factor · α1:
       α1 for i <= 0.5;  α1 (1 - (1 - r)(i - 0.5) / 0.4) for 0.5 < i <= 0.9 (r = α2 / α1);  α2 after;
  2. from step S = round(start_fraction · T) on, at every epoch's end (and at T), the member's
     weights enter its running average w_swa = w_swa + (w - w_swa) / (n + 1)
     (`weight_averaging.running_average`; carried in the train state, so a resumed run is exact);
  3. after training, BatchNorm statistics of w_swa from one pass over the training set in training
     mode (`weight_averaging.recompute_batch_stats`);
  4. prediction: the members' averaged weights, combined as a deep ensemble (mean probabilities).

The paper's: the schedule's shape, averaging once per epoch, the BatchNorm pass. The ratio
α2 / α1 = 0.5 is the one we read for its PreResNet-164 runs on CIFAR-100 (0.2 for VGG-16). Ours:
averaging within one budget, from start_fraction = 0.75 of it (the paper also reports longer
budgets, 1.25 and 1.5 times the SGD budget).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ensembles import trainer
from ensembles import weight_averaging
from ensembles.context import Run
from ensembles.methods.base import Method, Trained, register
from ensembles.options import number


@dataclasses.dataclass(frozen=True)
class SWAOptions:
  """The ``swa`` block (the schedule's shape is the paper's; both values are ours)."""

  start_fraction: float = number(0.75, 0.0, 1.0, "[)")  # S / T: the first step whose weights are averaged
  lr_factor: float = number(0.5, 0.0, 1.0, "(]")        # α2 / training.lr: the constant SWA learning rate


def swa_schedule(lr: float, lr_factor: float, total_steps: int):
  """The paper's lr(step): α1 to 50% of the budget, linear to α2 = lr_factor · α1 at 90%, then α2."""

  def schedule(step):
    i = step / total_steps
    decay = lr * (1.0 - (1.0 - lr_factor) * (i - 0.5) / 0.4)
    return jnp.where(i <= 0.5, lr, jnp.where(i <= 0.9, decay, lr * lr_factor))

  return schedule


def averaging_steps(total_steps: int, steps_per_epoch: int, start_fraction: float) -> list[int]:
  """Steps after which the weights enter the average: epoch ends from round(start_fraction · T)
  on, and T (at least one)."""
  start = int(round(start_fraction * total_steps))
  ends = [s for s in range(steps_per_epoch, total_steps + 1, steps_per_epoch) if s >= start]
  return sorted(set(ends) | {total_steps})


def swa_phase(run: Run, o: SWAOptions) -> Run:
  """The run on SWA's learning-rate schedule."""
  return run.phase(schedule=swa_schedule(run.config.training.lr, o.lr_factor, run.total_steps))


def with_average(run: Run, state):
  """``state`` with an empty running average of its members' weights."""
  return state.replace(extra={"swa_params": jax.tree.map(jnp.zeros_like, state.params),
                              "swa_count": jnp.zeros((run.total_members,), jnp.int32)})


def batch_moments(run: Run):
  """The jitted BatchNorm moments of a batch (`weight_averaging.make_batch_moments`) on the run."""
  return weight_averaging.make_batch_moments(run.model, execution=run.execution, mean=run.data.mean,
                                             std=run.data.std, compute_dtype=run.compute_dtype)


def programs(run: Run, options, plan) -> None:
  """Pre-flight (`preflight.Plan`): training, the running average, the BatchNorm pass, evaluation."""
  run = swa_phase(run, options.swa)
  state = plan.one_network(run, run.num_members, lambda: with_average(run, run.init_members()))
  count = state.extra["swa_count"]
  plan.add("weight averaging", jax.jit(weight_averaging.running_average), (state.params, state.params, count), run.mesh)
  if "batch_stats" in state.model_state:
    plan.prediction(run, state, "BatchNorm statistics pass", batch_moments(run), run.mesh, passes=2)


def train(run: Run, options) -> list[Trained]:
  o = options.swa
  run = swa_phase(run, o)
  steps = averaging_steps(run.total_steps, run.steps_per_epoch, o.start_fraction)
  average = jax.jit(weight_averaging.running_average)

  def accumulate(state, done, batch):
    params, count = average(state.extra["swa_params"], state.params, state.extra["swa_count"])
    run.log.write({"step": done, "event": f"weights averaged ({int(count[0])})"})
    return state.replace(extra={"swa_params": params, "swa_count": count})

  state = with_average(run, run.init_members())
  state, info = trainer.fit(run, state, [trainer.Hook(frozenset(steps), accumulate)])
  params = state.extra["swa_params"]
  moments = batch_moments(run)
  model_state = weight_averaging.recompute_batch_stats(moments, params, state.model_state, run.data.x_train,
                                                       run.config.eval_batch_size)
  batch = run.config.eval_batch_size  # the BatchNorm pass: 2 forward passes per image of its full batches
  passes = 2 * (len(run.data.x_train) // batch) * batch if "batch_stats" in state.model_state else 0
  results = {"swa": {"averaged_steps": steps}}
  return [Trained(r.ensemble(members), info, r.flops(run.num_members, info["steps"], extra_passes=run.num_members * passes),
                  results=results)
          for r, members in zip(run.seed_runs(), run.split_seeds({"params": params, "model_state": model_state}))]


METHOD = register(Method("swa", train, {"swa": SWAOptions}, defaults={"num_members": 1},
                         takes_member_networks=False, trains_seeds=True,
                         programs=programs))  # its BatchNorm pass feeds plain batches
