"""The recipe shared by methods whose one network holds the M members (BatchEnsemble, MIMO, TreeNet:
`ensembles.models.multi_member`): train it as one model with the configured optimizer and schedule,
then report its M members."""
from __future__ import annotations

from typing import Callable

from ensembles import trainer
from ensembles.context import Run, stacked_members
from ensembles.methods.base import Trained


def programs(run: Run, options, plan) -> None:
  """Pre-flight: the network that holds the M members, trained and evaluated as one network."""
  plan.one_network(run.phase(num_members=1), 1)


def train_member_network(run: Run, report: Callable) -> list[Trained]:
  """Trains ``run.model`` (a network of run.num_members members; one per seed of the run) as one
  model; ``report(run, members, info) -> (flops, results)`` gives the method's cost and its results
  entries for one seed's network (members: {"params", "model_state"} [1, ...])."""
  m = run.num_members
  run = run.phase(num_members=1)
  state, info = trainer.fit(run, run.init_members())
  trained = []
  for r, members in zip(run.seed_runs(), run.split_seeds(stacked_members(state))):
    flops, results = report(r, members, info)
    trained.append(Trained(r.ensemble(members), info, flops, results=results, num_members=m))
  return trained
