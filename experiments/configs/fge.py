"""Fast geometric ensembling (FGE): one MLP run with the single model's 10-epoch budget, the first
80% trained as usual, then M = 3 triangular learning-rate cycles, a snapshot at each cycle's minimum
(Fashion-MNIST).

  python -m experiments.train --config experiments/configs/fge.py --workdir runs/fge
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("fge")  # the method's defaults and option blocks (documented in the library)
