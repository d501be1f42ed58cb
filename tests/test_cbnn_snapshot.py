"""CBNN and snapshot ensembles end to end on a tiny dataset."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensembles import api
from ensembles import checkpoints, config as config_lib
from ensembles import collected
from ensembles.methods import snapshot_ensemble
from ensembles.models import MLP
from experiments.configs import cbnn as cbnn_config
from experiments.configs import snapshot_ensemble as snapshot_config
from conftest import method_config


def _cfg(module, **overrides):
  return method_config(module, **{"training.epochs": 3, **overrides})


def test_segment_decay_lowers_the_lr_before_each_checkpoint(fake_data):
  """cbnn.segment_decay_fraction f: lr x segment_decay over the last f of each segment, no restart
  above the configured schedule (constant here: 0.05 then 0.005 in the last quarter)."""
  from ensembles import context  # pylint: disable=g-import-not-at-top
  from ensembles.methods import cbnn  # pylint: disable=g-import-not-at-top
  cfg = _cfg(cbnn_config, **{"training.lr_schedule": "constant", "training.lr": 0.05, "training.epochs": 4,
                             "num_members": 2})
  cfg.cbnn.segment_decay_fraction, cfg.cbnn.segment_decay = 0.25, 0.1
  config_lib.validate(cfg)
  run = context.build(cfg, MLP(num_classes=4, hidden=(8,)), fake_data, None)
  options = api.get_method("cbnn").read_options(cfg)
  schedule = cbnn.checkpoint_schedule(run, options.cbnn)
  total = run.total_steps  # 4 epochs x 4 steps: segments [0, 8), [8, 16), decay from 6 and 14
  got = [float(schedule(t)) for t in range(total)]
  assert got == pytest.approx([0.05] * 6 + [0.005] * 2 + [0.05] * 6 + [0.005] * 2)
  cfg.cbnn.segment_decay_fraction = 0.0
  assert cbnn.checkpoint_schedule(run, api.get_method("cbnn").read_options(cfg).cbnn) is None


def test_segment_ends():
  assert collected.segment_ends(12, 3) == [4, 8, 12] and collected.segment_ends(10, 3) == [3, 7, 10]


def test_cbnn_checkpoints_alphas_and_weights(tmp_path, fake_data):
  cfg = _cfg(cbnn_config)
  config_lib.validate(cfg)
  results = api.run_config(cfg, str(tmp_path))
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
  events = [json.loads(l) for l in open(tmp_path / "metrics.jsonl") if json.loads(l).get("event", "").startswith("checkpoint")]
  assert [e["step"] for e in events] == [4, 8, 12]
  assert len(results["test"]["ensemble"]["per_class_accuracy"]) == 4


def _mlp_probs_by_hand(params, images, mean=0.5, std=0.25):
  """Softmax of a ReLU MLP in numpy (one member's params): the members' predictions computed
  without the library's predictor."""
  x = ((images.reshape(len(images), -1).astype(np.float64) / 255.0) - mean) / std
  layers = sorted(params, key=lambda name: int(name.split("_")[1]))
  for i, name in enumerate(layers):
    x = x @ np.asarray(params[name]["kernel"], np.float64) + np.asarray(params[name]["bias"], np.float64)
    if i < len(layers) - 1:
      x = np.maximum(x, 0.0)
  e = np.exp(x - x.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def _saved_checkpoints(workdir, fake_data):
  like = {"params": {"Dense_0": {"kernel": jnp.zeros((64, 32)), "bias": jnp.zeros(32)},
                     "Dense_1": {"kernel": jnp.zeros((32, 4)), "bias": jnp.zeros(4)}},
          "model_state": {}, "sample_weights": jnp.zeros(128)}
  members, metas = checkpoints.load_members(str(workdir / "members"), like)
  probs = np.stack([_mlp_probs_by_hand(jax.tree.map(lambda x: np.asarray(x)[k], members["params"]), fake_data.x_test)
                    for k in range(len(metas))])
  return probs, np.array([meta["alpha"] for meta in metas])


def test_cbnn_prediction_is_alpha_weighted_mean(tmp_path, fake_data):
  results = api.run_config(_cfg(cbnn_config), str(tmp_path))
  probs, alphas = _saved_checkpoints(tmp_path, fake_data)
  assert list(alphas) == results["cbnn"]["alphas"] and len(set(alphas.tolist())) == 3
  ensemble = np.einsum("m,mnk->nk", alphas / alphas.sum(), probs)
  y = fake_data.y_test
  assert results["test"]["ensemble"]["accuracy"] == pytest.approx(np.mean(ensemble.argmax(1) == y))
  assert results["test"]["ensemble"]["nll"] == pytest.approx(-np.mean(np.log(ensemble[np.arange(len(y)), y])),
                                                             rel=1e-5)
  unweighted = probs.mean(0)  # the alphas matter: the unweighted mean scores differently
  assert results["test"]["ensemble"]["nll"] != pytest.approx(-np.mean(np.log(unweighted[np.arange(len(y)), y])),
                                                             rel=1e-5)


def test_cbnn_weighted_vote_end_to_end(tmp_path, fake_data):
  results = api.run_config(_cfg(cbnn_config, **{"cbnn.combine": "vote"}), str(tmp_path))
  probs, alphas = _saved_checkpoints(tmp_path, fake_data)
  y = fake_data.y_test
  votes = np.zeros((len(y), 4))
  for k in range(3):  # each checkpoint votes for its argmax class with weight alpha_k
    votes[np.arange(len(y)), probs[k].argmax(1)] += alphas[k] / alphas.sum()
  assert results["test"]["ensemble"]["accuracy"] == pytest.approx(np.mean(votes.argmax(1) == y))
  nll = -np.mean(np.log(np.maximum(votes[np.arange(len(y)), y], 1e-12)))  # vote fractions as probabilities
  assert results["test"]["ensemble"]["nll"] == pytest.approx(nll, rel=1e-6)


def test_snapshot_schedule_restarts_and_snapshots(tmp_path, fake_data):
  lr = snapshot_ensemble.cyclic_cosine(0.1, 12, 3)
  got = [float(lr(t)) for t in (0, 2, 4, 6, 8, 11)]
  assert got == pytest.approx([0.1, 0.05, 0.1, 0.05, 0.1, 0.1 * 0.5 * (1 + np.cos(np.pi * 3 / 4))])
  results = api.run_config(_cfg(snapshot_config), str(tmp_path))
  assert results["num_members"] == 3 and sorted(p.name for p in (tmp_path / "members").iterdir()) == ["0", "1", "2"]
  assert results["test"]["diversity"]["disagreement"] > 0  # snapshots of different cycles disagree somewhere


@pytest.mark.parametrize("module,overrides,message", [
    (cbnn_config, {"num_members": 0}, "config.num_members must be an integer >= 1"),
    (cbnn_config, {"num_members": 4}, r"config.num_members must be in \[1, training.epochs=3\] for method 'cbnn' \(checkpoints\)"),
    (cbnn_config, {"cbnn.rule": "adaboost"}, "config.cbnn.rule must be one of"),
    (cbnn_config, {"cbnn.combine": "median"}, "config.cbnn.combine must be one of"),
    (cbnn_config, {"dataset.imbalance_ratio": 0.5}, "config.dataset.imbalance_ratio must be a number >= 1"),
    (snapshot_config, {"num_members": 5}, r"config.num_members must be in \[1, training.epochs=3\] for method 'snapshot_ensemble' \(snapshots\)"),
])
def test_bad_config(module, overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(_cfg(module, **overrides))


def test_snapshot_boosting_is_the_snapshot_schedule_with_cbnn_reweighting():
  """Snapshot Boosting's first cycle is the snapshot ensemble's (same restarts, uniform weights); its
  later cycles differ (reweighted samples); CBNN's first checkpoint differs (no restarts); the
  snapshots carry SAMME α weights."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 255, (192, 6, 6, 1)).astype(np.uint8)
  y = (x.reshape(192, -1).mean(1) > 127).astype(np.int32) + 2 * (x[:, 0, 0, 0] > 127)
  data = {"x_train": x, "y_train": y, "x_test": x[:64], "y_test": y[:64]}
  fit = lambda method: api.fit(method, MLP(4, hidden=(16,)), data, epochs=3, batch_size=32, lr=0.2)
  boosted, snapshots, cbnn = fit("snapshot_boosting"), fit("snapshot_ensemble"), fit("cbnn")
  member = lambda result, k: jax.tree.map(lambda v: np.asarray(v)[k], result.ensemble.params)
  jax.tree.map(np.testing.assert_array_equal, member(boosted, 0), member(snapshots, 0))
  for k in (1, 2):
    assert not np.allclose(member(boosted, k)["Dense_0"]["kernel"], member(snapshots, k)["Dense_0"]["kernel"])
  assert not np.allclose(member(boosted, 0)["Dense_0"]["kernel"], member(cbnn, 0)["Dense_0"]["kernel"])
  alphas = boosted.results["snapshot_boosting"]["alphas"]
  assert len(alphas) == 3 and all(a > 0 for a in alphas) and boosted.ensemble.weights == tuple(alphas)
  assert boosted.results["snapshot_boosting"]["weight_max_over_mean"][1] > 1.0  # reweighted after snapshot 1
