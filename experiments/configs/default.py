"""Default config: deep ensemble of 4 MLPs on offline Fashion-MNIST (every field documented here).

  python -m experiments.train --config experiments/configs/default.py --workdir runs/default

Other configs import this one and override a few fields. Any field can be overridden on the
command line: --config.num_members=8 --config.training.lr=0.1 ...
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "deep_ensemble"      # one of ensembles.methods.METHODS
  c.num_members = 4               # M, ensemble size (members trained in one compiled step)
  c.seed = 0                      # run seed: member init keys, augmentation, data order
  c.member_execution = "auto"     # auto | vmap | loop | map (see ensembles/members.py)

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "fashion_mnist"  # fashion_mnist (offline IDX files) | cifar10 | cifar100 | svhn_cropped | mnist
  c.dataset.data_dir = ""           # '' = default (/usr/share/datasets/fashion-mnist or tfds's folder)
  c.dataset.val_size = 5000         # examples carved from train for validation (never the test set)
  c.dataset.split_seed = 0          # seed of the train/val split, shared by all methods
  c.dataset.train_subset = 0        # >0: keep this many training examples (quick runs, tests)
  c.dataset.test_subset = 0         # >0: keep this many test examples
  c.dataset.imbalance_ratio = 1.0   # ρ > 1: long-tailed training set, n_c = n_max·ρ^(−c/(K−1))

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"            # mlp | lenet | resnet | wide_resnet; other fields go to the model
  c.model.hidden = (512, 512)
  c.model.dropout_rate = 0.0

  c.augment = ml_collections.ConfigDict()
  c.augment.crop_padding = 0      # random crop after zero padding by this many pixels (0 = off)
  c.augment.flip = False          # random horizontal flip

  c.training = ml_collections.ConfigDict()
  c.training.epochs = 10
  c.training.batch_size = 128     # per member
  c.training.optimizer = "sgd"    # sgd | adam | adamw
  c.training.lr = 0.05
  c.training.momentum = 0.9       # sgd only; 0 = plain SGD
  c.training.nesterov = True
  c.training.weight_decay = 5e-4  # L2 added to the gradient (decoupled for adamw)
  c.training.lr_schedule = "cosine"   # constant | cosine | step
  c.training.warmup_epochs = 0.0
  c.training.decay_milestones = (0.5, 0.75)  # step schedule: fractions of training
  c.training.decay_factor = 0.1              # step schedule: lr multiplier at each milestone
  c.training.shared_data_order = False       # True: all members see the same batches
  c.training.batch_split = 1      # k > 1: gradient as the mean over k batch parts computed concurrently
                                  # (faster single-member CNN steps on multi-core CPUs; no BatchNorm)

  c.log_every_steps = 50          # progress bar and metrics.jsonl
  c.eval_every_epochs = 1         # validation metrics of the ensemble
  c.eval_batch_size = 1000
  c.checkpoint_every_steps = 1000 # plus one at the end; a rerun resumes from the newest
  c.keep_checkpoints = 2
  return c
