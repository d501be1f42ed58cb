"""Boosted EDST (ours, beyond the papers): EDST's M tickets from one sparse run, with CBNN's sample
reweighting between them.

The EDST recipe (`edst_ensemble`: exploration, M refinement phases, a global exploration before
each phase after the first, a ticket at each phase end), and at each phase end, where the global
exploration also happens: the ticket's predictions on the training set give it its α and reweight
the training samples for the next phase (`boosting.reweight`, as CBNN: SAMME, weights of mean 1
capped at ``boosting.max_weight_ratio`` × the mean). Prediction: the α-weighted mean of the tickets.
Tickets are each phase's last state (``edst.ticket = final``), the one the α is computed from.
Fields: the ``sparse`` and ``edst`` blocks of EDST, and ``boosting`` (the ``cbnn`` block's fields
and defaults). FLOPs: EDST's plus the M training-set passes at the tickets' density.
"""
from __future__ import annotations

import dataclasses

from ensembles.context import Run
from ensembles.errors import require
from ensembles.methods import edst_ensemble
from ensembles.methods.base import Method, Trained, register
from ensembles.methods.cbnn import BoostingRuleOptions
from ensembles.methods.edst_ensemble import EDSTOptions
from ensembles.methods.sparse_common import SparseOptions


@dataclasses.dataclass(frozen=True)
class BoostingOptions(BoostingRuleOptions):
  """The ``boosting`` block: CBNN's rule, clip, weight cap and combination (same defaults)."""


def train(run: Run, options) -> list[Trained]:
  return edst_ensemble.train_tickets(run, options, boost=options.boosting)


def programs(run: Run, options, plan) -> None:
  edst_ensemble.programs(run, options, plan, boost=options.boosting)


def check(config, options) -> None:
  require(options.edst.ticket == "final", "edst.ticket",
          "'final' for method 'boosted_edst' (a ticket's α comes from the phase's last state)", options.edst.ticket)
  edst_ensemble.check(config, options)


METHOD = register(Method("boosted_edst", train, {"sparse": SparseOptions, "edst": EDSTOptions,
                                                 "boosting": BoostingOptions},
                         defaults={"num_members": 3, "training.lr_schedule": "constant"},
                         check=check, derived=edst_ensemble.derived, takes_member_networks=False,
                         trains_seeds=True, trains_one_network=True, programs=programs))
