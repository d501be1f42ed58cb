"""Subnetwork ensemble end to end: parent, disjoint children, masked weights stay zero, children differ."""
import jax
import numpy as np
import pytest

from ensembles import api
from ensembles import data as data_lib

from ensembles import config as config_lib, trainer
from experiments.configs import subnetwork_ensemble as subnet_config
from conftest import make_dataset, tiny_config


def _cfg(**subnetwork):
  c = subnet_config.get_config()
  tiny = tiny_config()
  c.evaluation.update(tiny.evaluation)
  for block in ("dataset", "training"):
    c[block].update({k: v for k, v in tiny[block].items() if k != "epochs"})
  c.model.hidden = (24, 12)
  c.training.epochs = 4
  c.log_every_steps, c.checkpoint_every_steps, c.eval_batch_size = 2, 4, 50
  c.subnetwork.update(subnetwork)
  return c


@pytest.mark.parametrize("granularity,share", [("weight", None), ("weight", False), ("unit", True)])
def test_children_disjoint_zero_and_different(tmp_path, monkeypatch, granularity, share):
  """share None: the default, which keeps the input and output layers whole at weight level."""
  dataset = make_dataset(n_train=128, n_val=16, n_test=32)
  monkeypatch.setattr(data_lib, "load_dataset", lambda _: dataset)
  finals = []
  original_fit = trainer.fit

  def fit(*args, **kwargs):
    out = original_fit(*args, **kwargs)
    finals.append(out[0])
    return out

  monkeypatch.setattr(trainer, "fit", fit)
  cfg = _cfg(granularity=granularity, **({} if share is None else {"share_input_output": share}))
  config_lib.validate(cfg)
  results = api.run_config(cfg, str(tmp_path))
  parent, children = finals
  assert parent.params["Dense_1"]["kernel"].shape[0] == 1 and children.params["Dense_1"]["kernel"].shape[0] == 3
  masks = children.opt_state.masks
  kernel_masks = np.asarray(masks["Dense_1"]["kernel"])
  np.testing.assert_array_equal(kernel_masks.sum(0), 1)  # pairwise disjoint, covering
  for layer in ("Dense_0", "Dense_2"):  # input and output layers: whole in every child, or partitioned
    outer = np.asarray(masks[layer]["kernel"])
    assert outer.all() if share is not False else (outer.sum(0) == 1).all()
  for p, m in zip(jax.tree.leaves(children.params), jax.tree.leaves(masks)):
    assert bool((np.asarray(p)[~np.asarray(m)] == 0).all())  # masked weights stayed zero
  k = np.asarray(children.params["Dense_1"]["kernel"])
  assert not np.allclose(k[0], k[1])
  np.testing.assert_allclose(results["subnetwork"]["child_shares"], 1 / 3, atol=0.01)
  assert results["subnetwork"]["parent_epochs"] == 2 and results["num_members"] == 3
  assert (tmp_path / "parent" / "checkpoints").is_dir() and (tmp_path / "children" / "checkpoints").is_dir()


@pytest.mark.parametrize("field,value,message", [
    ("parent_fraction", 1.0, r"config.subnetwork.parent_fraction must be in \(0, 1\)"),
    ("parent_fraction", 0.0, r"config.subnetwork.parent_fraction must be in \(0, 1\)"),
    ("parent_fraction", 0.05, r"leaves >= 1 parent and >= 1 child epochs \(here 0 and"),
    ("granularity", "filter", "config.subnetwork.granularity must be one of"),
    ("score", "snip", "config.subnetwork.score must be one of"),
])
def test_bad_subnetwork_config(field, value, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(_cfg(**{field: value}))


def test_too_many_children_fails_before_training(tmp_path, monkeypatch):
  dataset = make_dataset(n_train=128, n_val=16, n_test=32)
  monkeypatch.setattr(data_lib, "load_dataset", lambda _: dataset)
  calls = []
  monkeypatch.setattr(trainer, "fit", lambda *a, **k: calls.append(1))
  cfg = _cfg(granularity="unit", share_input_output=True)
  cfg.num_members = 13  # hidden layers have 24 and 12 units
  with pytest.raises(ValueError, match=r"num_members \(13\) exceeds the 12 units of layer \['Dense_1'\]"):
    api.run_config(cfg, str(tmp_path))
  assert not calls
