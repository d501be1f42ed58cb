"""Snapshot ensemble: one MLP run with the single model's 10-epoch budget, cosine lr restarted
M = 3 times, a snapshot at the end of each cycle (Fashion-MNIST).

  python -m experiments.train --config experiments/configs/snapshot_ensemble.py --workdir runs/snapshot
"""
from experiments.configs import default


def get_config():
  c = default.get_config()
  c.method = "snapshot_ensemble"
  c.num_members = 3
  return c
