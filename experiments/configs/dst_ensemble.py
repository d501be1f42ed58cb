"""DST Ensemble (FreeTickets), scaled to Fashion-MNIST on CPU: M = 3 sparse MLPs at S = 0.8.

  python -m experiments.train --config experiments/configs/dst_ensemble.py --workdir runs/dst

Scaling from the official CIFAR recipe (experiments/configs/dst_ensemble_cifar10_wrn28_10.py):
the same sparsity, ERK allocation, drop fraction and optimizer family; ΔT is shortened from 1000 to
50 steps so the 10-epoch run (4,290 steps) makes a comparable number of topology updates (85 vs
about 88 in the official run: 45,000 images / 128 per step x 250 epochs = 87,900 steps at ΔT = 1,000). The cosine decay of the drop fraction (to 0 at the end) is our choice.
"""
import ml_collections

from experiments.configs import default


def sparse_block() -> ml_collections.ConfigDict:
  """The ``sparse`` block of every sparse method, with its documentation."""
  s = ml_collections.ConfigDict()
  s.sparsity = 0.8              # S: fraction of prunable weights that are zero (density 1 - S)
  s.density_rule = "erk"        # erk | uniform: per-layer density allocation
  s.init_rule = "random"        # random | magnitude: which positions the initial masks keep
  s.growth = "gradient"         # gradient (RigL) | random (SET)
  s.update_every = 50           # ΔT: steps between prune-and-grow updates
  s.drop_fraction = 0.5         # p_0: fraction of each layer's active weights replaced per update
  s.drop_schedule = "cosine"    # constant | cosine: p_t = p_min + ½(p_0 − p_min)(1 + cos(π t / T_end))
  s.drop_fraction_min = 0.0     # p_min
  s.stop_fraction = 1.0         # topology updates stop after this fraction of training (RigL: 0.75)
  s.allow_regrow = False        # True: a just-pruned position may be regrown (reference code)
  return s


def get_config():
  c = default.get_config()
  c.method = "dst_ensemble"
  c.num_members = 3
  c.sparse = sparse_block()
  return c
