"""Ex uno plures (subnetwork ensembles), CIFAR-100: M = 3 disjoint children of one WRN-28-10 parent.

The paper's: children with non-overlapping masks found by pruning a parent, trained independently.
Ours (the paper's partition rule, parent length and child schedule are not available to us): the
parent trained for half of a 200-epoch budget, weight-level magnitude partition dealt round-robin,
children trained for the other half (`subnetwork` block defaults), lr 0.1 x0.2 at 30/60/80% of each
phase, weight decay 5e-4. Input and optimizer: `_common.cifar100` (crop 4 + flip, SGD momentum 0.9,
batch 128, 5,000 validation images: ours).

  python -m experiments.train --config experiments/recipes/subnetwork_cifar100_wrn28_10.py --workdir runs/subnet_wrn100

PRE-FLIGHT (compiled for the target, README "Pre-flight"): one A100 (80 GB):
  python -m experiments.preflight --config experiments/recipes/subnetwork_cifar100_wrn28_10.py --target a100x1

ESTIMATE (on paper, not measured): 1 x A100, float32, assuming MFU 20%
(ResNet-50's figure, for a wide network of similar arithmetic intensity):
10.49 forward GFLOPs per image; 565 PFLOPs executed (dense math on masked weights), 283 in the papers' sparse
accounting (1.00x one dense model); 46,800 steps at 2.6 steps/s (992 images/s from the input
pipeline), 5.03 hours.
  python -m experiments.estimate --config experiments/recipes/subnetwork_cifar100_wrn28_10.py \\
      --hardware "A100" --chips 1 --mfu 0.2
"""
from experiments.recipes._common import WRN28_10, cifar100, step_schedule


def get_config():
  c = cifar100("subnetwork_ensemble", WRN28_10)
  c.num_members = 3
  step_schedule(c, epochs=200, milestones=(0.3, 0.6, 0.8), factor=0.2, weight_decay=5e-4)
  return c


PREFLIGHT = {"target": "a100x1", "overrides": {}}  # the README's pre-flight table
