"""BatchEnsemble: the rank-1 layer family around the shipped models, and the method end to end."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ensembles
from ensembles import models
from ensembles import train as train_lib
from ensembles.errors import ConfigError
from ensembles.models import LeNet, MLP, ResNet, batch_ensemble
from ensembles.models.batch_ensemble import BatchEnsemble

M = 3
MODELS = {"mlp": (MLP(5, hidden=(16, 8)), (6, 6, 1)),
          "lenet": (LeNet(5, features=(4, 6), hidden=(8,)), (8, 8, 1)),
          "resnet": (ResNet(5, depth=8), (8, 8, 3))}  # BatchNorm, strided convs, shortcuts


def _init(inner, shape, fast_init="normal"):
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, *shape))
  wrapped = BatchEnsemble(inner, M, fast_init)
  return wrapped, wrapped.init(jax.random.PRNGKey(0), x), x


def _shared(variables):
  """The wrapped model's own variables: the fast weights dropped, the ``inner`` level removed."""
  drop = lambda tree: {k: drop(v) if isinstance(v, dict) else v for k, v in tree.items()
                       if not k.startswith("batch_ensemble_")}
  return {c: drop(dict(jax.tree.map(lambda a: a, v))["inner"]) for c, v in variables.items()}


def _member_variables(variables, m):
  """Member m as an ordinary network: every kernel W ∘ r_m s_mᵀ and bias b ∘ s_m (the defining equation)."""
  def layer(tree):
    if "batch_ensemble_in" not in tree:
      return {k: layer(v) if isinstance(v, dict) else v for k, v in tree.items()}
    r, s = tree["batch_ensemble_in"][m], tree["batch_ensemble_out"][m]
    out = {"kernel": tree["kernel"] * r[:, None] * s}
    if "bias" in tree:
      out["bias"] = tree["bias"] * s
    return out
  shared = _shared(variables)
  shared["params"] = layer(jax.tree.map(lambda a: a, dict(variables["params"]))["inner"])
  return shared


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fast_weights_at_one_give_the_shared_network_for_every_member(name):
  inner, shape = MODELS[name]
  wrapped, variables, x = _init(inner, shape, "ones")
  logits = wrapped.apply(variables, x)
  assert logits.shape == (4, M, 5)
  alone = inner.apply(_shared(variables), x)
  for m in range(M):
    np.testing.assert_allclose(logits[:, m], alone, rtol=1e-5, atol=1e-6)
  # in training mode too: BatchNorm's statistics over the M copies of the batch are the batch's
  trained, updates = wrapped.apply(variables, x, train=True, mutable=["batch_stats"]) if name == "resnet" else (
      wrapped.apply(variables, x, train=True), None)
  alone_trained = inner.apply(_shared(variables), x, train=True, mutable=["batch_stats"])[0] if name == "resnet" \
      else inner.apply(_shared(variables), x, train=True)
  np.testing.assert_allclose(trained[:, 0], alone_trained, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fast_init", ["normal", "random_sign"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_member_is_the_network_with_rank1_scaled_weights(name, fast_init):
  """Member m's logits equal the plain network with W ∘ r_m s_mᵀ, b ∘ s_m (fast weights from
  N(1, 0.5²), the default, or ±1)."""
  inner, shape = MODELS[name]
  wrapped, variables, x = _init(inner, shape, fast_init)
  logits = wrapped.apply(variables, x)
  fast = np.concatenate([np.ravel(v) for p, v in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
                         if "batch_ensemble_" in jax.tree_util.keystr(p)])
  if fast_init == "random_sign":
    assert set(np.unique(fast)) == {-1.0, 1.0}
  else:
    assert abs(fast.mean() - 1) < 0.1 and abs(fast.std() - 0.5) < 0.1
  for m in range(M):
    np.testing.assert_allclose(logits[:, m], inner.apply(_member_variables(variables, m), x), rtol=1e-4, atol=1e-5)
  assert not np.allclose(logits[:, 0], logits[:, 1])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_count_is_shared_plus_m_rank1_vectors_per_layer(name):
  inner, shape = MODELS[name]
  wrapped, variables, x = _init(inner, shape)
  shared = sum(v.size for v in jax.tree.leaves(inner.init(jax.random.PRNGKey(0), x)["params"]))
  kernels = [v.shape for p, v in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
             if jax.tree_util.keystr(p).endswith("['kernel']")]
  rank1 = sum(M * (k[-2] + k[-1]) for k in kernels)  # r_m [C_in] and s_m [C_out] per member and layer
  total = sum(v.size for v in jax.tree.leaves(variables["params"]))
  assert total == shared + rank1 and batch_ensemble.fast_weight_count(variables["params"]) == rank1


def test_training_loss_is_the_mean_of_the_members_losses_on_the_same_batch():
  inner, shape = MODELS["mlp"]
  wrapped, variables, x = _init(inner, shape)
  y = jnp.array([0, 1, 2, 3])
  xb, yb, wb = wrapped.training_batch(None, x, y, jnp.ones(4))
  assert yb.shape == (4, M) and (np.asarray(yb) == np.asarray(y)[:, None]).all() and xb is x
  logits = wrapped.apply(variables, xb, train=True)
  loss = train_lib.weighted_cross_entropy(logits, yb, wb)
  per_member = [train_lib.weighted_cross_entropy(logits[:, m], y, jnp.ones(4)) for m in range(M)]
  assert float(loss) == pytest.approx(float(np.mean(per_member)), rel=1e-6)


@pytest.mark.parametrize("networks", [1, 2])
def test_predictor_gives_each_member_of_each_network_in_order(networks):
  """The predictor's member axis: network-major, then the network's members in their order."""
  wrapped, variables, x = _init(*MODELS["mlp"])
  keys = jax.random.split(jax.random.PRNGKey(5), networks)
  stacked = jax.vmap(lambda k: wrapped.init(k, x))(keys)
  predict = train_lib.make_predict(wrapped, execution="vmap", mean=np.zeros(1), std=np.ones(1))
  probs = np.asarray(predict(stacked["params"], {}, x))
  assert probs.shape == (networks * M, 4, 5)
  for n in range(networks):
    one = jax.tree.map(lambda v: v[n], stacked)
    expected = np.moveaxis(np.asarray(jax.nn.softmax(wrapped.apply(one, x), -1)), 1, 0)  # [M, B, K]
    np.testing.assert_allclose(probs[n * M:(n + 1) * M], expected, rtol=1e-5, atol=1e-6)


def _fit(**fields):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 255, (256, 6, 6, 1)).astype(np.uint8)
  y = (x.reshape(256, -1).mean(1) > 127).astype(np.int32) + 2 * (x[:, 0, 0, 0] > 127)
  data = {"x_train": x, "y_train": y, "x_test": x[:64], "y_test": y[:64]}
  return ensembles.fit("batch_ensemble", MLP(4, hidden=(16,)), data, num_members=M, epochs=2, batch_size=32,
                       **fields), x[:64]


