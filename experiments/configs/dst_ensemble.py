"""DST Ensemble (FreeTickets), scaled to Fashion-MNIST on CPU: M = 3 sparse MLPs at S = 0.8.

  python -m experiments.train --config experiments/configs/dst_ensemble.py --workdir runs/dst

Scaling from the official CIFAR recipe (experiments/configs/dst_ensemble_cifar10_wrn28_10.py):
the same sparsity, ERK allocation, drop fraction and optimizer family; ΔT is shortened from 1000 to
50 steps so the 10-epoch run (4,290 steps) makes a comparable number of topology updates (85 vs
about 88 in the official run: 45,000 images / 128 per step x 250 epochs = 87,900 steps at ΔT = 1,000). The cosine decay of the drop fraction (to 0 at the end) is our choice.
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("dst_ensemble")  # the method's defaults and option blocks (documented in the library)
