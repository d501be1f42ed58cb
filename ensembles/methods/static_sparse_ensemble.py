"""Static sparse ensemble: M members with fixed random ERK masks (the DST recipe without topology
updates); the baseline that shows what prune-and-grow adds."""
from __future__ import annotations

from ensembles.context import Run
from ensembles.methods import dst_ensemble
from ensembles.methods.base import Method, Trained, register
from ensembles.methods.sparse_common import SparseOptions


def train(run: Run, options) -> list[Trained]:
  return dst_ensemble.train(run, options, topology_updates=False)


def programs(run: Run, options, plan) -> None:
  dst_ensemble.programs(run, options, plan, topology_updates=False)


METHOD = register(Method("static_sparse_ensemble", train, {"sparse": SparseOptions}, defaults={"num_members": 3},
                         trains_seeds=True, programs=programs))
