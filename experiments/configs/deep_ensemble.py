"""Deep ensemble, M = 4 MLPs, Fashion-MNIST (the default).

  python -m experiments.train --config experiments/configs/deep_ensemble.py --workdir runs/deep_ensemble
"""
from experiments.configs import default


def get_config():
  return default.get_config()
