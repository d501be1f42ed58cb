"""Deep ensemble of 4 WRN-28-10 on CIFAR-100, the uncertainty-baselines reference the papers quote
(82.7% / NLL 0.666 / ECE 0.021): 200 epochs, lr 0.1 x0.2 at 30/60/80%, weight decay 5e-4 (that
codebase's settings, as we read them). Input and optimizer: `_common.cifar100` (crop 4 + flip, SGD
momentum 0.9, batch 128, 5,000 validation images: ours).

  python -m experiments.train --config experiments/recipes/cifar100_wrn28_10_deep_ensemble.py --workdir runs/de_wrn100

PRE-FLIGHT (compiled for the target, README "Pre-flight"): one A100 (80 GB):
  python -m experiments.preflight --config experiments/recipes/cifar100_wrn28_10_deep_ensemble.py --target a100x1

ESTIMATE (on paper, not measured): 1 x A100, float32, assuming MFU 20%
(ResNet-50's figure, for a wide network of similar arithmetic intensity):
10.49 forward GFLOPs per image; 1,131 PFLOPs executed (dense math on masked weights), 1,131 in the papers' sparse
accounting (4.00x one dense model); 70,200 steps at 1.9 steps/s (992 images/s from the input
pipeline), 10.1 hours.
  python -m experiments.estimate --config experiments/recipes/cifar100_wrn28_10_deep_ensemble.py \\
      --hardware "A100" --chips 1 --mfu 0.2
"""
from experiments.recipes._common import WRN28_10, cifar100, step_schedule


def get_config():
  c = cifar100("deep_ensemble", WRN28_10)
  c.num_members = 4
  step_schedule(c, epochs=200, milestones=(0.3, 0.6, 0.8), factor=0.2, weight_decay=5e-4)
  return c


PREFLIGHT = {"target": "a100x1", "overrides": {}}  # the README's pre-flight table
