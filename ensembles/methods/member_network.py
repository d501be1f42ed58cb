"""The recipe shared by methods whose one network holds the M members (BatchEnsemble, MIMO, TreeNet:
`ensembles.models.multi_member`): train it as one model with the configured optimizer and schedule,
then report its M members."""
from __future__ import annotations

from typing import Callable

from ensembles import trainer
from ensembles.context import Run, stacked_members
from ensembles.methods.base import Trained


def train_member_network(run: Run, report: Callable) -> Trained:
  """Trains ``run.model`` (a network of run.num_members members) as one model; ``report(run, state,
  info) -> (flops, results)`` gives the method's cost and its results entries."""
  m = run.num_members
  run = run.phase(num_members=1)
  state, info = trainer.fit(run, run.init_members())
  flops, results = report(run, state, info)
  return Trained(run.ensemble(stacked_members(state)), info, flops, results=results, num_members=m)
