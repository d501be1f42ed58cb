"""BatchEnsemble (Wen, Tran & Ba, ICLR 2020): M members that share one network's weights and own
rank-1 fast weights per dense and conv layer, trained and run in one forward pass over the batch
repeated M times (`ensembles.models.batch_ensemble`).

The recipe trains the wrapped network as one model with the configured optimizer and schedule; its
loss is the mean over the M members' cross-entropies on the same batch (every member sees every
example). Cost (FLOPs): each step and each prediction runs the M members' layers on the repeated
batch, M times one network's dense and conv FLOPs (the rank-1 scalings, O(C) per layer and example,
are not counted). Fields of the ``batch_ensemble`` block (`BatchEnsembleOptions`).
"""
from __future__ import annotations

import dataclasses

import jax

from ensembles.context import Run
from ensembles.methods.base import Method, Trained, register
from ensembles.methods.member_network import programs, train_member_network
from ensembles.models import batch_ensemble
from ensembles.options import choice, number


@dataclasses.dataclass(frozen=True)
class BatchEnsembleOptions:
  """The ``batch_ensemble`` block (ours: see `ensembles.models.batch_ensemble`)."""

  fast_init: str = choice("normal", batch_ensemble.FAST_INITS)  # N(1, σ²) | ±1 (p = ½ each) | ones
  fast_init_std: float = number(0.5, 0.0, float("inf"), "()")   # σ of the normal start


def network(model, config, options) -> batch_ensemble.BatchEnsemble:
  o = options.batch_ensemble
  return batch_ensemble.BatchEnsemble(model, config.num_members, o.fast_init, o.fast_init_std)


def train(run: Run, options) -> list[Trained]:
  m = run.num_members

  def report(run, members, info):
    fast = batch_ensemble.fast_weight_count(members["params"])
    total = sum(int(v.size) for v in jax.tree.leaves(members["params"]))
    return run.flops(m, info["steps"]), {"batch_ensemble": {"fast_weights": fast, "shared_weights": total - fast}}

  return train_member_network(run, report)


METHOD = register(Method("batch_ensemble", train, {"batch_ensemble": BatchEnsembleOptions},
                         defaults={"num_members": 4}, network=network, trains_seeds=True,
                         trains_one_network=True, programs=programs))
