"""MC dropout (Gal & Ghahramani, 2016): one network trained with dropout; at test time T stochastic
passes (dropout on, vmapped over pass keys) are the ensemble's members and their mean probability
is the prediction. Training is the single model's recipe; ``mc_dropout.num_passes`` = T."""
from __future__ import annotations

from typing import Any

import jax

from ensembles import train as train_lib
from ensembles import trainer
from ensembles.errors import ConfigError
from ensembles.methods import common


def validate(config: Any) -> None:
  if config.num_members != 1:
    raise ConfigError(f"config.num_members must be 1 for method 'mc_dropout' (the members are the "
                      f"mc_dropout.num_passes test-time passes), got {config.num_members}.")
  if "mc_dropout" not in config:
    raise ConfigError("method 'mc_dropout' needs a config.mc_dropout block; start from experiments/configs/mc_dropout.py.")
  if not (isinstance(config.mc_dropout.num_passes, int) and config.mc_dropout.num_passes >= 2):
    raise ConfigError(f"config.mc_dropout.num_passes must be an integer >= 2, got {config.mc_dropout.num_passes!r}.")
  if not config.model.get("dropout_rate", 0.0) > 0:
    raise ConfigError(f"config.model.dropout_rate must be > 0 for method 'mc_dropout', got "
                      f"{config.model.get('dropout_rate', 0.0)!r}.")


def predictor(run: common.Run):
  """The evaluation predictor: T = mc_dropout.num_passes dropout passes of the trained network
  (also used by `experiments.evaluate` on a saved run)."""
  return train_lib.make_mc_predict(run.model, num_passes=run.config.mc_dropout.num_passes,
                                   key=jax.random.fold_in(run.init_key, 3), execution=run.execution,
                                   mean=run.data.mean, std=run.data.std)


def train_and_evaluate(config: Any, workdir: str) -> dict:
  run = common.build_run(config, workdir)
  state = common.init_members(run, 1)
  state, info = trainer.fit(state, run.train_step, run.predict, run.data, config, workdir,
                            data_keys=run.data_keys, mesh=run.mesh, log=run.log, desc=config.method)
  t = config.mc_dropout.num_passes
  run.predict = predictor(run)
  flops = common.flops_summary(run, 1, info["steps"])
  flops.update(inference_flops=t * flops["forward_flops_dense"], inference_x_dense=float(t))
  out = common.results(run, state, info, common.evaluate(run, state), flops)
  out["num_members"] = t
  out["mc_dropout"] = {"num_passes": t, "dropout_rate": config.model.dropout_rate}
  return out
