"""Blocks shared by the recipes: the ImageNet and CIFAR-100 input, model and optimizer settings."""
import ml_collections

from ensembles.defaults import method_config


def imagenet_resnet50(method: str) -> ml_collections.ConfigDict:
  """ResNet-50 on ImageNet, streamed: 224x224 random-resized crops and flips on the host, SGD
  momentum 0.9, weight decay 1e-4 on kernels only, label smoothing 0.1 (FreeTickets' ImageNet recipe),
  bf16 compute; batch 1024 per member at lr 0.4 (0.1 per 256 images, linear scaling: ours), 5
  warm-up epochs; 10,000 training images held out for validation (ours). Evaluated on ImageNet-V2,
  ImageNet-A and ImageNet-R (shifted sets) and ImageNet-C (5,000 images per set: ours)."""
  c = method_config(method)
  c.dataset.name = "imagenet2012"
  c.dataset.input = "stream"
  c.dataset.image_size = 224
  c.dataset.val_size = 10_000
  c.dataset.statistics_examples = 10_000
  c.dataset.read_threads = 32
  c.dataset.prefetch_batches = 8
  c.model = ml_collections.ConfigDict({"name": "imagenet_resnet", "depth": 50, "width": 64, "stem": "imagenet",
                                        "remat": "none"})
  c.augment.random_resized_crop = True
  c.augment.flip = True
  t = c.training
  t.optimizer, t.momentum, t.nesterov = "sgd", 0.9, False
  t.batch_size, t.lr, t.warmup_epochs = 1024, 0.4, 5.0
  t.weight_decay, t.weight_decay_on, t.label_smoothing = 1e-4, "kernels", 0.1
  t.compute_dtype = "bfloat16"
  c.eval_batch_size = 1024  # divisible by mesh.data on slices of up to 1,024 devices
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.evaluation.ood_datasets = ()  # no OoD set of ImageNet is named in tfds' catalog here
  c.evaluation.shift_datasets = ("imagenet_v2", "imagenet_a", "imagenet_r")  # prepared with `tfds build`
  c.evaluation.corruptions = ("all",)  # tfds imagenet2012_corrupted: 19 types x 5 severities
  c.evaluation.corruption_examples = 5000  # per set (a fixed subset; ours)
  return c


def cifar100(method: str, model: dict) -> ml_collections.ConfigDict:
  """CIFAR-100 (in memory): random crop (pad 4) and flip, SGD momentum 0.9, batch 128, a validation
  split of 5,000 training images; OoD sets CIFAR-10 and SVHN, corruptions generated in code."""
  c = method_config(method)
  c.dataset.name = "cifar100"
  c.dataset.val_size = 5000
  c.model = ml_collections.ConfigDict(model)
  c.augment.crop_padding = 4
  c.augment.flip = True
  t = c.training
  t.optimizer, t.momentum, t.nesterov, t.batch_size, t.lr = "sgd", 0.9, False, 128, 0.1
  c.eval_batch_size = 500
  c.checkpoint_every_steps = 2000
  c.evaluation.ood_datasets = ("cifar10", "svhn_cropped")
  c.evaluation.corruptions = ("all",)
  return c


WRN28_10 = {"name": "wide_resnet", "depth": 28, "width": 10, "dropout_rate": 0.0, "remat": "none"}
RESNET110 = {"name": "resnet", "depth": 110, "remat": "none"}


def step_schedule(c: ml_collections.ConfigDict, epochs: int, milestones: tuple, factor: float,
                  weight_decay: float) -> ml_collections.ConfigDict:
  """``epochs`` of training with the lr multiplied by ``factor`` at each of ``milestones``
  (fractions of training), and ``weight_decay``."""
  t = c.training
  t.epochs, t.weight_decay = epochs, weight_decay
  t.lr_schedule, t.decay_milestones, t.decay_factor = "step", tuple(milestones), factor
  return c
