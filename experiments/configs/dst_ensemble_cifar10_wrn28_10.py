"""DST Ensemble with the official FreeTickets CIFAR defaults: WRN-28-10, M = 3, S = 0.8 (density
0.2), ERK, ΔT = 1000, drop fraction 0.5, SGD momentum 0.9, weight decay 5e-4, batch 128, 250 epochs,
lr 0.1 decayed x0.1 at 50% and 75% of training. For accelerators (a GPU/TPU day, not this CPU).

  python -m experiments.train --config experiments/configs/dst_ensemble_cifar10_wrn28_10.py --workdir runs/dst_wrn

Our choices where the recipe is silent or differs on purpose: cosine drop-fraction decay to 0,
exact-count masks, no regrowth of just-pruned weights (sparse.allow_regrow = True restores it),
random crop (pad 4) + flip, validation split of 5,000 training images.
"""
from ensembles.defaults import method_config


def get_config():
  c = method_config("dst_ensemble")
  c.dataset.name = "cifar10"
  c.dataset.val_size = 5000
  c.model = c.model.__class__({"name": "wide_resnet", "depth": 28, "width": 10, "dropout_rate": 0.0})
  c.augment.crop_padding = 4
  c.augment.flip = True
  c.training.epochs = 250
  c.training.batch_size = 128
  c.training.lr = 0.1
  c.training.nesterov = False
  c.training.weight_decay = 5e-4
  c.training.lr_schedule = "step"
  c.training.decay_milestones = (0.5, 0.75)
  c.training.decay_factor = 0.1
  c.sparse.update_every = 1000
  c.eval_batch_size = 500
  c.evaluation.ood_datasets = ("cifar100", "svhn_cropped")  # DESIGN §4 (prepare them with `tfds build`)
  c.evaluation.corruptions = ("all",)                       # tfds cifar10_corrupted, 19 types x 5 severities
  c.evaluation.corruption_examples = 0                      # all 10,000 images per set
  c.checkpoint_every_steps = 2000
  return c
