"""Every field of every shipped config (and every model's fields): one valid value passes
`config.validate`, one invalid value is refused with an error that starts with the field's exact
dotted name (`config.<field> must ...`).

The invalid values are checked twice: on an untyped copy of the config (a config read back from
JSON has no type lock, so the check is the validator's own), and on the shipped, type-locked
config, where ml_collections refuses a value of another type with a TypeError naming the field.

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


class Other:
  """A valid value that differs from the config's own: the first of ``choices`` that does."""

  def __init__(self, *choices):
    self.choices = choices


def _edst_epochs(c, exploration=0, members=0):
  """EDST's training.epochs must equal exploration + M x refinement: the fields that change together."""
  e = c.edst.exploration_epochs + exploration
  m = c.num_members + members
  return {"edst.exploration_epochs": e, "num_members": m, "training.epochs": e + m * c.edst.refinement_epochs}


def _num_members(c):
  if c.method in ("single", "mc_dropout"):  # 1 is the only valid ensemble size of these methods
    return {}
  if c.method in ("edst_ensemble", "boosted_edst"):
    return _edst_epochs(c, members=1)
  return {"num_members": c.num_members + 1}


def _epochs(c):
  if c.method in ("edst_ensemble", "boosted_edst"):
    return _edst_epochs(c, exploration=2)
  return {"training.epochs": c.training.epochs + 5}


def _model_name(c):
  """Another model, with its default fields and the config's dropout rate (mc_dropout needs > 0)."""
  name = "lenet" if c.model.name == "mlp" else "mlp"
  return {"model": {**models.model_fields(name), "name": name, "dropout_rate": c.model.get("dropout_rate", 0.0)}}


# These fields have no invalid value of their own type. Their row's invalid value is None (refused by
# the validator; a type-locked ConfigDict lets None through) or, for booleans, a string: refused by
# the validator in an untyped config (one read back from JSON), and by the type lock of a shipped
# config with a TypeError naming the field (both checked below).
NO_INVALID_VALUE_OF_ITS_TYPE = {
    "seed": "every integer is a seed (negative ones too)",
    "dataset.data_dir": "a free folder path; whether it exists is checked when the data is loaded",
    "compilation_cache_dir": "a free folder path, created when the cache is turned on",
    **{f: "a boolean: both values are allowed" for f in (
        "augment.flip", "augment.random_resized_crop", "dataset.download", "evaluation.plots",
        "evaluation.resize_ood", "sparse.allow_regrow", "tensorboard",
        "subnetwork.share_input_output", "training.nesterov", "training.shared_data_order")},
}