def test_method_trains_members_that_differ_and_reports_their_cost():
  result, x = _fit()
  r = result.results
  assert r["num_members"] == M and result.ensemble.num_members == 1  # one network holds the members
  probs = result.ensemble.member_probs(x)
  assert probs.shape == (M, 64, 4)
  assert np.abs(probs[0] - probs[1]).max() > 1e-2 and np.abs(probs[1] - probs[2]).max() > 1e-2
  shared = 36 * 16 + 16 + 16 * 4 + 4
  assert r["batch_ensemble"] == {"shared_weights": shared, "fast_weights": M * (36 + 16 + 16 + 4)}
  dense = 2.0 * (36 * 16 + 16 * 4)
  assert r["flops"]["forward_flops_dense"] == dense and r["flops"]["inference_flops"] == M * dense
  assert r["flops"]["train_flops"] == M * r["train_steps"] * 32 * 3 * dense  # the batch repeated M times


def test_members_started_equal_stay_equal():
  """Why the fast weights start random: members with equal fast weights see the same batch and get
  the same gradients, so training never separates them."""
  result, x = _fit(fast_init="ones")
  probs = result.ensemble.member_probs(x)
  np.testing.assert_array_equal(probs[0], probs[1])
  np.testing.assert_array_equal(probs[1], probs[2])


def test_unknown_fast_init_is_refused_by_name():
  with pytest.raises(ConfigError, match="config.batch_ensemble.fast_init must be one of"):
    ensembles.fit("batch_ensemble", MLP(2), {"x_train": np.zeros((8, 3)), "y_train": np.zeros(8, int)},
                  fast_init="zeros")


def test_a_wrapped_model_is_refused_where_a_recipe_reads_one_prediction_per_network():
  """A model that already holds members trains as one with 'single' (its M members reported), and is
  refused by name where the recipe would misread it (CBNN's reweighting) or wrap it again."""
  data = {"x_train": np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32),
          "y_train": np.arange(64) % 3}
  wrapped = BatchEnsemble(MLP(3, hidden=(8,)), M)
  single = ensembles.fit("single", wrapped, data, epochs=1, batch_size=16)
  assert single.ensemble.member_probs(data["x_train"][:4]).shape == (M, 4, 3)
  for method in ("cbnn", "snapshot_boosting", "swa", "mc_dropout", "batch_ensemble", "mimo", "treenet"):
    with pytest.raises(ConfigError, match=f"method '{method}' cannot train a model that already holds several members"):
      ensembles.fit(method, wrapped, data, epochs=3, num_members=1 if method in ("swa", "mc_dropout") else 3)


SHAPES = {"imagenet_resnet": (32, 32, 3), "efficientnet_b0": (32, 32, 3), "wide_resnet": (16, 16, 3),
          "resnet": (16, 16, 3)}


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_shipped_model_wraps_as_a_network_of_members(name):
  """BatchEnsemble, MIMO and TreeNet around each registered model give [B, M, K] (shapes only)."""
  from ensembles.models import mimo, treenet
  model = models.build_model(name, 10, {"depth": 10} if name == "wide_resnet" else {})
  shape = SHAPES.get(name, (28, 28, 1))
  x = jnp.zeros((2, *shape))
  for net in (BatchEnsemble(model, M), mimo.network(model, M), treenet.TreeNet(model, M, 2)):
    out = jax.eval_shape(lambda: net.apply(net.init(jax.random.PRNGKey(0), x), x))
    assert out.shape == (2, M, 10), (type(net).__name__, out.shape)
