"""Single WRN-28-10 on CIFAR-100, the uncertainty-baselines reference (79.8% / NLL 0.875 / ECE 0.086):
200 epochs, lr 0.1 x0.2 at 30/60/80%, weight decay 5e-4. Input and optimizer: `_common.cifar100`
(crop 4 + flip, SGD momentum 0.9, batch 128, 5,000 validation images: ours).

  python -m experiments.train --config experiments/recipes/cifar100_wrn28_10_single.py --workdir runs/single_wrn100

PRE-FLIGHT (compiled for the target, README "Pre-flight"): one A100 (80 GB):
  python -m experiments.preflight --config experiments/recipes/cifar100_wrn28_10_single.py --target a100x1

ESTIMATE (on paper, not measured): 1 x A100, float32, assuming MFU 20%
(ResNet-50's figure, for a wide network of similar arithmetic intensity):
10.49 forward GFLOPs per image; 283 PFLOPs executed (dense math on masked weights), 283 in the papers' sparse
accounting (1.00x one dense model); 70,200 steps at 7.7 steps/s (992 images/s from the input
pipeline), 2.52 hours.
  python -m experiments.estimate --config experiments/recipes/cifar100_wrn28_10_single.py \\
      --hardware "A100" --chips 1 --mfu 0.2
"""
from experiments.recipes._common import WRN28_10, cifar100, step_schedule


def get_config():
  c = cifar100("single", WRN28_10)
  step_schedule(c, epochs=200, milestones=(0.3, 0.6, 0.8), factor=0.2, weight_decay=5e-4)
  return c


PREFLIGHT = {"target": "a100x1", "overrides": {}}  # the README's pre-flight table
