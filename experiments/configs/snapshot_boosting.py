"""Snapshot Boosting (our reading: the snapshot ensemble's cosine restarts with CBNN's sample
reweighting between snapshots): one MLP run with the single model's 10-epoch budget, M = 3
snapshots, α-weighted (Fashion-MNIST).

  python -m experiments.train --config experiments/configs/snapshot_boosting.py --workdir runs/snapshot_boosting

Long-tailed variant: add --config.dataset.imbalance_ratio=100.
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("snapshot_boosting")  # the method's defaults and option blocks (documented in the library)
