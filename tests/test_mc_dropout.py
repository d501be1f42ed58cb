"""MC dropout: passes differ, their mean is the reported prediction."""
import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from ensembles import api
from ensembles import data as data_lib

from ensembles import config as config_lib, train
from ensembles.models import build_model
from experiments.configs import mc_dropout as mc_config
from conftest import make_dataset, method_config


def test_mc_predict_passes_differ_and_deterministic_predict_does_not(tiny_dataset):
  model = build_model("mlp", tiny_dataset.num_classes, {"hidden": (32,), "dropout_rate": 0.5})
  state = train.init_state(model, optax.sgd(0.1), jax.random.PRNGKey(0), 1, tiny_dataset.image_shape)
  mc = train.make_mc_predict(model, num_passes=5, key=jax.random.PRNGKey(1), execution="vmap",
                             mean=tiny_dataset.mean, std=tiny_dataset.std)
  probs = np.asarray(train.predict_probs(mc, state, tiny_dataset.x_test, 16))
  assert probs.shape == (5, len(tiny_dataset.y_test), tiny_dataset.num_classes)
  assert not np.allclose(probs[0], probs[1])
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  again = np.asarray(train.predict_probs(mc, state, tiny_dataset.x_test, 16))
  np.testing.assert_array_equal(probs, again)  # fixed pass keys: reproducible
  plain = train.make_predict(model, execution="vmap", mean=tiny_dataset.mean, std=tiny_dataset.std)
  det = np.asarray(train.predict_probs(plain, state, tiny_dataset.x_test, 16))
  np.testing.assert_array_equal(det, np.asarray(train.predict_probs(plain, state, tiny_dataset.x_test, 16)))
  assert not np.allclose(det[0], probs[0])


class _DropoutOnly(nn.Module):
  """Logits = dropout(x) @ W: training mode and an MC pass differ only in how dropout is reached."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dropout(0.5, deterministic=not train)(x.reshape((x.shape[0], -1)).astype("float32"))
    return nn.Dense(4)(x)


def test_mc_pass_draws_the_mask_training_draws(tiny_dataset):
  """The interceptor that turns dropout on at inference draws exactly nn.Dropout's training mask:
  a pass with key k equals the model applied in training mode with dropout key k. Any Flax model
  works, with no flag of its own."""
  model = _DropoutOnly()
  x = tiny_dataset.x_test[:16]
  variables = model.init(jax.random.PRNGKey(0), x)
  key = jax.random.PRNGKey(3)
  mc = train.make_mc_predict(model, num_passes=2, key=key, execution="vmap", mean=np.zeros(1), std=np.ones(1))
  stacked = jax.tree.map(lambda v: v[None], variables["params"])
  passes = np.asarray(mc(stacked, {}, x))  # [2, B, K]
  xs = x.astype(np.float32) / 255.0
  for t in range(2):
    logits = model.apply(variables, xs, train=True, rngs={"dropout": jax.random.fold_in(key, t)})
    np.testing.assert_allclose(passes[t], jax.nn.softmax(logits), rtol=1e-5, atol=1e-7)
  assert train.dropout_rates(model, x.shape[1:]) == [0.5]
  assert train.dropout_rates(build_model("mlp", 4, {"hidden": (8,)}), x.shape[1:]) == []


def _cfg(**overrides):
  return method_config(mc_config, **overrides)


def test_method_reports_the_mean_of_the_passes(tmp_path, monkeypatch):
  dataset = make_dataset(n_train=128, n_val=16, n_test=32)
  monkeypatch.setattr(data_lib, "load_dataset", lambda _: dataset)
  captured = {}
  original = api.evaluate

  def evaluate(run, ensemble, eval_cfg=None):
    captured["probs"] = ensemble.member_probs(dataset.x_test)
    return original(run, ensemble, eval_cfg)

  monkeypatch.setattr(api, "evaluate", evaluate)
  cfg = _cfg()
  config_lib.validate(cfg)
  results = api.run_config(cfg, str(tmp_path))
  probs = captured["probs"]
  assert probs.shape[0] == cfg.mc_dropout.num_passes == results["num_members"]
  mean, y = np.asarray(probs, np.float64).mean(0), dataset.y_test  # the reported metrics, by hand
  assert results["test"]["ensemble"]["accuracy"] == pytest.approx(np.mean(mean.argmax(1) == y))
  assert results["test"]["ensemble"]["nll"] == pytest.approx(-np.mean(np.log(mean[np.arange(len(y)), y])), rel=1e-5)
  assert results["test"]["ensemble"]["brier"] == pytest.approx(
      np.mean(np.sum((mean - np.eye(4)[y]) ** 2, axis=1)), rel=1e-5)
  assert results["test"]["diversity"]["disagreement"] > 0
  assert results["flops"]["inference_x_dense"] == cfg.mc_dropout.num_passes


@pytest.mark.parametrize("overrides,message", [
    ({"num_members": 3}, "config.num_members must be 1 for method 'mc_dropout'"),
    ({"model.dropout_rate": 0.0}, "config.model.dropout_rate must be > 0"),
    ({"mc_dropout.num_passes": 1}, "config.mc_dropout.num_passes must be an integer >= 2"),
])
def test_bad_mc_config(overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(_cfg(**overrides))
