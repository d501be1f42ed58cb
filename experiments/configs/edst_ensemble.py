"""EDST Ensemble (FreeTickets), scaled to Fashion-MNIST on CPU: one sparse MLP (S = 0.8) yields
M = 3 tickets.

  python -m experiments.train --config experiments/configs/edst_ensemble.py --workdir runs/edst

Official CIFAR schedule: 150 exploration + 3 x 100 refinement epochs (450) against 250 for a single
dense model. Scaled by the same ratios to our 10-epoch single-model budget: 6 + 3 x 4 = 18 epochs
(reference_epochs = 10 for the FLOPs multiple). Exploration lr 0.1 constant; refinement lr 0.01,
x0.1 at mid-phase; global exploration q = 0.8 (official values); ours: the lr rises linearly from 0
over the first epoch (edst.warmup_epochs, chosen on validation). DST updates as in dst_ensemble.py.
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("edst_ensemble")  # the method's defaults and option blocks (documented in the library)
