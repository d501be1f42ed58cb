"""Checks of the run config: every invalid field gets an error that names it and what is allowed.

The config is an `ml_collections.ConfigDict`; the default lives in `ensembles/defaults.py` and
documents every field; a method's own blocks are checked by its option dataclasses
(`Method.validate`).
"""
from __future__ import annotations

from typing import Any

from ensembles import corruptions as corruptions_lib
from ensembles import data as data_lib
from ensembles import evaluation as evaluation_lib
from ensembles import health as health_lib
from ensembles import members as members_lib
from ensembles import methods
from ensembles import models as models_lib
from ensembles import train as train_lib
from ensembles.errors import ConfigError, is_int, is_number  # noqa: F401  (ConfigError: re-exported)
from ensembles.errors import require as _require
from ensembles.models import layers


CUSTOM_MODEL = "custom"  # model.name of a run on a user's own Flax module (no model block to check)


def validate(config: Any, given_data: bool = False) -> None:
  """Raises ConfigError for the first invalid field of the config, the method's blocks included.
  ``given_data``: the data were passed in, not loaded from the dataset block (which is not checked)."""
  _require(config.method in methods.METHODS, "method", f"one of {sorted(methods.METHODS)}", config.method)
  _require(is_int(config.num_members) and config.num_members >= 1, "num_members", "an integer >= 1",
           config.num_members)
  _require(is_int(config.seed), "seed", "an integer", config.seed)
  _require(config.member_execution in members_lib.EXECUTION_MODES, "member_execution",
           f"one of {members_lib.EXECUTION_MODES}", config.member_execution)

  if "mesh" in config:
    _require(is_int(config.mesh.members) and config.mesh.members >= 0, "mesh.members",
             "an integer >= 0 (0 = automatic)", config.mesh.members)
    _require(is_int(config.mesh.data) and config.mesh.data >= 1, "mesh.data", "an integer >= 1", config.mesh.data)

  d = config.dataset
  if not given_data:
    validate_dataset(d)
  if config.model.name != CUSTOM_MODEL:
    validate_model(config.model)
  _validate_rest(config)


def validate_dataset(d: Any) -> None:
  """Raises ConfigError for the first invalid field of the ``dataset`` block."""
  _require(d.name in data_lib.DATASETS, "dataset.name", f"one of {list(data_lib.DATASETS)}", d.name)
  for field in ("val_size", "train_subset", "test_subset"):
    _require(is_int(d[field]) and d[field] >= 0, f"dataset.{field}", "an integer >= 0", d[field])

  _require(is_number(d.imbalance_ratio) and d.imbalance_ratio >= 1, "dataset.imbalance_ratio", "a number >= 1",
           d.imbalance_ratio)
  _require(isinstance(d.get("download", False), bool), "dataset.download", "True or False", d.get("download"))
  _require(isinstance(d.get("data_dir", ""), str), "dataset.data_dir",
           "a folder path (a string; '' = the default location)", d.get("data_dir"))
  _require(is_int(d.get("split_seed", 0)) and d.get("split_seed", 0) >= 0, "dataset.split_seed", "an integer >= 0",
           d.get("split_seed"))
  _require(d.get("input", "auto") in data_lib.INPUTS, "dataset.input", f"one of {data_lib.INPUTS}", d.get("input"))
  _require(is_int(d.get("image_size", 0)) and d.get("image_size", 0) >= 0, "dataset.image_size",
           "an integer >= 0 (0 = the images' own fixed size)", d.get("image_size"))
  _require(is_number(d.get("memory_limit_gb", 4.0)) and d.get("memory_limit_gb", 4.0) > 0, "dataset.memory_limit_gb",
           "a number > 0 (GiB)", d.get("memory_limit_gb"))
  for field in ("statistics_examples", "read_threads"):
    _require(is_int(d.get(field, 1)) and d.get(field, 1) >= 1, f"dataset.{field}", "an integer >= 1", d.get(field))
  _require(is_int(d.get("prefetch_batches", 0)) and d.get("prefetch_batches", 0) >= 0, "dataset.prefetch_batches",
           "an integer >= 0", d.get("prefetch_batches"))


