"""FreeTickets (Liu et al., 2022), CIFAR-100 table: EDST Ensemble of WRN-28-10, M = 3, S = 0.8.

The paper's (official CIFAR code): exploration 150 epochs at lr 0.1, three refinement phases of 100
epochs at lr 0.01 (x0.1 at mid-phase), global exploration q = 0.8, ERK, RigL every 1,000 steps, drop
fraction 0.5, weight decay 5e-4; the dense reference is 250 epochs. Ours: cosine drop-fraction
decay, exact-count masks. Input and optimizer: `_common.cifar100` (crop 4 + flip, SGD momentum 0.9,
batch 128, 5,000 validation images: ours).

  python -m experiments.train --config experiments/recipes/freetickets_cifar100_wrn28_10_edst.py --workdir runs/edst_wrn

PRE-FLIGHT (compiled for the target, README "Pre-flight"): one A100 (80 GB):
  python -m experiments.preflight --config experiments/recipes/freetickets_cifar100_wrn28_10_edst.py --target a100x1

ESTIMATE (on paper, not measured): 1 x A100, float32, assuming MFU 20%
(ResNet-50's figure, for a wide network of similar arithmetic intensity):
10.49 forward GFLOPs per image; 636 PFLOPs executed (dense math on masked weights), 215 in the papers' sparse
accounting (0.61x one dense model); 157,950 steps at 7.7 steps/s (992 images/s from the input
pipeline), 5.66 hours.
  python -m experiments.estimate --config experiments/recipes/freetickets_cifar100_wrn28_10_edst.py \\
      --hardware "A100" --chips 1 --mfu 0.2
"""
from experiments.recipes._common import WRN28_10, cifar100


def get_config():
  c = cifar100("edst_ensemble", WRN28_10)
  c.num_members = 3
  c.training.epochs = 450
  c.training.weight_decay = 5e-4
  c.edst.exploration_epochs, c.edst.refinement_epochs = 150, 100
  c.edst.exploration_lr, c.edst.refine_lr, c.edst.refine_decay = 0.1, 0.01, 0.1
  c.edst.reference_epochs = 250
  c.edst.warmup_epochs = 0.0  # the official schedule has none (our default of 1 epoch was chosen on the CNN study)
  c.sparse.sparsity, c.sparse.update_every, c.sparse.drop_fraction = 0.8, 1000, 0.5
  return c


PREFLIGHT = {"target": "a100x1", "overrides": {}}  # the README's pre-flight table
