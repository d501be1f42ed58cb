"""Checkpoint-boosted networks (CBNN, Wang et al., NeurIPS 2021) -- our documented design.

Known: one run with a single model's budget; training samples reweighted boosting-style between
checkpoints so the loss surface moves and checkpoints are diverse; no cyclical learning rate.

Our design (DESIGN.md §3.5; fields of the ``cbnn`` block, `CBNNOptions`):
  1. the budget (``training.epochs``, the configured lr schedule) is split into M equal segments;
  2. per-example weights w [N_train] (mean 1) live in the train state (``extra.sample_weights``,
     checkpointed, so a resumed run restores them); the loss is the w-weighted cross-entropy;
  3. at each segment's end: a deterministic pass over the training set, the checkpoint's α and new
     weights from `boosting.reweight`, and the checkpoint (params, BatchNorm statistics, α, weights)
     collected;
  4. prediction: α-weighted mean of the checkpoints' probabilities (or a weighted vote).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ensembles import boosting
from ensembles import metrics as metrics_lib
from ensembles import train as train_lib
from ensembles import trainer
from ensembles.collected import at_segment_ends
from ensembles.context import Run
from ensembles.errors import is_number, require
from ensembles.methods.base import Method, Trained, register
from ensembles.options import choice, number, option


@dataclasses.dataclass(frozen=True)
class BoostingRuleOptions:
  """How checkpoints reweight the samples and combine (CBNN, Snapshot Boosting, boosted EDST); every
  default is our decision (the paper's formulas are not available to us)."""

  rule: str = choice("samme", boosting.RULES)      # samme | samme_r (Zhu et al., 2009)
  eps: float = number(1e-3, 0, 0.5, "()")          # weighted error clipped into [eps, 1 - 1/K - eps]
  max_weight_ratio: float = option(2.0, "0 (no cap) or >= 1",  # r: max(w)/mean(w) <= r (2.0 chosen on
                                   lambda v: is_number(v) and (v == 0 or v >= 1))  # validation, README)
  combine: str = choice("mean", metrics_lib.COMBINE_RULES)  # mean (α-weighted probabilities) | vote
  shrinkage: float = number(1.0, 0, 1, "(]")       # ν: w <- w·exp(ν·α·[wrong]) (AdaBoost's learning rate)


@dataclasses.dataclass(frozen=True)
class CBNNOptions(BoostingRuleOptions):
  """The ``cbnn`` block: the boosting rule's fields, and where the checkpoints are taken."""

  segment_decay_fraction: float = number(0.0, 0, 1, "[)")  # ours: lr x segment_decay over the last f of each
  segment_decay: float = number(0.1, 0, 1, "(]")           #   segment, so each checkpoint is taken near its
                                                           #   segment's convergence (0 = off)


def train(run: Run, options) -> list[Trained]:
  return boosted_checkpoints(run, options.cbnn, "cbnn", checkpoint_schedule(run, options.cbnn))


def checkpoint_schedule(run: Run, c: CBNNOptions):
  """The configured lr schedule, or with ``segment_decay_fraction`` f > 0 (ours, not the paper's),
  that schedule times ``segment_decay`` over the last f of each of the M equal segments:
  lr(t) · (segment_decay if t mod L >= (1 − f)·L else 1), L = total steps / M -- each checkpoint
  taken after a short low-lr stretch, without restarting the lr (no cyclic schedule). None: the
  configured schedule unchanged."""
  if c.segment_decay_fraction == 0:
    return None
  total = run.total_steps
  base = train_lib.learning_rate_schedule(run.config.training, total, run.steps_per_epoch)
  length = total / run.num_members
  start_decay = (1.0 - c.segment_decay_fraction) * length

  def schedule(step):
    in_segment = jnp.mod(jnp.asarray(step, jnp.float32), length)
    return base(step) * jnp.where(in_segment >= start_decay, c.segment_decay, 1.0)

  return schedule


def make_boost(run: Run, c: CBNNOptions):
  """``boost(state, done, event, save) -> state``: each network's predictions on the training set
  give its α and new sample weights (`boosting.reweight` with the options ``c``; one network per
  seed of the run, each with its own weights [S, N]); ``save(metas)`` stores the members with
  {"alpha", "train_error"} (one meta per seed); the log gets ``event``; the state returned carries
  the new weights (CBNN's checkpoints, Snapshot Boosting's snapshots, boosted EDST's tickets)."""
  reweight = make_reweight(c)
  labels = jnp.asarray(run.data.y_train)
  per_seed = lambda values: values[0] if run.num_seeds == 1 else values  # the log of one seed: its value

  def boost(state, done: int, event: str, save):
    probs = run.member_probs(state, run.data.x_train)  # [S, N, K]
    weights, alpha, error = reweight(state.extra["sample_weights"], jnp.asarray(probs), labels)
    run.health.boosting(run, done, np.asarray(error), np.asarray(weights))  # a chance-level checkpoint, degenerate weights
    alpha, error = [float(a) for a in alpha], [float(e) for e in error]
    save([{"alpha": a, "train_error": e} for a, e in zip(alpha, error)])
    run.log.write({"step": done, "event": event, "alpha": per_seed(alpha), "weighted_train_error": per_seed(error),
                   "max_weight": per_seed([float(m) for m in jnp.max(weights, axis=1)])})
    return state.replace(extra={"sample_weights": weights})

  return boost


def make_reweight(c: CBNNOptions):
  """The jitted ``reweight(weights [S, N], probs [S, N, K], labels [N]) -> (weights, α [S], error
  [S])``: `boosting.reweight` with the options ``c`` for each seed's network."""
  one = lambda w, p, y: boosting.reweight(w, p, y, c.rule, c.eps, c.max_weight_ratio or None, c.shrinkage)
  return jax.jit(jax.vmap(one, in_axes=(0, 0, None)))


def boosted_phase(run: Run, schedule=None) -> Run:
  """The one network of a boosted run (lr ``schedule``, default the configured one)."""
  return run.phase(num_members=1, schedule=schedule)


def with_sample_weights(run: Run, state):
  """``state`` with sample weights 1 [S, N] for each seed's network (`boosting.reweight` updates them)."""
  return state.replace(extra={"sample_weights": jnp.ones((run.num_seeds, len(run.data.y_train)), jnp.float32)})


def boosted_programs(run: Run, c: CBNNOptions, plan, schedule=None) -> None:
  """Pre-flight (`preflight.Plan`): the boosted network's phase, the reweighting, the M checkpoints."""
  phase = boosted_phase(run, schedule)
  state = plan.one_network(phase, run.num_members, lambda: with_sample_weights(phase, phase.init_members()))
  plan.reweighting(phase, state, make_reweight(c))


def programs(run: Run, options, plan) -> None:
  boosted_programs(run, options.cbnn, plan, checkpoint_schedule(run, options.cbnn))


def boosted_checkpoints(run: Run, c: CBNNOptions, name: str, schedule=None) -> Trained:
  """One network trained on the run's budget (lr ``schedule``, default the configured one) with
  sample weights reweighted at the end of each of the M equal segments, where the checkpoint is
  collected with its α (steps 1-4 above); ``c``: the boosting options, ``name``: the results key."""
  m = run.num_members
  run = boosted_phase(run, schedule)
  n = len(run.data.y_train)
  state = with_sample_weights(run, run.init_members())
  saved = run.collection("members", at_segment_ends(run.total_steps, m),
                         sample_weights=lambda state: state.extra["sample_weights"][0])
  boost_at = make_boost(run, c)

  def boost(state, done, batch):
    """At a segment's end: α and new weights from the training-set predictions; the checkpoint."""
    k = saved.ends[done]
    return boost_at(state, done, f"checkpoint {k} saved",
                    lambda metas: saved.save(state, k, [{**meta, "step": done} for meta in metas]))

  state, info = trainer.fit(run, state, [trainer.Hook(frozenset(saved.ends), boost)])
  members, metas = saved.load(state)
  trained = []
  for r, members, metas in zip(run.seed_runs(), run.split_seeds(members), run.split_seeds(metas)):
    alphas = [meta["alpha"] for meta in metas]
    flops = r.flops(m, info["steps"], trained_members=1, extra_passes=m * n)  # + M training-set passes
    w = np.asarray(members["sample_weights"])
    results = {name: {"alphas": alphas, "train_errors": [meta["train_error"] for meta in metas],
                      "weight_max_over_mean": (w.max(1) / w.mean(1)).tolist()}}
    trained.append(Trained(r.ensemble(members, alphas, c.combine), info, flops, results=results))
  return trained


def check(config, options) -> None:
  require(1 <= config.num_members <= config.training.epochs, "num_members",
          f"in [1, training.epochs={config.training.epochs}] for method 'cbnn' (checkpoints)", config.num_members)


METHOD = register(Method("cbnn", train, {"cbnn": CBNNOptions}, defaults={"num_members": 3}, check=check,
                         takes_member_networks=False, trains_seeds=True,
                         trains_one_network=True, programs=programs))  # α from one prediction per network
