"""Single MLP on Fashion-MNIST with the same schedule as the deep ensemble.

  python -m experiments.train --config experiments/configs/single.py --workdir runs/single
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("single")  # the method's defaults and option blocks (documented in the library)
