"""CBNN and snapshot ensembles end to end on a tiny dataset."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from ensembles import checkpoints, config as config_lib, metrics, trainer
from ensembles.methods import cbnn, common, snapshot_ensemble
from experiments.configs import cbnn as cbnn_config
from experiments.configs import snapshot_ensemble as snapshot_config
from conftest import method_config


def _cfg(module, **overrides):
  return method_config(module, **{"training.epochs": 3, **overrides})


def test_segment_ends():
  assert cbnn.segment_ends(12, 3) == [4, 8, 12] and cbnn.segment_ends(10, 3) == [3, 7, 10]


def test_cbnn_checkpoints_alphas_and_weights(tmp_path, fake_data):
  cfg = _cfg(cbnn_config)
  config_lib.validate(cfg)
  results = cbnn.train_and_evaluate(cfg, str(tmp_path))
  alphas = results["cbnn"]["alphas"]
  assert len(alphas) == 3 and all(np.isfinite(alphas)) and all(a > 0 for a in alphas)
  # checkpoints and alphas round-trip through Orbax
  like = {"params": {"Dense_0": {"kernel": jnp.zeros((64, 32)), "bias": jnp.zeros(32)},
                     "Dense_1": {"kernel": jnp.zeros((32, 4)), "bias": jnp.zeros(4)}},
          "model_state": {}, "sample_weights": jnp.zeros(128)}
  members, metas = checkpoints.load_members(str(tmp_path / "members"), like)
  assert [m["alpha"] for m in metas] == alphas
  w = np.asarray(members["sample_weights"])
  np.testing.assert_allclose(w[0], 1.0)  # the first segment trains with uniform weights
  np.testing.assert_allclose(w.mean(1), 1.0, rtol=1e-5)
  assert w[1].max() > 1.0 > w[1].min()  # reweighted before the second segment
  events = [json.loads(l) for l in open(tmp_path / "metrics.jsonl") if "event" in l]
  assert [e["step"] for e in events] == [4, 8, 12]
  assert len(results["test"]["ensemble"]["per_class_accuracy"]) == 4


def test_cbnn_prediction_is_alpha_weighted_mean(tmp_path, fake_data, monkeypatch):
  seen = {}
  original = metrics.evaluate_ensemble

  def spy(member_probs, labels, weights=None, combine="mean"):
    seen.setdefault("calls", []).append((np.asarray(member_probs), weights, combine))
    return original(member_probs, labels, weights, combine)

  monkeypatch.setattr(metrics, "evaluate_ensemble", spy)
  results = cbnn.train_and_evaluate(_cfg(cbnn_config), str(tmp_path))
  probs, weights, combine = seen["calls"][0]
  assert weights == results["cbnn"]["alphas"] and combine == "mean"
  expected = metrics.ensemble_probs(probs, weights)
  assert results["test"]["ensemble"]["accuracy"] == pytest.approx(metrics.accuracy(expected, fake_data.y_test))


def test_cbnn_resume_restores_sample_weights(tmp_path, fake_data):
  cfg = _cfg(cbnn_config)
  full = cbnn.train_and_evaluate(cfg, str(tmp_path / "full"))

  class Stop(Exception):
    pass

  calls = {"n": 0}
  original_fit = trainer.fit

  def interrupted_fit(state, train_step, *args, **kwargs):
    def step(*a):
      if calls["n"] == 10:
        raise Stop()
      calls["n"] += 1
      return train_step(*a)
    return original_fit(state, step, *args, **kwargs)

  trainer.fit = interrupted_fit
  try:
    with pytest.raises(Stop):
      cbnn.train_and_evaluate(cfg, str(tmp_path / "cut"))
  finally:
    trainer.fit = original_fit
  assert checkpoints.make_manager(str(tmp_path / "cut" / "checkpoints")).latest_step() == 8
  resumed = cbnn.train_and_evaluate(cfg, str(tmp_path / "cut"))
  assert resumed["cbnn"]["alphas"] == pytest.approx(full["cbnn"]["alphas"], rel=1e-6)
  assert resumed["test"]["ensemble"]["accuracy"] == full["test"]["ensemble"]["accuracy"]


def test_snapshot_schedule_restarts_and_snapshots(tmp_path, fake_data):
  lr = snapshot_ensemble.cyclic_cosine(0.1, 12, 3)
  got = [float(lr(t)) for t in (0, 2, 4, 6, 8, 11)]
  assert got == pytest.approx([0.1, 0.05, 0.1, 0.05, 0.1, 0.1 * 0.5 * (1 + np.cos(np.pi * 3 / 4))])
  results = snapshot_ensemble.train_and_evaluate(_cfg(snapshot_config), str(tmp_path))
  assert results["num_members"] == 3 and sorted(p.name for p in (tmp_path / "members").iterdir()) == ["0", "1", "2"]
  assert results["test"]["diversity"]["disagreement"] >= 0


@pytest.mark.parametrize("module,overrides,message", [
    (cbnn_config, {"num_members": 0}, "config.num_members must be an integer >= 1"),
    (cbnn_config, {"num_members": 4}, r"config.num_members \(checkpoints\) must be in \[1, training.epochs=3\]"),
    (cbnn_config, {"cbnn.rule": "adaboost"}, "config.cbnn.rule must be one of"),
    (cbnn_config, {"cbnn.combine": "median"}, "config.cbnn.combine must be one of"),
    (cbnn_config, {"dataset.imbalance_ratio": 0.5}, "config.dataset.imbalance_ratio must be a number >= 1"),
    (snapshot_config, {"num_members": 5}, r"config.num_members \(snapshots\) must be in \[1, training.epochs=3\]"),
])
def test_bad_config(module, overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(_cfg(module, **overrides))
