"""Deep ensemble (Lakshminarayanan et al., 2017): M dense members with independent initialisation,
augmentation and data order, trained together in one compiled step; prediction is the mean of the
members' probabilities."""
from __future__ import annotations

from typing import Any

from ensembles import trainer
from ensembles.methods import common


def validate(config: Any) -> None:
  del config  # the common checks cover everything this recipe uses


def train_and_evaluate(config: Any, workdir: str) -> dict:
  run = common.build_run(config, workdir)
  state = common.init_members(run, config.num_members)
  state, info = trainer.fit(state, run.train_step, run.predict, run.data, config, workdir,
                            data_keys=run.data_keys, mesh=run.mesh, log=run.log, desc=config.method)
  return common.results(run, state, info, common.evaluate(run, state))
