"""The single ResNet-110 that CBNN's CIFAR-100 table compares with: He et al.'s schedule (164 epochs,
lr 0.1 x0.1 at 50% and 75%, weight decay 1e-4). Input and optimizer: `_common.cifar100` (crop 4 +
flip, SGD momentum 0.9, batch 128, 5,000 validation images: ours).

  python -m experiments.train --config experiments/recipes/cifar100_resnet110_single.py --workdir runs/single_r110

PRE-FLIGHT (compiled for the target, README "Pre-flight"): one A100 (80 GB):
  python -m experiments.preflight --config experiments/recipes/cifar100_resnet110_single.py --target a100x1

ESTIMATE (on paper, not measured): 1 x A100, float32, assuming MFU 5%
(a narrow 16-64-channel network at batch 128 keeps a large GPU mostly idle):
0.51 forward GFLOPs per image; 11.2 PFLOPs executed (dense math on masked weights), 11.2 in the papers' sparse
accounting (1.00x one dense model); 57,564 steps at 40.1 steps/s (5,135 images/s from the input
pipeline), 0.399 hours.
  python -m experiments.estimate --config experiments/recipes/cifar100_resnet110_single.py \\
      --hardware "A100" --chips 1 --mfu 0.05
"""
from experiments.recipes._common import RESNET110, cifar100, step_schedule


def get_config():
  c = cifar100("single", RESNET110)
  step_schedule(c, epochs=164, milestones=(0.5, 0.75), factor=0.1, weight_decay=1e-4)
  return c


PREFLIGHT = {"target": "a100x1", "overrides": {}}  # the README's pre-flight table
