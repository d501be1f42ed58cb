"""Static sparse ensemble: M = 3 MLPs with fixed random ERK masks at S = 0.8 (Fashion-MNIST).

  python -m experiments.train --config experiments/configs/static_sparse_ensemble.py --workdir runs/static
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("static_sparse_ensemble")  # the method's defaults and option blocks (documented in the library)
