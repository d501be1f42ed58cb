"""Subnetwork ensemble (Ex uno plures, our recipe): a dense MLP parent trained for half of the
10-epoch budget, split into M = 3 children that train for the other half (Fashion-MNIST); the
children's masks are disjoint in the hidden layer, and the input and output layers stay whole in
every child (subnetwork.share_input_output).

  python -m experiments.train --config experiments/configs/subnetwork_ensemble.py --workdir runs/subnet

Every field of the ``subnetwork`` block is our decision (the paper's rule is not available to us).
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("subnetwork_ensemble")  # the method's defaults and option blocks (documented in the library)
