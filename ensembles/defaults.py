"""The library's default run config (every field documented here) and each method's starting config.

`default_config()` is a deep ensemble of 4 MLPs on offline Fashion-MNIST; `method_config(name)` adds
the method's own defaults and its option blocks (their fields documented in the option dataclasses:
`methods.sparse_common.SparseOptions`, `methods.edst_ensemble.EDSTOptions`, ...). The configs in
experiments/configs start from these and change only what their experiment needs.
"""
from __future__ import annotations

import ml_collections

from ensembles import health as health_lib
from ensembles import options as options_lib
from ensembles.methods import get_method


def method_config(name: str) -> ml_collections.ConfigDict:
  """`default_config` for method ``name``: its defaults (e.g. ensemble size) and option blocks."""
  method = get_method(name)
  c = default_config()
  c.method = method.name
  for block, cls in method.options.items():
    c[block] = options_lib.as_block(cls)
  for field, value in method.defaults.items():
    set_field(c, field, value)
  for field, value in (method.derived(c) if method.derived else {}).items():
    set_field(c, field, value)
  return c


def replace_model(config: ml_collections.ConfigDict, name: str) -> None:
  """config.model = model ``name`` with its own fields at their defaults (`models.model_fields`), where
  ``name`` differs from config.model.name; fields the old model block set (e.g. the MLP's ``hidden``
  or a method's ``dropout_rate``) do not carry over."""
  from ensembles import models as models_lib  # the models import flax; the defaults need not
  if name not in models_lib.MODELS:
    raise ValueError(f"config.model.name must be one of {sorted(models_lib.MODELS)}, got {name!r}.")
  if name != config.model.name:
    config.model = ml_collections.ConfigDict({"name": name, **models_lib.model_fields(name)})


def set_field(config: ml_collections.ConfigDict, dotted: str, value) -> None:
  """config.<dotted> = value (e.g. "training.epochs")."""
  *path, last = dotted.split(".")
  node = config
  for part in path:
    node = node[part]
  node[last] = value


