"""Snapshot Boosting (Zhang, Liu & Yan, 2020), the closest prior of CBNN: a snapshot ensemble's
restarting learning rate with boosting-style sample reweighting between snapshots.

Ours, built from the two parts the library has (the paper's restart-point selection and its learned
combination of snapshots are not reproduced):
  1. the budget (``training.epochs``) is split into M equal cycles with the snapshot ensemble's
     cosine restarts (`snapshot_ensemble.cyclic_cosine`);
  2. at each cycle's end the snapshot is collected and the training samples reweighted from its
     training-set predictions, with the snapshot's α (`boosting.reweight`, as CBNN:
     `cbnn.boosted_checkpoints`);
  3. prediction: the α-weighted mean of the snapshots' probabilities.
Fields of the ``snapshot_boosting`` block: the boosting rule's (`cbnn.BoostingRuleOptions`), CBNN's defaults.
"""
from __future__ import annotations

import dataclasses

from ensembles.context import Run
from ensembles.errors import require
from ensembles.methods.base import Method, Trained, register
from ensembles.methods.cbnn import BoostingRuleOptions, boosted_checkpoints, boosted_programs
from ensembles.methods.snapshot_ensemble import cyclic_cosine


@dataclasses.dataclass(frozen=True)
class SnapshotBoostingOptions(BoostingRuleOptions):
  """The ``snapshot_boosting`` block: the boosting rule, clip, weight cap and combination of CBNN."""


def train(run: Run, options) -> list[Trained]:
  return boosted_checkpoints(run, options.snapshot_boosting, "snapshot_boosting", schedule(run))


def schedule(run: Run):
  """The snapshot ensemble's cosine restarts, M cycles of the run."""
  return cyclic_cosine(run.config.training.lr, run.total_steps, run.num_members)


def programs(run: Run, options, plan) -> None:
  boosted_programs(run, options.snapshot_boosting, plan, schedule(run))


def check(config, options) -> None:
  require(1 <= config.num_members <= config.training.epochs, "num_members",
          f"in [1, training.epochs={config.training.epochs}] for method 'snapshot_boosting' (snapshots)",
          config.num_members)


METHOD = register(Method("snapshot_boosting", train, {"snapshot_boosting": SnapshotBoostingOptions},
                         defaults={"num_members": 3}, check=check, takes_member_networks=False,
                         trains_seeds=True, trains_one_network=True, programs=programs))
