import re

import pytest

from ensembles import config as config_lib
from ensembles.methods import METHODS
from experiments.configs import (cbnn, deep_ensemble, default, dst_ensemble, dst_ensemble_cifar10_wrn28_10,
                                 edst_ensemble, mc_dropout, single, snapshot_ensemble, static_sparse_ensemble,
                                 subnetwork_ensemble)
from conftest import tiny_config


def test_shipped_configs_are_valid():
  for module in (default, deep_ensemble, single, dst_ensemble, static_sparse_ensemble, edst_ensemble,
                 dst_ensemble_cifar10_wrn28_10, subnetwork_ensemble, mc_dropout, cbnn, snapshot_ensemble):
    config_lib.validate(module.get_config())


@pytest.mark.parametrize("field,value,message", [
    ("method", "bagging", "config.method must be one of " + re.escape(str(sorted(METHODS)))),
    ("num_members", 0, "config.num_members must be an integer >= 1"),
    ("member_execution", "pmap", "config.member_execution must be one of"),
    ("dataset.name", "imagenet", "config.dataset.name must be one of"),
    ("dataset.val_size", -1, "config.dataset.val_size must be an integer >= 0"),
    ("model.name", "vgg", "config.model.name must be one of"),
    ("augment.crop_padding", -2, "config.augment.crop_padding"),
    ("training.epochs", 0, "config.training.epochs must be an integer >= 1"),
    ("training.batch_size", 0, "config.training.batch_size must be an integer >= 1"),
    ("training.batch_size", -8, "config.training.batch_size must be an integer >= 1"),
    ("training.lr", 0.0, "config.training.lr must be a number > 0"),
    ("training.lr", -0.1, "config.training.lr must be a number > 0"),
    ("training.optimizer", "lamb", "config.training.optimizer must be one of"),
    ("training.lr_schedule", "linear", "config.training.lr_schedule must be one of"),
    ("training.momentum", 1.0, r"config.training.momentum must be in \[0, 1\)"),
    ("training.weight_decay", -1e-4, "config.training.weight_decay must be a number >= 0"),
    ("training.warmup_epochs", 5.0, "config.training.warmup_epochs"),
    ("training.decay_milestones", (0.5, 1.5), "config.training.decay_milestones"),
    ("log_every_steps", 0, "config.log_every_steps must be an integer >= 1"),
    ("checkpoint_every_steps", 0, "config.checkpoint_every_steps must be an integer >= 1"),
])
def test_invalid_fields_are_named(field, value, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(tiny_config(**{field: value}))


def test_single_needs_one_member():
  with pytest.raises(config_lib.ConfigError, match="num_members must be 1 for method 'single'"):
    config_lib.validate(tiny_config(method="single", num_members=3))
