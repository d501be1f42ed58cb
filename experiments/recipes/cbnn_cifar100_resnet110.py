"""Checkpoint-boosted networks (CBNN), CIFAR-100 with ResNet-110: M = 3 boosted checkpoints of one run
at a single model's budget.

The paper's: ResNet-110 on CIFAR-100, one run, sample reweighting between checkpoints, no cyclic lr.
Ours (the paper's details we cannot see): the budget of He et al.'s ResNet-110 (164 epochs, lr 0.1
x0.1 at 50% and 75%, weight decay 1e-4), M = 3 equal segments, SAMME reweighting with the weight cap
r = 2 (`cbnn` block defaults, README "Checkpoint boosting"). Input and optimizer: `_common.cifar100`
(crop 4 + flip, SGD momentum 0.9, batch 128, 5,000 validation images: ours).

  python -m experiments.train --config experiments/recipes/cbnn_cifar100_resnet110.py --workdir runs/cbnn_r110

PRE-FLIGHT (compiled for the target, README "Pre-flight"): one A100 (80 GB):
  python -m experiments.preflight --config experiments/recipes/cbnn_cifar100_resnet110.py --target a100x1

ESTIMATE (on paper, not measured): 1 x A100, float32, assuming MFU 5%
(a narrow 16-64-channel network at batch 128 keeps a large GPU mostly idle):
0.51 forward GFLOPs per image; 11.3 PFLOPs executed (dense math on masked weights), 11.3 in the papers' sparse
accounting (1.01x one dense model); 57,564 steps at 40.1 steps/s (5,135 images/s from the input
pipeline), 0.401 hours.
  python -m experiments.estimate --config experiments/recipes/cbnn_cifar100_resnet110.py \\
      --hardware "A100" --chips 1 --mfu 0.05
"""
from experiments.recipes._common import RESNET110, cifar100, step_schedule


def get_config():
  c = cifar100("cbnn", RESNET110)
  c.num_members = 3
  step_schedule(c, epochs=164, milestones=(0.5, 0.75), factor=0.1, weight_decay=1e-4)
  return c


PREFLIGHT = {"target": "a100x1", "overrides": {}}  # the README's pre-flight table
