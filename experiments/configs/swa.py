"""Stochastic weight averaging (SWA): one MLP with the single model's 10-epoch budget, the paper's
learning-rate schedule (constant, then down to half of it), its weights averaged at every epoch's
end from 75% of the budget on (Fashion-MNIST). Set num_members > 1 for SWA of every member of a deep
ensemble.

  python -m experiments.train --config experiments/configs/swa.py --workdir runs/swa
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("swa")  # the method's defaults and option blocks (documented in the library)
