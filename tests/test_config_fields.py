"""Every field of every shipped config (and every model's fields): one valid value passes
`config.validate`, one invalid value is refused with an error that starts with the field's exact
dotted name. The invalid values are set on an untyped copy of the config, so the check is the
validator's own (a config read back from JSON has no type lock).

A new config field fails `test_every_field_is_in_the_table` until it gets a row here."""
import importlib
import pkgutil
import re

import ml_collections
import pytest

import experiments.configs as configs_pkg
from ensembles import config as config_lib
from ensembles import models

CONFIGS = sorted(m.name for m in pkgutil.iter_modules(configs_pkg.__path__))

# field: (valid, invalid). A dict value sets several fields at once (fields that must agree); a
# callable gets the config; None (valid) keeps the config's own value.
FIELDS = {
    "augment.crop_padding": (2, -1),
    "augment.flip": (True, "yes"),
    "cbnn.combine": ("vote", "median"),
    "cbnn.eps": (0.01, 0.5),
    "cbnn.max_weight_ratio": (0.0, 0.5),
    "cbnn.rule": ("samme_r", "adaboost"),
    "checkpoint_every_steps": (5, 0),
    "dataset.data_dir": ("/tmp", 3),
    "dataset.download": (True, "yes"),
    "dataset.imbalance_ratio": (10.0, 0.5),
    # a dataset other than the config's and its OoD sets
    "dataset.name": (lambda c: "fashion_mnist" if c.dataset.name == "cifar10" else "svhn_cropped", "imagenet"),
    "dataset.split_seed": (3, 1.5),
    "dataset.test_subset": (100, -1),
    "dataset.train_subset": (100, -1),
    "dataset.val_size": (100, -1),
    "edst.drop_schedule": ("global", "linear"),
    "edst.exploration_epochs": ({"edst.exploration_epochs": 2, "training.epochs": 14}, 0),
    "edst.exploration_growth": ("gradient", "hebbian"),
    "edst.exploration_lr": (0.05, -0.1),
    "edst.global_drop_fraction": (0.5, 1.5),
    "edst.reference_epochs": (5, 0),
    "edst.refine_decay": (0.5, 1.5),
    "edst.refine_lr": (0.02, 0.0),
    "edst.refine_stop_fraction": (0.75, 1.5),
    "edst.refinement_epochs": ({"edst.refinement_epochs": 2, "training.epochs": 12}, 0),
    "edst.ticket": ("best_val", "middle"),
    "eval_batch_size": (64, 0),
    "eval_every_epochs": (2, 0),
    "evaluation.corruption_examples": (10, -1),
    "evaluation.corruption_severities": ((1, 3), (6,)),
    "evaluation.corruptions": (("contrast",), ("nonsense",)),
    "evaluation.ood_datasets": (("digits",), ("imagenet_o",)),
    "evaluation.ood_examples": (10, -1),
    "evaluation.plots": (False, "no"),
    "evaluation.resize_ood": (True, "no"),
    "keep_checkpoints": (3, 0),
    "log_every_steps": (10, 0),
    "mc_dropout.num_passes": (5, 1),
    "member_execution": ("loop", "pmap"),
    "mesh.data": (2, 0),
    "mesh.members": (1, -1),
    "method": (None, "bagging"),  # None: the config's own method is the valid value
    "model.bn_momentum": (0.99, 1.5),
    "model.conv_impl": ("xla", "fft"),
    "model.depth": (None, 5),  # None: the model's own default (depth rules differ per model)
    "model.dropout_rate": (0.1, 1.0),
    "model.features": ((8, 16), (8, 0)),
    "model.hidden": ((64,), (64, -1)),
    "model.kernel_size": (3, 0),
    "model.name": (None, "vgg"),
    "model.width": (2, 0),
    "num_members": (None, 0),
    "seed": (1, 1.5),
    "sparse.allow_regrow": (True, "yes"),
    "sparse.density_rule": ("uniform", "snip"),
    "sparse.drop_fraction": (0.3, 1.0),
    "sparse.drop_fraction_min": (0.1, 0.9),
    "sparse.drop_schedule": ("constant", "linear"),
    "sparse.growth": ("random", "hebbian"),
    "sparse.init_rule": ("magnitude", "snip"),
    "sparse.sparsity": (0.5, 1.0),
    "sparse.stop_fraction": (0.75, 0.0),
    "sparse.update_every": (10, 0),
    "subnetwork.granularity": ({"subnetwork.granularity": "unit", "subnetwork.share_input_output": True}, "layer"),
    "subnetwork.parent_fraction": (0.3, 1.5),
    "subnetwork.score": ("random", "gradient"),
    "subnetwork.share_input_output": (True, "yes"),
    "training.batch_size": (64, 0),
    "training.batch_split": (2, 3),
    "training.decay_factor": (0.5, 0.0),
    "training.decay_milestones": ((0.3,), (1.5,)),
    "training.epochs": (None, 0),
    "training.lr": (0.01, -1.0),
    "training.lr_schedule": ("step", "linear"),
    "training.momentum": (0.5, 1.0),
    "training.nesterov": (True, "yes"),
    "training.optimizer": ("adam", "lamb"),
    "training.shared_data_order": (True, "yes"),
    "training.warmup_epochs": (1.0, -1.0),
    "training.weight_decay": (0.0, -1.0),
}


def _leaves(c, prefix=""):
  for key, value in c.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"


def _model_config(name):
  """The default config with model ``name`` and all its fields at their defaults."""
  c = importlib.import_module("experiments.configs.default").get_config()
  c.model = ml_collections.ConfigDict({"name": name, **models.model_fields(name)})
  return c


def _cases():
  """(config name, field) for every leaf of every shipped config and every model's fields."""
  cases = [(name, field) for name in CONFIGS
           for field in _leaves(importlib.import_module(f"experiments.configs.{name}").get_config())]
  cases += [(f"model:{m}", f"model.{f}") for m in sorted(models.MODELS) for f in models.model_fields(m)]
  return sorted(set(cases))


def _config(name):
  if name.startswith("model:"):
    return _model_config(name.split(":", 1)[1])
  return importlib.import_module(f"experiments.configs.{name}").get_config()


def _untyped(c, changes):
  """A copy without ml_collections' type lock, with ``changes`` (dotted field -> value) applied."""
  c = ml_collections.ConfigDict(c.to_dict(), type_safe=False)
  for key, value in changes.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


def test_every_field_is_in_the_table():
  missing = sorted({field for _, field in _cases()} - set(FIELDS))
  assert not missing, f"config fields without a valid/invalid row in FIELDS: {missing}"


@pytest.mark.parametrize("name,field", _cases())
def test_valid_value_passes(name, field):
  valid = FIELDS[field][0]
  config = _config(name)
  valid = valid(config) if callable(valid) else valid
  changes = valid if isinstance(valid, dict) else ({} if valid is None else {field: valid})
  config_lib.validate(_untyped(config, changes))


@pytest.mark.parametrize("name,field", _cases())
def test_invalid_value_is_refused_naming_the_field(name, field):
  invalid = FIELDS[field][1]
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(_untyped(_config(name), {field: invalid}))
  assert re.match(rf"config\.{re.escape(field)}(?![\w.])", str(err.value)), str(err.value)
