"""Deep ensemble, M = 4 MLPs, Fashion-MNIST (the default).

  python -m experiments.train --config experiments/configs/deep_ensemble.py --workdir runs/deep_ensemble
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("deep_ensemble")  # the method's defaults and option blocks (documented in the library)
