"""Method registry: a method is a module with ``validate(config)`` and
``train_and_evaluate(config, workdir) -> results dict``. Adding a method means adding a file here
and a line to ``METHODS``."""
from __future__ import annotations

from types import ModuleType

from ensembles.methods import (cbnn, deep_ensemble, dst_ensemble, edst_ensemble, mc_dropout, single,
                               snapshot_ensemble, static_sparse_ensemble, subnetwork_ensemble)

METHODS: dict[str, ModuleType] = {
    "single": single,
    "deep_ensemble": deep_ensemble,
    "dst_ensemble": dst_ensemble,
    "edst_ensemble": edst_ensemble,
    "static_sparse_ensemble": static_sparse_ensemble,
    "subnetwork_ensemble": subnetwork_ensemble,
    "mc_dropout": mc_dropout,
    "snapshot_ensemble": snapshot_ensemble,
    "cbnn": cbnn,
}


def get_method(name: str) -> ModuleType:
  if name not in METHODS:
    raise ValueError(f"config.method must be one of {sorted(METHODS)}, got {name!r}.")
  return METHODS[name]
