"""Static sparse ensemble: M = 3 MLPs with fixed random ERK masks at S = 0.8 (Fashion-MNIST).

  python -m experiments.train --config experiments/configs/static_sparse_ensemble.py --workdir runs/static
"""
from experiments.configs import dst_ensemble


def get_config():
  c = dst_ensemble.get_config()
  c.method = "static_sparse_ensemble"
  return c
