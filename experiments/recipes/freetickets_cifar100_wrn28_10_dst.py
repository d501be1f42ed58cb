"""FreeTickets (Liu et al., 2022), CIFAR-100 table: DST Ensemble of WRN-28-10, M = 3, S = 0.8.

The paper's (official CIFAR code): 250 epochs, lr 0.1 x0.1 at 50% and 75%, ERK, RigL every 1,000
steps, drop fraction 0.5, weight decay 5e-4. Ours: cosine drop-fraction decay, exact-count masks.
Input and optimizer: `_common.cifar100` (crop 4 + flip, SGD momentum 0.9, batch 128, 5,000
validation images: ours).

  python -m experiments.train --config experiments/recipes/freetickets_cifar100_wrn28_10_dst.py --workdir runs/dst_wrn100

PRE-FLIGHT (compiled for the target, README "Pre-flight"): one A100 (80 GB):
  python -m experiments.preflight --config experiments/recipes/freetickets_cifar100_wrn28_10_dst.py --target a100x1

ESTIMATE (on paper, not measured): 1 x A100, float32, assuming MFU 20%
(ResNet-50's figure, for a wide network of similar arithmetic intensity):
10.49 forward GFLOPs per image; 1,060 PFLOPs executed (dense math on masked weights), 358 in the papers' sparse
accounting (1.01x one dense model); 87,750 steps at 2.6 steps/s (992 images/s from the input
pipeline), 9.44 hours.
  python -m experiments.estimate --config experiments/recipes/freetickets_cifar100_wrn28_10_dst.py \\
      --hardware "A100" --chips 1 --mfu 0.2
"""
from experiments.recipes._common import WRN28_10, cifar100, step_schedule


def get_config():
  c = cifar100("dst_ensemble", WRN28_10)
  c.num_members = 3
  step_schedule(c, epochs=250, milestones=(0.5, 0.75), factor=0.1, weight_decay=5e-4)
  c.sparse.sparsity, c.sparse.update_every, c.sparse.drop_fraction = 0.8, 1000, 0.5
  return c


PREFLIGHT = {"target": "a100x1", "overrides": {}}  # the README's pre-flight table