def _validate_rest(config: Any) -> None:
  d = config.dataset
  a = config.augment
  _require(is_int(a.crop_padding) and a.crop_padding >= 0, "augment.crop_padding", "an integer >= 0",
           a.crop_padding)
  _require(isinstance(a.flip, bool), "augment.flip", "True or False", a.flip)
  _require(isinstance(a.get("random_resized_crop", False), bool), "augment.random_resized_crop", "True or False",
           a.get("random_resized_crop"))
  _require(is_number(a.get("crop_scale_min", 0.08)) and 0 < a.get("crop_scale_min", 0.08) <= 1,
           "augment.crop_scale_min", "in (0, 1]", a.get("crop_scale_min"))
  if a.get("random_resized_crop", False):
    _require(d.get("input", "auto") == "stream" or d.name in data_lib.STREAMED_BY_DEFAULT, "augment.random_resized_crop",
             "False unless the training set streams (dataset.input = 'stream'): the crop is made on the host as "
             "images are read", True)

  t = config.training
  _require(is_int(t.epochs) and t.epochs >= 1, "training.epochs", "an integer >= 1", t.epochs)
  _require(is_int(t.batch_size) and t.batch_size >= 1, "training.batch_size", "an integer >= 1", t.batch_size)
  _require(is_number(t.lr) and t.lr > 0, "training.lr", "a number > 0", t.lr)
  _require(t.optimizer in train_lib.OPTIMIZERS, "training.optimizer", f"one of {train_lib.OPTIMIZERS}", t.optimizer)
  _require(t.lr_schedule in train_lib.LR_SCHEDULES, "training.lr_schedule", f"one of {train_lib.LR_SCHEDULES}",
           t.lr_schedule)
  _require(is_number(t.momentum) and 0 <= t.momentum < 1, "training.momentum", "in [0, 1)", t.momentum)
  _require(is_number(t.weight_decay) and t.weight_decay >= 0, "training.weight_decay", "a number >= 0",
           t.weight_decay)
  _require(is_number(t.warmup_epochs) and 0 <= t.warmup_epochs < t.epochs, "training.warmup_epochs",
           f"in [0, training.epochs={t.epochs})", t.warmup_epochs)
  _require(isinstance(t.decay_milestones, (tuple, list)) and
           all(is_number(f) and 0 < f < 1 for f in t.decay_milestones), "training.decay_milestones",
           "fractions of training in (0, 1)", t.decay_milestones)
  _require(is_number(t.decay_factor) and 0 < t.decay_factor <= 1, "training.decay_factor", "in (0, 1]",
           t.decay_factor)
  _require(t.get("weight_decay_on", "all") in train_lib.WEIGHT_DECAY_ON, "training.weight_decay_on",
           f"one of {train_lib.WEIGHT_DECAY_ON}", t.get("weight_decay_on"))
  _require(is_number(t.get("label_smoothing", 0.0)) and 0 <= t.get("label_smoothing", 0.0) < 1,
           "training.label_smoothing", "in [0, 1)", t.get("label_smoothing"))
  _require(t.get("compute_dtype", "float32") in train_lib.COMPUTE_DTYPES, "training.compute_dtype",
           f"one of {train_lib.COMPUTE_DTYPES}", t.get("compute_dtype"))
  for field in ("nesterov", "shared_data_order"):
    _require(isinstance(t.get(field, False), bool), f"training.{field}", "True or False", t.get(field))
  _require(is_int(t.batch_split) and t.batch_split >= 1 and t.batch_size % t.batch_split == 0,
           "training.batch_split", f"an integer >= 1 dividing training.batch_size={t.batch_size}", t.batch_split)
  _require(t.get("weighted_loss", "mean") in train_lib.WEIGHTED_LOSSES, "training.weighted_loss",
           f"one of {train_lib.WEIGHTED_LOSSES}", t.get("weighted_loss"))
  _require(is_number(t.get("clip_grad_norm", 0.0)) and t.get("clip_grad_norm", 0.0) >= 0, "training.clip_grad_norm",
           "a number >= 0 (0 = no clipping)", t.get("clip_grad_norm"))
  health_lib.read(config)  # the health block and training.on_unhealthy

  _require(isinstance(config.get("compilation_cache_dir", ""), str), "compilation_cache_dir",
           "a folder path (a string; '' = no persistent compilation cache)", config.get("compilation_cache_dir"))
  _require(isinstance(config.get("tensorboard", True), bool), "tensorboard", "True or False", config.get("tensorboard"))
  _require(is_number(config.get("peak_flops_per_device", 0.0)) and config.get("peak_flops_per_device", 0.0) >= 0,
           "peak_flops_per_device", "a number >= 0 (FLOP/s; 0 = from the device table)",
           config.get("peak_flops_per_device"))
  for field in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "eval_every_epochs",
                "eval_batch_size"):
    _require(is_int(config[field]) and config[field] >= 1, field, "an integer >= 1", config[field])
  _require(is_int(config.get("steps_per_dispatch", 0)) and config.get("steps_per_dispatch", 0) >= 0,
           "steps_per_dispatch", "an integer >= 0 (0 = auto)", config.get("steps_per_dispatch"))

  if "evaluation" in config:
    validate_evaluation(config.evaluation, d.name)
  methods.get_method(config.method).validate(config)


