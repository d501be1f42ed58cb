"""FreeTickets (Liu et al., 2022), ImageNet table: EDST Ensemble of ResNet-50, M = 3 tickets at S = 0.8
from one sparse run, against a deep ensemble at about 1/5 of its training FLOPs (our counter, below:
0.43 of the 3-member deep ensemble's, since ERK at S = 0.8 keeps 41% of ResNet-50's forward FLOPs,
as RigL reports; on accelerators the executed FLOPs, dense math on masked weights, are the
ensemble's).

The paper's: 310 epochs = exploration 100 + three refinement phases of 70, a ticket per phase,
global exploration q = 0.8 between phases, ERK masks, RigL updates every 4,000 steps, label
smoothing 0.1, weight decay 1e-4, exploration lr decayed x0.1 at epochs 30/60/90 after 5 warm-up
epochs. Ours: refinement lr 0.04 with x0.1 at mid-phase (the CIFAR ratio 10:1 to exploration). Input,
optimizer and model: `_common.imagenet_resnet50` (bf16, label smoothing 0.1, no weight decay on
BatchNorm/bias as the paper's ImageNet recipe; batch 1024 at lr 0.4 and the 10,000-image validation
split are ours).

  python -m experiments.train --distributed --config experiments/recipes/freetickets_imagenet_resnet50_edst.py \\
      --workdir /mnt/bucket/runs/edst_r50 --config.dataset.data_dir=/data/tensorflow_datasets

PRE-FLIGHT (compiled for the target, README "Pre-flight"): a TPU v4-32 slice (16 chips, 4 hosts), each
member's batch split over the 16 chips:
  python -m experiments.preflight --config experiments/recipes/freetickets_imagenet_resnet50_edst.py \\
      --target v4-32 --config.mesh.members=1 --config.mesh.data=16

ESTIMATE (on paper, not measured): 32 x TPU v4, bfloat16, assuming MFU 20%
(NVIDIA publishes about that for ResNet-50 on an A100):
8.18 forward GFLOPs per image; 9,665 PFLOPs executed (dense math on masked weights), 4,000 in the papers' sparse
accounting (1.28x one dense model); 384,710 steps at 70.1 steps/s (71,734 images/s from the input
pipeline), 1.53 hours.
  python -m experiments.estimate --config experiments/recipes/freetickets_imagenet_resnet50_edst.py \\
      --hardware "TPU v4" --chips 32 --mfu 0.2
"""
from experiments.recipes._common import imagenet_resnet50


def get_config():
  c = imagenet_resnet50("edst_ensemble")
  c.num_members = 3
  c.training.epochs = 310
  c.edst.exploration_epochs, c.edst.refinement_epochs = 100, 70
  c.edst.exploration_lr, c.edst.refine_lr, c.edst.refine_decay = 0.4, 0.04, 0.1
  c.edst.exploration_milestones, c.edst.exploration_decay = (30, 60, 90), 0.1
  c.edst.global_drop_fraction = 0.8
  c.edst.reference_epochs = 100
  c.edst.warmup_epochs = 0.0  # EDST's own warm-up off: the official 5 epochs are training.warmup_epochs (the longer wins)
  c.sparse.sparsity, c.sparse.update_every = 0.8, 4000
  return c


PREFLIGHT = {"target": "v4-32", "overrides": {'mesh.members': 1, 'mesh.data': 16}}  # the README's pre-flight table