# field: (valid, invalid). Valid: a value, an `Other` (the first choice that differs from the
# config's own value), or a callable of the config giving {dotted field: value} (fields that must
# agree change together; {} keeps the config as it is, where no other value is valid).
FIELDS = {
    "augment.crop_padding": (Other(2, 4), -1),
    "augment.flip": (Other(True, False), "yes"),
    "augment.random_resized_crop": (lambda c: {"augment.random_resized_crop": True, "dataset.input": "stream"}, "yes"),
    "augment.crop_scale_min": (Other(0.25, 0.5), 0.0),
    "cbnn.combine": (Other("vote", "weighted"), "median"),
    "cbnn.eps": (Other(0.01, 0.02), 0.5),
    "cbnn.max_weight_ratio": (Other(0.0, 5.0), 0.5),
    "cbnn.rule": (Other("samme_r", "samme"), "adaboost"),
    "cbnn.shrinkage": (Other(0.5, 0.25), 0.0),
    "cbnn.segment_decay_fraction": (Other(0.25, 0.5), 1.0),
    "cbnn.segment_decay": (Other(0.5, 0.2), 0.0),
    "boosting.shrinkage": (Other(0.5, 0.25), 0.0),
    "snapshot_boosting.shrinkage": (Other(0.5, 0.25), 0.0),
    "training.weighted_loss": (Other("normalized", "mean"), "sum"),
    "checkpoint_every_steps": (Other(5, 6), 0),
    "compilation_cache_dir": (Other("/tmp/jax_cache", ""), None),  # no invalid string
    "dataset.data_dir": (Other("/tmp", ""), None),  # no invalid string
    "dataset.download": (Other(True, False), "yes"),
    "dataset.imbalance_ratio": (Other(10.0, 2.0), 0.5),
    "dataset.input": (Other("stream", "memory"), "disk"),
    "dataset.image_size": (Other(32, 64), -1),
    "dataset.memory_limit_gb": (Other(8.0, 2.0), 0.0),
    "dataset.statistics_examples": (Other(1000, 2000), 0),
    "dataset.read_threads": (Other(2, 3), 0),
    "dataset.prefetch_batches": (Other(2, 3), -1),
    # a dataset other than the config's and its OoD sets
    "dataset.name": (lambda c: {"dataset.name": "fashion_mnist" if c.dataset.name == "cifar10" else "svhn_cropped"},
                     "imagenet"),
    "dataset.split_seed": (Other(3, 4), -1),
    "dataset.test_subset": (Other(100, 200), -1),
    "dataset.train_subset": (Other(100, 200), -1),
    "dataset.val_size": (Other(100, 200), -1),
    "edst.drop_schedule": (Other("global", "per_phase"), "linear"),
    "edst.exploration_epochs": (lambda c: _edst_epochs(c, exploration=2), 0),
    "edst.exploration_growth": (Other("gradient", "random"), "hebbian"),
    "edst.exploration_lr": (Other(0.0, 0.05), -0.1),  # 0: training.lr
    "edst.exploration_milestones": (lambda c: {"edst.exploration_milestones": (1,)}, (3, 2)),
    "edst.exploration_decay": (Other(0.5, 0.2), 0.0),
    "edst.global_drop_fraction": (Other(0.5, 0.6), 1.5),
    "edst.reference_epochs": (Other(5, 6), 0),
    "edst.refine_decay": (Other(0.5, 0.6), 1.5),
    "edst.warmup_epochs": (Other(0.0, 2.0), -1.0),
    "edst.refine_lr": (Other(0.02, 0.03), 0.0),
    "edst.refine_stop_fraction": (Other(0.75, 0.8), 1.5),
    "edst.refinement_epochs": (lambda c: {"edst.refinement_epochs": 2, "training.epochs":
                                          c.edst.exploration_epochs + 2 * c.num_members}, 0),
    # boosted_edst takes final tickets only (its check refuses best_val): its config stays as it is
    "edst.ticket": (lambda c: {"edst.ticket": "best_val"} if c.method == "edst_ensemble" else {}, "middle"),
    "eval_batch_size": (Other(64, 65), 0),
    "eval_every_epochs": (Other(2, 3), 0),
    "fge.pretrain_fraction": (Other(0.5, 0.6), 1.0),
    "fge.lr_max_factor": (Other(0.3, 0.4), 0.0),
    "fge.lr_min_factor": (Other(0.02, 0.05), 0.0),
    "evaluation.corruption_examples": (Other(10, 11), -1),
    "evaluation.corruption_severities": (Other((1, 3), (2,)), (6,)),
    "evaluation.corruptions": (Other(("contrast",), ()), ("nonsense",)),
    "evaluation.ood_datasets": (Other((), ("digits",)), ("imagenet_o",)),
    "evaluation.ood_examples": (Other(10, 11), -1),
    "evaluation.plots": (Other(False, True), "no"),
    # shifted sets exist for imagenet2012 only: () is the one valid value of every shipped config
    "evaluation.shift_datasets": (lambda c: {}, ("imagenet_v2",)),
    "evaluation.shift_examples": (Other(10, 11), -1),
    "evaluation.shift_classes": (Other("all", "present"), "some"),
    "evaluation.resize_ood": (Other(True, False), "no"),
    "swa.start_fraction": (Other(0.5, 0.6), 1.0),
    "boosting.combine": (Other("vote", "weighted"), "median"),
    "boosting.eps": (Other(0.01, 0.02), 0.5),
    "boosting.max_weight_ratio": (Other(0.0, 5.0), 0.5),
    "boosting.rule": (Other("samme_r", "samme"), "adaboost"),
    "snapshot_boosting.combine": (Other("vote", "weighted"), "median"),
    "snapshot_boosting.eps": (Other(0.01, 0.02), 0.5),
    "snapshot_boosting.max_weight_ratio": (Other(0.0, 5.0), 0.5),
    "snapshot_boosting.rule": (Other("samme_r", "samme"), "adaboost"),
    "batch_ensemble.fast_init": (Other("random_sign", "normal"), "zeros"),
    "batch_ensemble.fast_init_std": (Other(0.25, 0.5), 0.0),
    "mimo.input_repetition": (Other(0.5, 0.6), 1.0),
    "mimo.batch_repetitions": (Other(2, 3), 0),
    "treenet.shared_layers": (Other(2, 1), 0),
    "swa.lr_factor": (Other(0.2, 0.3), 0.0),
    "keep_checkpoints": (Other(3, 4), 0),
    "log_every_steps": (Other(10, 11), 0),
    "steps_per_dispatch": (Other(1, 2), -1),
    "tensorboard": (Other(False, True), "yes"),
    "peak_flops_per_device": (Other(1e12, 2e12), -1.0),
    "mc_dropout.num_passes": (Other(5, 6), 1),
    "member_execution": (Other("loop", "vmap"), "pmap"),
    "mesh.data": (Other(2, 1), 0),
    "mesh.members": (Other(1, 0), -1),
    # another method needs its own config block: the config's own method is its only valid value
    "method": (lambda c: {}, "bagging"),
    "model.bn_momentum": (Other(0.99, 0.5), 1.5),
    "model.conv_impl": (Other("xla", "auto"), "fft"),
    "model.padding": (Other("VALID", "SAME"), "FULL"),
    "model.remat": (Other("dots", "none"), "all"),
    # 6n+2 (resnet) / 6n+4 (wide_resnet) / one of 18, 34, 50, 101, 152 (imagenet_resnet)
    "model.depth": (lambda c: {"model.depth": 18 if c.model.name == "imagenet_resnet" else c.model.depth + 6}, 5),
    "model.stem": (Other("small", "imagenet"), "tiny"),
    "model.dropout_rate": (Other(0.1, 0.3), 1.0),
    "model.features": (Other((8, 16), (4,)), (8, 0)),
    "model.hidden": (Other((64,), (32, 32)), (64, -1)),
    "model.kernel_size": (Other(3, 5), 0),
    "model.name": (_model_name, "vgg"),
    "model.width": (Other(2, 3), 0),
    "num_members": (_num_members, 0),
    "seed": (Other(1, 2), None),  # no invalid integer
    "sparse.allow_regrow": (Other(True, False), "yes"),
    "sparse.density_rule": (Other("uniform", "erk"), "snip"),
    "sparse.drop_fraction": (Other(0.3, 0.4), 1.0),
    "sparse.drop_fraction_min": (Other(0.1, 0.0), 0.9),
    "sparse.drop_schedule": (Other("constant", "cosine"), "linear"),
    "sparse.growth": (Other("random", "gradient"), "hebbian"),
    "sparse.init_rule": (Other("magnitude", "random"), "snip"),
    "sparse.sparsity": (Other(0.5, 0.6), 1.0),
    "sparse.stop_fraction": (Other(0.75, 0.8), 0.0),
    "sparse.update_every": (Other(10, 11), 0),
    "subnetwork.granularity": (lambda c: {"subnetwork.granularity": "unit", "subnetwork.share_input_output": True},
                               "layer"),
    "subnetwork.parent_fraction": (Other(0.3, 0.4), 1.5),
    "subnetwork.score": (Other("random", "magnitude"), "gradient"),
    "subnetwork.share_input_output": (Other(True, False), "yes"),
    "subnetwork.reference_epochs": (Other(5, 6), -1),
    "training.batch_size": (Other(64, 96), 0),
    "training.batch_split": (Other(2, 4), 3),  # must divide training.batch_size (128 in every config)
    "training.decay_factor": (Other(0.5, 0.2), 0.0),
    "training.decay_milestones": (Other((0.3,), (0.6,)), (1.5,)),
    "training.epochs": (_epochs, 0),
    "training.lr": (Other(0.01, 0.02), -1.0),
    "training.lr_schedule": (Other("step", "cosine"), "linear"),
    "training.momentum": (Other(0.5, 0.6), 1.0),
    "training.nesterov": (Other(True, False), "yes"),
    "training.optimizer": (Other("adam", "sgd"), "lamb"),
    "training.shared_data_order": (Other(True, False), "yes"),
    "training.warmup_epochs": (Other(1.0, 2.0), -1.0),
    "training.weight_decay": (Other(0.0, 1e-4), -1.0),
    "training.weight_decay_on": (Other("kernels", "all"), "biases"),
    "training.label_smoothing": (Other(0.1, 0.2), 1.0),
    "training.compute_dtype": (Other("bfloat16", "float32"), "float16"),
    "training.clip_grad_norm": (Other(1.0, 5.0), -1.0),
    "training.on_unhealthy": (Other("stop", "warn"), "ignore"),
    "health.spike_factor": (Other(10.0, 3.0), 1.0),
    "health.spike_window": (Other(20, 30), 1),
    "health.chance_margin": (Other(0.05, 0.1), 1.0),
    "health.max_class_share": (Other(0.95, 0.8), 0.0),
    "health.min_weight_ess": (Other(0.05, 0.1), 1.0),
    "health.validation_patience": (Other(1, 3), 0),
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


CASES = _cases()
IDS = [f"{name}-{field}" for name, field in CASES]


def _config(name):
  if name.startswith("model:"):
    return _model_config(name.split(":", 1)[1])
  return importlib.import_module(f"experiments.configs.{name}").get_config()


def _get(c, field):
  for key in field.split("."):
    c = c[key]
  return c


def _set(c, field, value):
  *path, last = field.split(".")
  for key in path:
    c = c[key]
  c[last] = value


def _untyped(c, changes):
  """A copy without ml_collections' type lock, with ``changes`` (dotted field -> value) applied."""
  c = ml_collections.ConfigDict(c.to_dict(), type_safe=False)
  for key, value in changes.items():
    _set(c, key, value)
  return c


def _valid_changes(config, field):
  valid = FIELDS[field][0]
  if isinstance(valid, Other):
    own = _get(config, field)
    return {field: next(v for v in valid.choices if v != own)}
  return valid(config) if callable(valid) else {field: valid}


def _names_exactly(field, message):
  """The message starts with the field's whole dotted name, not a part of another field's
  (``training.lr`` must not match ``config.training.lr_schedule ...``)."""
  # " has": evaluation.corruptions' message ("has unknown type(s) ...") is pinned by test_evaluation.py
  return re.match(rf"config\.{re.escape(field)}(?: must\b| \(| has\b)", message) is not None


def test_every_field_is_in_the_table():
  missing = sorted({field for _, field in CASES} - set(FIELDS))
  assert not missing, f"config fields without a valid/invalid row in FIELDS: {missing}"
  stale = sorted(set(FIELDS) - {field for _, field in CASES})
  assert not stale, f"rows of FIELDS that are no field of any shipped config or model: {stale}"


def test_the_regex_names_fields_exactly():
  assert _names_exactly("training.lr", "config.training.lr must be a number > 0, got -1.")
  assert not _names_exactly("training.lr", "config.training.lr_schedule must be one of ('constant',), got 'x'.")
  assert not _names_exactly("lr", "config.training.lr must be a number > 0, got -1.")
  assert not _names_exactly("training", "config.training.lr must be a number > 0, got -1.")


@pytest.mark.parametrize("name,field", CASES, ids=IDS)
def test_valid_value_passes(name, field):
  config = _config(name)
  changes = _valid_changes(config, field)
  config_lib.validate(_untyped(config, changes))
  for key, value in changes.items():  # and the shipped, type-locked config takes it too
    _set(config, key, value)
  config_lib.validate(config)


@pytest.mark.parametrize("name,field", CASES, ids=IDS)
def test_invalid_value_is_refused_naming_the_field(name, field):
  invalid = FIELDS[field][1]
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(_untyped(_config(name), {field: invalid}))
  assert _names_exactly(field, str(err.value)), str(err.value)


@pytest.mark.parametrize("name,field", CASES, ids=IDS)
def test_invalid_value_on_the_typed_config(name, field):
  """Through the shipped (type-locked) config, as `--config.<field>=...` sets it: a value of the
  field's own type (or None, which the lock lets through) reaches the validator, which names the
  field; a value of another type (only for the fields of NO_INVALID_VALUE_OF_ITS_TYPE) is refused
  by the type lock, naming the field."""
  config = _config(name)
  invalid = FIELDS[field][1]
  try:
    _set(config, field, invalid)
  except TypeError as err:
    assert field in NO_INVALID_VALUE_OF_ITS_TYPE, f"{field}: the invalid value must be of the field's type ({err})"
    assert re.search(rf"field '{re.escape(field.split('.')[-1])}'", str(err)), str(err)
    return
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(config)
  assert _names_exactly(field, str(err.value)), str(err.value)


@pytest.mark.parametrize("name,field", CASES, ids=IDS)
def test_none_is_refused_naming_the_field(name, field):
  """None gets through ml_collections' type lock for every field: the validator names the field
  (not a TypeError from comparing None with a number deep inside a check)."""
  config = _config(name)
  _set(config, field, None)
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(config)
  assert _names_exactly(field, str(err.value)), str(err.value)
