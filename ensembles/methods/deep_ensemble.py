"""Deep ensemble (Lakshminarayanan et al., 2017): M dense members with independent initialisation,
augmentation and data order, trained together in one compiled step; prediction is the mean of the
members' probabilities."""
from __future__ import annotations

from ensembles import trainer
from ensembles.context import Run, stacked_members
from ensembles.methods.base import Method, Trained, register


def train(run: Run, options) -> list[Trained]:
  state, info = trainer.fit(run, run.init_members())
  return [Trained(r.ensemble(members), info) for r, members in zip(run.seed_runs(), run.split_seeds(stacked_members(state)))]


METHOD = register(Method("deep_ensemble", train, defaults={"num_members": 4}, trains_seeds=True))
