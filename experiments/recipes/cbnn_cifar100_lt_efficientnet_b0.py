"""Checkpoint-boosted networks (CBNN) on imbalanced data: EfficientNet-B0 on long-tailed CIFAR-100
(imbalance ratio 100), M = 3 boosted checkpoints of one run, against the single model (run the
`single` method on the same config: --config.method=single --config.num_members=1).

The paper's: CBNN's gains are largest on imbalanced data, shown with EfficientNet-B0. Ours (the
paper's dataset, resolution and schedule we cannot see): CIFAR-100 made long-tailed with
n_c = n_max·100^(−c/99) (validation and test sets stay balanced), EfficientNet-B0 on 32x32 inputs
without stochastic depth, 200 epochs of SGD (lr 0.1 x0.1 at 50% and 75%, weight decay 5e-4), M = 3
equal segments with SAMME reweighting capped at r = 2. Input and optimizer: `_common.cifar100`.

  python -m experiments.train --config experiments/recipes/cbnn_cifar100_lt_efficientnet_b0.py --workdir runs/cbnn_lt

PRE-FLIGHT (compiled for the target, README "Pre-flight"): one A100 (80 GB):
  python -m experiments.preflight --config experiments/recipes/cbnn_cifar100_lt_efficientnet_b0.py --target a100x1

ESTIMATE (on paper, not measured): 1 x A100, float32, assuming MFU 5%
(depthwise convolutions on 32x32 inputs keep a large GPU mostly idle):
0.02 forward GFLOPs per image; 0.101 PFLOPs executed (dense math on masked weights), 0.101 in the papers' sparse
accounting (1.01x one dense model); 15,200 steps at 1182.3 steps/s (151,338 images/s from the input
pipeline), 0.00359 hours.
  python -m experiments.estimate --config experiments/recipes/cbnn_cifar100_lt_efficientnet_b0.py \\
      --hardware "A100" --chips 1 --mfu 0.05
"""
from experiments.recipes._common import cifar100, step_schedule


def get_config():
  c = cifar100("cbnn", {"name": "efficientnet_b0", "width": 1.0, "dropout_rate": 0.2, "remat": "none"})
  c.dataset.imbalance_ratio = 100.0
  c.num_members = 3
  step_schedule(c, epochs=200, milestones=(0.5, 0.75), factor=0.1, weight_decay=5e-4)
  return c


PREFLIGHT = {"target": "a100x1", "overrides": {}}  # the README's pre-flight table
