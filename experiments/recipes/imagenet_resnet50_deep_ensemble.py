"""The deep-ensemble baseline of FreeTickets' ImageNet table: M = 3 dense ResNet-50s, each trained as
one model (100 epochs, lr x0.1 at 30/60/90% with 5 warm-up epochs: the standard schedule, ours).
Input, optimizer and model: `_common.imagenet_resnet50` (bf16, label smoothing 0.1, no weight decay
on BatchNorm/bias as the paper's ImageNet recipe; batch 1024 at lr 0.4 and the 10,000-image
validation split are ours).

  python -m experiments.train --distributed --config experiments/recipes/imagenet_resnet50_deep_ensemble.py \\
      --workdir /mnt/bucket/runs/de_r50 --config.dataset.data_dir=/data/tensorflow_datasets

PRE-FLIGHT (compiled for the target, README "Pre-flight"): a TPU v4-32 slice (16 chips, 4 hosts), each
member's batch split over the 16 chips:
  python -m experiments.preflight --config experiments/recipes/imagenet_resnet50_deep_ensemble.py \\
      --target v4-32 --config.mesh.members=1 --config.mesh.data=16

ESTIMATE (on paper, not measured): 32 x TPU v4, bfloat16, assuming MFU 20%
(NVIDIA publishes about that for ResNet-50 on an A100):
8.18 forward GFLOPs per image; 9,354 PFLOPs executed (dense math on masked weights), 9,354 in the papers' sparse
accounting (3.00x one dense model); 124,100 steps at 23.4 steps/s (71,734 images/s from the input
pipeline), 1.48 hours.
  python -m experiments.estimate --config experiments/recipes/imagenet_resnet50_deep_ensemble.py \\
      --hardware "TPU v4" --chips 32 --mfu 0.2
"""
from experiments.recipes._common import imagenet_resnet50, step_schedule


def get_config():
  c = imagenet_resnet50("deep_ensemble")
  c.num_members = 3
  step_schedule(c, epochs=100, milestones=(0.3, 0.6, 0.9), factor=0.1, weight_decay=1e-4)
  return c


PREFLIGHT = {"target": "v4-32", "overrides": {'mesh.members': 1, 'mesh.data': 16}}  # the README's pre-flight table