def default_config() -> ml_collections.ConfigDict:
  """Deep ensemble of 4 MLPs on offline Fashion-MNIST."""
  c = ml_collections.ConfigDict()
  c.method = "deep_ensemble"      # one of ensembles.methods.METHODS (its own blocks: method_config)
  c.num_members = 4               # M, ensemble size (members trained in one compiled step)
  c.seed = 0                      # run seed: member init keys, augmentation, data order
  c.member_execution = "auto"     # auto | vmap | loop | map | sharded (see ensembles/members.py)

  c.mesh = ml_collections.ConfigDict()  # devices (README "Running at scale"); 1 device: no effect
  c.mesh.members = 0              # devices along the member axis; 0 = the most (<= devices / data) dividing M
  c.mesh.data = 1                 # data-parallel replicas per member: each member's batch split over them

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "fashion_mnist"  # fashion_mnist (offline IDX files) | cifar10 | cifar100 | svhn_cropped | mnist
                                    # | imagenet2012 | imagenet_resized/64x64 | fashion_mnist_records | folder
  c.dataset.data_dir = ""           # '' = default (/usr/share/datasets/fashion-mnist or tfds's folder); must exist
  c.dataset.download = False        # True: tensorflow-datasets may download a missing training set (network)
  c.dataset.val_size = 5000         # examples carved from train for validation (never the test set)
  c.dataset.split_seed = 0          # seed of the train/val split, shared by all methods
  c.dataset.train_subset = 0        # >0: keep this many training examples (quick runs, tests)
  c.dataset.test_subset = 0         # >0: keep this many test examples
  c.dataset.imbalance_ratio = 1.0   # ρ > 1: long-tailed training set, n_c = n_max·ρ^(−c/(K−1))
  c.dataset.input = "auto"          # memory (whole set on the devices) | stream (read per batch, README
                                    #   "Running at scale") | auto: stream imagenet, folders, sets > memory_limit_gb
  c.dataset.image_size = 0          # model input H = W for images of varying size (ImageNet: 224); 0 = their own
  c.dataset.memory_limit_gb = 4.0   # auto: a training set larger than this (uint8, model input size) streams
  c.dataset.statistics_examples = 100_000  # training images the normalisation mean / std come from (all if fewer)
  c.dataset.read_threads = 4        # stream: grain threads reading batches ahead
  c.dataset.prefetch_batches = 4    # stream: batches read ahead of the step

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"            # mlp | lenet | resnet | wide_resnet; other fields go to the model (a user's own model: "custom")
  c.model.hidden = (512, 512)
  c.model.dropout_rate = 0.0

  c.augment = ml_collections.ConfigDict()
  c.augment.crop_padding = 0      # random crop after zero padding by this many pixels (0 = off)
  c.augment.flip = False          # random horizontal flip
  c.augment.random_resized_crop = False  # stream only: Inception crop on the host (ImageNet recipe)
  c.augment.crop_scale_min = 0.08        # its smallest area fraction

  c.training = ml_collections.ConfigDict()
  c.training.epochs = 10
  c.training.batch_size = 128     # per member
  c.training.optimizer = "sgd"    # sgd | adam | adamw
  c.training.lr = 0.05
  c.training.momentum = 0.9       # sgd only; 0 = plain SGD
  c.training.nesterov = True
  c.training.weight_decay = 5e-4  # L2 added to the gradient (decoupled for adamw)
  c.training.weight_decay_on = "all"  # all | kernels (no decay on biases and BatchNorm scale/offset)
  c.training.label_smoothing = 0.0    # ε: targets (1 − ε)·one-hot + ε/K
  c.training.compute_dtype = "float32"  # float32 | bfloat16: forward/backward in bf16, params,
                                        #   optimizer state and BatchNorm statistics in float32
  c.training.lr_schedule = "cosine"   # constant | cosine | step
  c.training.warmup_epochs = 0.0
  c.training.decay_milestones = (0.5, 0.75)  # step schedule: fractions of training
  c.training.decay_factor = 0.1              # step schedule: lr multiplier at each milestone
  c.training.shared_data_order = False       # True: all members see the same batches
  c.training.batch_split = 1      # k > 1: gradient as the mean over k batch parts computed concurrently
                                  # (faster single-member CNN steps on multi-core CPUs; no BatchNorm)
  c.training.weighted_loss = "mean"  # sample-weighted loss (boosting): mean Σw·CE/B | normalized Σw·CE/Σw
  c.training.clip_grad_norm = 0.0  # > 0: each member's gradient rescaled to at most this global L2 norm
  c.training.on_unhealthy = "warn"  # warn | stop: what a health flag does (ensembles/health.py; README "Health")

  c.health = options_lib.as_block(health_lib.HealthOptions)  # thresholds of the health checks (ensembles/health.py)

  c.evaluation = ml_collections.ConfigDict()  # what the final evaluation adds (ensembles/evaluation.py)
  c.evaluation.ood_datasets = ("digits",)  # OoD test sets: digits (scikit-learn, offline) | a dataset.name
  c.evaluation.ood_examples = 0            # >0: a fixed random subset of this many OoD images
  c.evaluation.resize_ood = False          # True: resize OoD images of another shape (else an error)
  c.evaluation.corruptions = ("all",)      # ('all',) | () | names (cifar10: tfds cifar10_corrupted types,
                                           #   else generated by ensembles/corruptions.py)
  c.evaluation.corruption_severities = (1, 2, 3, 4, 5)
  c.evaluation.corruption_examples = 2000  # >0: test images per corrupted set (a fixed subset); 0 = all
  c.evaluation.shift_datasets = ()         # shifted test sets (imagenet2012: imagenet_v2, imagenet_a, imagenet_r)
  c.evaluation.shift_examples = 0          # >0: a fixed random subset of this many images per shifted set
  c.evaluation.shift_classes = "present"   # predict among the set's classes (ImageNet-A/-R: 200), or "all"
  c.evaluation.plots = True                # PNG plots in the workdir (reliability, corruption severity)

  c.log_every_steps = 50          # progress bar and metrics.jsonl
  c.tensorboard = True            # also TensorBoard scalars in WORKDIR/tensorboard (no TensorFlow needed)
  c.peak_flops_per_device = 0.0   # for the logged MFU: 0 = the device's bf16/f32 peak from ensembles/hardware.py
  c.steps_per_dispatch = 0        # steps per compiled call (no host sync between): 0 = auto, every step up
                                  #   to the next log/checkpoint/hook/epoch end (1 for conv models on CPU)
  c.eval_every_epochs = 1         # validation metrics of the ensemble
  c.eval_batch_size = 1000
  c.checkpoint_every_steps = 1000 # plus one at the end; a rerun resumes from the newest
  c.keep_checkpoints = 2
  c.compilation_cache_dir = "~/.cache/ensembles/jax"  # the CLI's persistent XLA compilation cache ('' = off;
                                                      #   env ENSEMBLES_COMPILATION_CACHE: a folder or 'off')
  return c
