"""MIMO (Havasi et al., ICLR 2021): one network with M input and M output heads
(`ensembles.models.mimo`); in training each member sees its own examples, at inference every member
sees the same image and one forward pass gives the M predictions.

The recipe trains the MIMO network as one model (configured optimizer and schedule); each step's
rows come from `mimo.mimo_rows` (input repetition ρ, batch repetition r). Cost (FLOPs): the MIMO
network's own layers (its first layer reads M images, its last gives M·K logits): training r·B rows
per step, inference one pass. Fields of the ``mimo`` block (`MIMOOptions`).
"""
from __future__ import annotations

import dataclasses

from ensembles.context import Run
from ensembles.errors import ConfigError
from ensembles.methods.base import Method, Trained, register
from ensembles.methods.member_network import programs, train_member_network
from ensembles.models import mimo
from ensembles.options import integer, number


@dataclasses.dataclass(frozen=True)
class MIMOOptions:
  """The ``mimo`` block. Defaults are ours (ρ = 0, r = 1: one dense model's cost per step); the
  paper tunes both and reports, as we read it, ρ = 0.6 and r = 2 for ImageNet."""

  input_repetition: float = number(0.0, 0.0, 1.0, "[)")  # ρ: fraction of rows whose M inputs are one image
  batch_repetitions: int = integer(1, 1)                # r: the batch repeated r times per step


def network(model, config, options) -> mimo.MIMO:
  o = options.mimo
  try:
    return mimo.network(model, config.num_members, o.input_repetition, o.batch_repetitions)
  except ValueError as error:
    raise ConfigError(str(error)) from None


def train(run: Run, options) -> list[Trained]:
  r = options.mimo.batch_repetitions

  def report(run, members, info):  # one network; r·B rows per step
    flops = run.flops(1, info["steps"], trained_members=r)
    return flops, {"mimo": {"rows_per_step": r * run.config.training.batch_size}}

  return train_member_network(run, report)


METHOD = register(Method("mimo", train, {"mimo": MIMOOptions}, defaults={"num_members": 3}, network=network,
                         trains_seeds=True, trains_one_network=True, programs=programs))
