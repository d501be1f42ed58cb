"""MC dropout (Gal & Ghahramani, 2016): one network trained with dropout; at test time T stochastic
passes (dropout on, vmapped over pass keys) are the ensemble's members and their mean probability
is the prediction. Training is the single model's recipe; ``mc_dropout.num_passes`` = T. Any Flax
model with `nn.Dropout` layers works (`train.make_mc_predict` turns them on at inference)."""
from __future__ import annotations

import dataclasses

import jax

from ensembles import models as models_lib
from ensembles import train as train_lib
from ensembles import trainer
from ensembles.context import Run, stacked_members
from ensembles.errors import ConfigError, require
from ensembles.methods.base import Method, Trained, register
from ensembles.options import integer


@dataclasses.dataclass(frozen=True)
class MCDropoutOptions:
  """The ``mc_dropout`` block. The dropout rate is the model's (0.2 in our configs, our choice)."""

  num_passes: int = integer(10, 2)  # T stochastic passes at test time


def predictor(run: Run, options):
  """The evaluation predictor: T = mc_dropout.num_passes dropout passes of the trained network
  (also used to evaluate a saved run again)."""
  return train_lib.make_mc_predict(run.model, num_passes=options.mc_dropout.num_passes,
                                   key=jax.random.fold_in(run.init_key, 3), execution=run.execution,
                                   mean=run.data.mean, std=run.data.std, compute_dtype=run.compute_dtype)


def programs(run: Run, options, plan) -> None:
  """Pre-flight: the network's training and its T dropout passes at evaluation."""
  plan.one_network(run, 1, apply=predictor(run, options), passes=options.mc_dropout.num_passes)


def train(run: Run, options) -> list[Trained]:
  rates = train_lib.dropout_rates(run.model, run.data.image_shape)
  if not any(rate > 0 for rate in rates):
    raise ConfigError("method 'mc_dropout' needs a model with dropout (an nn.Dropout layer with rate > 0); "
                      "for the library's models set config.model.dropout_rate > 0.")
  state, info = trainer.fit(run, run.init_members())
  t = options.mc_dropout.num_passes
  flops = run.flops(1, info["steps"])
  flops.update(inference_flops=t * flops["forward_flops_dense"], inference_x_dense=float(t))
  results = {"mc_dropout": {"num_passes": t, "dropout_rate": max(rates)}}
  return [Trained(r.ensemble(members, apply=predictor(r, options)), info, flops, results=results, num_members=t)
          for r, members in zip(run.seed_runs(), run.split_seeds(stacked_members(state)))]


def check(config, options) -> None:
  require(config.num_members == 1, "num_members",
          "1 for method 'mc_dropout' (the members are the mc_dropout.num_passes test-time passes)",
          config.num_members)
  if config.model.name in models_lib.MODELS:  # a user's own model is checked when it trains
    require(config.model.get("dropout_rate", 0.0) > 0, "model.dropout_rate", "> 0 for method 'mc_dropout'",
            config.model.get("dropout_rate", 0.0))


METHOD = register(Method("mc_dropout", train, {"mc_dropout": MCDropoutOptions},
                         defaults={"num_members": 1, "model.dropout_rate": 0.2}, check=check, predictor=predictor, trains_seeds=True,
                         takes_member_networks=False, programs=programs))