def validate_model(m: Any) -> None:
  """Raises ConfigError for the first invalid field of the ``model`` block: an unknown name or
  field, or a value its model cannot take (the allowed values of each model's fields)."""
  _require(m.name in models_lib.MODELS, "model.name", f"one of {sorted(models_lib.MODELS)}", m.name)
  fields = models_lib.model_fields(m.name)
  for field in m:
    if field == "name":
      continue
    _require(field in fields, f"model.{field}", f"a field of model {m.name!r} ({sorted(fields)})", m[field])
    value = m[field]
    if field == "dropout_rate":
      _require(is_number(value) and 0 <= value < 1, "model.dropout_rate", "in [0, 1)", value)
    elif field == "bn_momentum":
      _require(is_number(value) and 0 < value < 1, "model.bn_momentum", "in (0, 1)", value)
    elif field == "conv_impl":
      _require(value in layers.CONV_IMPLS, "model.conv_impl", f"one of {layers.CONV_IMPLS}", value)
    elif field == "remat":
      _require(value in layers.REMAT, "model.remat", f"one of {layers.REMAT}", value)
    elif field == "padding":
      _require(value in layers.PADDINGS, "model.padding", f"one of {layers.PADDINGS}", value)
    elif field in ("hidden", "features"):
      _require(isinstance(value, (tuple, list)) and all(is_int(v) and v >= 1 for v in value), f"model.{field}",
               "a tuple of integers >= 1 (layer widths)", value)
    elif isinstance(fields[field], int) and not isinstance(fields[field], bool):
      _require(is_int(value) and value >= 1, f"model.{field}", "an integer >= 1", value)
    elif isinstance(fields[field], float):
      _require(is_number(value) and value > 0, f"model.{field}", "a number > 0", value)
  for field, allowed in getattr(models_lib.MODELS[m.name], "choices", {}).items():
    if field in m:
      _require(m[field] in allowed, f"model.{field}", f"one of {allowed} for {m.name}", m[field])
  depth_rule = getattr(models_lib.MODELS[m.name], "depth_rule", None)  # (step, offset): depth = step·n + offset
  if depth_rule is not None and "depth" in m:
    step, offset = depth_rule
    _require(is_int(m.depth) and m.depth > offset and (m.depth - offset) % step == 0, "model.depth",
             f"{step}n+{offset} with n >= 1 for {m.name}", m.depth)


def validate_evaluation(e: Any, dataset_name: str) -> None:
  """Raises ConfigError for the first invalid field of the ``evaluation`` block."""

  _require(isinstance(e.ood_datasets, (tuple, list)) and
           all(n in data_lib.OOD_DATASETS and n != dataset_name for n in e.ood_datasets), "evaluation.ood_datasets",
           f"names from {list(data_lib.OOD_DATASETS)} other than dataset.name={dataset_name!r}", e.ood_datasets)
  _require(is_int(e.ood_examples) and e.ood_examples >= 0, "evaluation.ood_examples", "an integer >= 0",
           e.ood_examples)
  _require(isinstance(e.resize_ood, bool), "evaluation.resize_ood", "True or False", e.resize_ood)
  _require(isinstance(e.corruptions, (tuple, list)), "evaluation.corruptions",
           "a tuple: ('all',), () or names of corruption types", e.corruptions)
  try:
    evaluation_lib.corruption_names(dataset_name, e.corruptions)
  except ValueError as err:
    raise ConfigError(f"config.{err}") from err
  _require(isinstance(e.corruption_severities, (tuple, list)) and len(e.corruption_severities) > 0 and
           all(s in corruptions_lib.SEVERITIES for s in e.corruption_severities),
           "evaluation.corruption_severities", f"a non-empty subset of {corruptions_lib.SEVERITIES}",
           e.corruption_severities)
  _require(is_int(e.corruption_examples) and e.corruption_examples >= 0, "evaluation.corruption_examples",
           "an integer >= 0", e.corruption_examples)
  shifts = tuple(data_lib.SHIFT_DATASETS.get(dataset_name, {}))
  _require(isinstance(e.get("shift_datasets", ()), (tuple, list)) and all(n in shifts for n in e.get("shift_datasets", ())),
           "evaluation.shift_datasets", f"names from {shifts} (the shifted test sets of {dataset_name!r})",
           e.get("shift_datasets"))
  _require(is_int(e.get("shift_examples", 0)) and e.get("shift_examples", 0) >= 0, "evaluation.shift_examples",
           "an integer >= 0", e.get("shift_examples"))
  _require(e.get("shift_classes", "present") in ("present", "all"), "evaluation.shift_classes",
           "'present' (the shifted set's own classes) or 'all'", e.get("shift_classes"))
  _require(isinstance(e.plots, bool), "evaluation.plots", "True or False", e.plots)
