"""Snapshot ensemble: one MLP run with the single model's 10-epoch budget, cosine lr restarted
M = 3 times, a snapshot at the end of each cycle (Fashion-MNIST).

  python -m experiments.train --config experiments/configs/snapshot_ensemble.py --workdir runs/snapshot
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("snapshot_ensemble")  # the method's defaults and option blocks (documented in the library)
