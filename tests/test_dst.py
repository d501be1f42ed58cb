"""DST and static sparse ensembles end to end on a tiny dataset."""
import jax
import numpy as np
import pytest

from ensembles import api
from ensembles import config as config_lib, trainer
from experiments.configs import dst_ensemble as dst_config
from conftest import tiny_config


def _cfg(**overrides):
  c = tiny_config(**{"model.hidden": (32,), "training.epochs": 3, **overrides})
  c.method = overrides.get("method", "dst_ensemble")
  c.num_members = 3
  c.sparse = dst_config.get_config().sparse
  c.sparse.update_every = 2
  return c


def _train(cfg, workdir):
  """The dst recipe, capturing the state it starts training from and the final state."""
  captured = {}
  original_fit = trainer.fit

  def fit(run, state, *args, **kwargs):
    captured["init"] = jax.tree.map(np.array, state)  # copy: the train step donates its input
    out = original_fit(run, state, *args, **kwargs)
    captured["final"] = out[0]
    return out

  trainer_fit = trainer.fit
  trainer.fit = fit
  try:
    results = api.run_config(cfg, str(workdir))
  finally:
    trainer.fit = trainer_fit
  return results, captured


def test_dst_members_masks_exact_changing_and_zero(tmp_path, fake_data):
  cfg = _cfg()
  config_lib.validate(cfg)
  results, cap = _train(cfg, tmp_path)
  init_masks, final = cap["init"].opt_state.masks, cap["final"]
  kernel0, kernel1 = init_masks["Dense_0"]["kernel"], final.opt_state.masks["Dense_0"]["kernel"]
  # counts per member and layer are constant, the topology moved, members differ
  np.testing.assert_array_equal(kernel0.reshape(3, -1).sum(1), kernel1.reshape(3, -1).sum(1))
  assert not np.array_equal(kernel0, kernel1)
  assert not np.array_equal(kernel1[0], kernel1[1])
  for p, m in zip(jax.tree.leaves(final.params), jax.tree.leaves(final.opt_state.masks)):
    assert bool((np.asarray(p)[~np.asarray(m)] == 0).all())
  assert results["sparsity"]["realised_prunable_density"] == pytest.approx(0.2, abs=1e-3)
  assert results["flops"]["flops_rule"] == "rigl" and results["flops"]["train_x_dense"] < 3.0
  assert results["test"]["ensemble"]["accuracy"] > 0.3


def test_static_sparse_masks_do_not_change(tmp_path, fake_data):
  cfg = _cfg(method="static_sparse_ensemble")
  results, cap = _train(cfg, tmp_path)
  jax.tree.map(np.testing.assert_array_equal, cap["init"].opt_state.masks, cap["final"].opt_state.masks)
  assert results["flops"]["flops_rule"] == "static"


@pytest.mark.parametrize("field,value,message", [
    ("sparsity", 1.0, r"config.sparse.sparsity must be in \[0, 1\)"),
    ("update_every", 0, "config.sparse.update_every"),
    ("drop_fraction", 1.0, r"config.sparse.drop_fraction must be in \(0, 1\)"),
    ("drop_fraction", 0.0, r"config.sparse.drop_fraction must be in \(0, 1\)"),
    ("growth", "hebbian", "config.sparse.growth must be one of"),
    ("density_rule", "snip", "config.sparse.density_rule must be one of"),
])
def test_bad_sparse_config(field, value, message):
  cfg = _cfg()
  cfg.sparse[field] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(cfg)


def test_model_without_prunable_leaves_is_named():
  from ensembles import sparse
  with pytest.raises(ValueError, match="no prunable leaves"):
    sparse.make_plan({"BatchNorm_0": {"scale": np.ones(3)}}, 0.5)
