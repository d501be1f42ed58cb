"""FreeTickets (Liu et al., 2022), ImageNet table: DST Ensemble of ResNet-50, M = 3 sparse members (S =
0.8, ERK, RigL every 4,000 steps), each trained as one sparse model.

The paper's: S = 0.8, ERK, gradient growth, label smoothing 0.1, weight decay 1e-4. Ours: M = 3 (the
EDST recipe's ticket count), 100 epochs per member with lr x0.1 at 30/60/90% of training and 5 warm-
up epochs (the standard ResNet-50 schedule; the paper's per-member length we cannot see). Input,
optimizer and model: `_common.imagenet_resnet50` (bf16, label smoothing 0.1, no weight decay on
BatchNorm/bias as the paper's ImageNet recipe; batch 1024 at lr 0.4 and the 10,000-image validation
split are ours).

  python -m experiments.train --distributed --config experiments/recipes/freetickets_imagenet_resnet50_dst.py \\
      --workdir /mnt/bucket/runs/dst_r50 --config.dataset.data_dir=/data/tensorflow_datasets

PRE-FLIGHT (compiled for the target, README "Pre-flight"): a TPU v4-32 slice (16 chips, 4 hosts), each
member's batch split over the 16 chips:
  python -m experiments.preflight --config experiments/recipes/freetickets_imagenet_resnet50_dst.py \\
      --target v4-32 --config.mesh.members=1 --config.mesh.data=16

ESTIMATE (on paper, not measured): 32 x TPU v4, bfloat16, assuming MFU 20%
(NVIDIA publishes about that for ResNet-50 on an A100):
8.18 forward GFLOPs per image; 9,354 PFLOPs executed (dense math on masked weights), 3,871 in the papers' sparse
accounting (1.24x one dense model); 124,100 steps at 23.4 steps/s (71,734 images/s from the input
pipeline), 1.48 hours.
  python -m experiments.estimate --config experiments/recipes/freetickets_imagenet_resnet50_dst.py \\
      --hardware "TPU v4" --chips 32 --mfu 0.2
"""
from experiments.recipes._common import imagenet_resnet50, step_schedule


def get_config():
  c = imagenet_resnet50("dst_ensemble")
  c.num_members = 3
  step_schedule(c, epochs=100, milestones=(0.3, 0.6, 0.9), factor=0.1, weight_decay=1e-4)
  c.sparse.sparsity, c.sparse.update_every = 0.8, 4000
  return c


PREFLIGHT = {"target": "v4-32", "overrides": {'mesh.members': 1, 'mesh.data': 16}}  # the README's pre-flight table
