"""TreeNet: a shared trunk and M branches around the shipped models, and the method end to end."""
import jax
import numpy as np
import pytest

import ensembles
from ensembles import flops
from ensembles.models import LeNet, MLP, ResNet, treenet

M = 3
MODELS = {"mlp": (MLP(5, hidden=(16, 8)), (6, 6, 1), 1),
          "lenet": (LeNet(5, features=(4, 6), hidden=(8,)), (8, 8, 1), 2),
          "resnet": (ResNet(5, depth=8), (8, 8, 3), 3)}  # the split inside stage 2: shortcuts cross it


def _member(tree, m):
  """Member m's variables as the plain model's: every ``branches`` subtree replaced by its copy m."""
  if not isinstance(tree, dict):
    return tree
  if treenet.BRANCHES in tree:
    return jax.tree.map(lambda v: v[m], dict(tree[treenet.BRANCHES]))
  return {k: _member(v, m) for k, v in tree.items()}


def _init(name):
  inner, shape, shared = MODELS[name]
  net = treenet.TreeNet(inner, M, shared)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, *shape))
  return inner, net, net.init(jax.random.PRNGKey(0), x), x, shared


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_member_is_the_trunk_and_its_own_branch(name):
  inner, net, variables, x, _ = _init(name)
  logits = net.apply(variables, x)
  assert logits.shape == (4, M, 5)
  for m in range(M):
    plain = {c: _member(dict(jax.tree.map(lambda v: v, dict(tree)))["inner"], m) for c, tree in variables.items()}
    np.testing.assert_allclose(logits[:, m], inner.apply(plain, x), rtol=1e-4, atol=1e-5)
  assert not np.allclose(logits[:, 0], logits[:, 1])  # branches start from their own keys


@pytest.mark.parametrize("name", sorted(MODELS))
def test_trunk_is_one_copy_and_every_later_layer_m_copies(name):
  inner, net, variables, x, shared = _init(name)
  costs = flops.layer_costs(net, x.shape[1:])  # dense/conv layers in call order
  branched = [f"['{treenet.BRANCHES}']" in c.path for c in costs]
  assert branched == [False] * shared + [True] * (len(costs) - shared)
  plain = sum(v.size for v in jax.tree.leaves(inner.init(jax.random.PRNGKey(0), x)["params"]))
  total = sum(v.size for v in jax.tree.leaves(variables["params"]))
  branch = sum(v.size for p, v in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
               if treenet.BRANCHES in jax.tree_util.keystr(p)) // M
  assert total == plain + (M - 1) * branch  # trunk once, each later layer (and its BatchNorm) M times
  per_layer = [c.flops for c in costs]
  assert treenet.tree_flops(costs, M) == sum(per_layer[:shared]) + M * sum(per_layer[shared:])


def test_a_trunk_as_deep_as_the_model_is_refused():
  inner, shape, _ = MODELS["mlp"]
  with pytest.raises(ValueError, match=r"treenet.shared_layers \(3\) must be below the model's 3 dense and conv"):
    treenet.TreeNet(inner, M, 3).init(jax.random.PRNGKey(0), np.zeros((1, *shape), np.float32))


def test_method_counts_the_trunk_once():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 255, (256, 6, 6, 1)).astype(np.uint8)
  y = (x.reshape(256, -1).mean(1) > 127).astype(np.int32) + 2 * (x[:, 0, 0, 0] > 127)
  result = ensembles.fit("treenet", MLP(4, hidden=(16, 8)), {"x_train": x, "y_train": y, "x_test": x[:64],
                                                           "y_test": y[:64]}, epochs=2, batch_size=32)
  r = result.results
  assert r["num_members"] == M and result.ensemble.num_members == 1
  assert result.ensemble.member_probs(x[:64]).shape == (M, 64, 4)
  trunk, branch = 2.0 * 36 * 16, 2.0 * (16 * 8 + 8 * 4)
  assert r["flops"]["forward_flops_dense"] == trunk + branch  # one member
  assert r["flops"]["inference_flops"] == pytest.approx(trunk + M * branch, rel=1e-12)
  assert r["flops"]["train_flops"] == pytest.approx(r["train_steps"] * 32 * 3 * (trunk + M * branch), rel=1e-12)


def test_each_branch_gets_the_gradient_it_would_get_alone():
  """The members' losses are summed: branch m's gradient is member m's own, as a plain network on the
  same batch; the trunk's is the sum over the members."""
  from ensembles import train as train_lib
  inner, net, variables, x, shared = _init("mlp")
  y = jax.numpy.array([0, 1, 2, 3])
  batch = train_lib.Batch(x, y, jax.numpy.arange(4))
  state = lambda params: train_lib.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params, model_state={},
                                              opt_state=None, rng=jax.random.PRNGKey(0))
  grads = lambda model, params: train_lib.make_member_gradients(model, mean=np.zeros(1), std=np.ones(1))(
      state(params), batch)[0]
  tree = grads(net, variables["params"])["inner"]
  alone = [grads(inner, _member(dict(variables["params"])["inner"], m)) for m in range(M)]
  for m in range(M):
    for layer in ("Dense_1", "Dense_2"):
      np.testing.assert_allclose(tree[layer]["branches"]["kernel"][m], alone[m][layer]["kernel"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(tree["Dense_0"]["kernel"], sum(a["Dense_0"]["kernel"] for a in alone), rtol=1e-5, atol=1e-7)


def test_layers_called_with_arguments_of_their_own_and_a_single_member():
  """A user's model that passes BatchNorm's mode at call time; and M = 1 (one member, still a
  network of the protocol) trains through ensembles.fit."""
  import flax.linen as nn

  class CallTimeNorm(nn.Module):
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train=False):
      x = nn.relu(nn.Dense(8)(x))
      x = nn.BatchNorm(momentum=0.9)(nn.Dense(8)(x), use_running_average=not train)
      return nn.Dense(self.num_classes)(x)

  rng = np.random.default_rng(0)
  data = {"x_train": rng.normal(size=(64, 5)).astype(np.float32), "y_train": rng.integers(0, 3, 64)}
  for method, m in (("treenet", 3), ("treenet", 1), ("batch_ensemble", 1), ("mimo", 1)):
    result = ensembles.fit(method, CallTimeNorm(), data, num_members=m, epochs=1, batch_size=16)
    assert result.results["num_members"] == m and result.predict(data["x_train"][:4]).shape == (4, 3)


def test_a_layer_it_cannot_branch_after_the_trunk_is_refused_by_name():
  import flax.linen as nn

  class WithLayerNorm(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.relu(nn.Dense(8)(x))
      return nn.Dense(3)(nn.LayerNorm()(nn.Dense(8)(x)))

  x = np.zeros((2, 5), np.float32)
  with pytest.raises(ValueError, match=r"layer inner/LayerNorm_0 \(LayerNorm\) has weights of its own after the shared"):
    treenet.TreeNet(WithLayerNorm(), M, 1).init(jax.random.PRNGKey(0), x)
  # before the split it is part of the trunk: allowed
  assert treenet.TreeNet(WithLayerNorm(), M, 2).apply(
      treenet.TreeNet(WithLayerNorm(), M, 2).init(jax.random.PRNGKey(0), x), x).shape == (2, M, 3)
