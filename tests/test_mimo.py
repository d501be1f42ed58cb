"""MIMO: the members' training rows, the network's shapes around the shipped models, the method end to end."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ensembles
from ensembles import flops
from ensembles import train as train_lib
from ensembles.errors import ConfigError
from ensembles.models import LeNet, MLP, ResNet, mimo

M, B, K = 3, 16, 5


@pytest.mark.parametrize("rho,r", [(0.0, 1), (0.5, 1), (0.25, 2)])
def test_rows_give_each_member_its_own_shuffle_and_repeat_a_fraction(rho, r):
  idx = np.asarray(mimo.mimo_rows(jax.random.PRNGKey(0), B, M, rho, r))
  assert idx.shape == (r * B, M)
  for m in range(M):  # every member sees every example of the batch r times
    np.testing.assert_array_equal(np.bincount(idx[:, m], minlength=B), np.full(B, r))
  shared = int(round(rho * r * B))
  independent = r * B - shared
  same = (idx == idx[:, :1]).all(1)
  assert same[independent:].all()  # input repetition: the last ρ·r·B rows give all members one image
  # the other rows are independent shuffles: member pairs rarely meet on the same example
  for a in range(M):
    for b in range(a + 1, M):
      assert np.mean(idx[:independent, a] == idx[:independent, b]) < 0.3
  other = np.asarray(mimo.mimo_rows(jax.random.PRNGKey(1), B, M, rho, r))
  assert not np.array_equal(idx, other)  # each step draws new rows


@pytest.mark.parametrize("inner,shape", [(MLP(M * K, hidden=(8,)), (6, 6, 1)),
                                         (LeNet(M * K, features=(4,), hidden=(8,)), (8, 8, 1)),
                                         (ResNet(M * K, depth=8), (8, 8, 3))])
def test_network_shapes_and_members_training_on_their_own_examples(inner, shape):
  net = mimo.MIMO(inner, M, K, input_repetition=0.0, batch_repetitions=2)
  x = jax.random.uniform(jax.random.PRNGKey(0), (B, *shape))
  variables = net.init(jax.random.PRNGKey(1), x[:1])
  kernels = [c.kernel_shape for c in flops.layer_costs(net, shape)]  # in call order
  # the first layer reads the M images (M x the channels), the last gives M x K logits
  assert kernels[0][-2] == M * (shape[-1] if len(kernels[0]) == 4 else int(np.prod(shape)))
  assert kernels[-1][-1] == M * K
  assert net.apply(variables, x).shape == (B, M, K)  # inference: one image, M predictions
  y, w = jnp.arange(B) % K, jnp.linspace(0.5, 1.5, B)
  xb, yb, wb = net.training_batch(jax.random.PRNGKey(2), x, y, w)
  assert xb.shape == (2 * B, M, *shape) and yb.shape == wb.shape == (2 * B, M)
  idx = np.asarray(mimo.mimo_rows(jax.random.PRNGKey(2), B, M, 0.0, 2))
  for m in range(M):  # member m's input, label and weight in a row all belong to one example
    np.testing.assert_array_equal(xb[:, m], x[idx[:, m]])
    np.testing.assert_array_equal(yb[:, m], y[idx[:, m]])
    np.testing.assert_array_equal(wb[:, m], w[idx[:, m]])
  kwargs = {"mutable": ["batch_stats"]} if "batch_stats" in variables else {}
  out = net.apply(variables, xb, train=True, **kwargs)
  assert (out[0] if kwargs else out).shape == (2 * B, M, K)


def test_inference_is_the_training_network_on_m_copies_of_the_image():
  net = mimo.MIMO(MLP(M * K, hidden=(8,)), M, K)
  x = jax.random.uniform(jax.random.PRNGKey(0), (B, 6, 6, 1))
  variables = net.init(jax.random.PRNGKey(1), x[:1])
  copies = jnp.broadcast_to(x[:, None], (B, M, 6, 6, 1))
  np.testing.assert_allclose(net.apply(variables, x), net.apply(variables, copies, train=True), rtol=1e-6)
  # head m reads channel block m: changing member 1's image changes the inputs of member 1's block only
  other = copies.at[:, 1].set(1.0 - x)
  stacked = jnp.moveaxis(other, 1, -2).reshape(B, 6, 6, M)
  np.testing.assert_array_equal(stacked[..., 1:2], (1.0 - x))
  np.testing.assert_array_equal(stacked[..., 0:1], x)


def test_method_end_to_end_reports_one_pass_and_repeated_rows():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 255, (256, 6, 6, 1)).astype(np.uint8)
  y = (x.reshape(256, -1).mean(1) > 127).astype(np.int32) + 2 * (x[:, 0, 0, 0] > 127)
  result = ensembles.fit("mimo", MLP(4, hidden=(16,)), {"x_train": x, "y_train": y, "x_test": x[:64], "y_test": y[:64]},
                         epochs=2, batch_size=32, batch_repetitions=2, input_repetition=0.5)
  r = result.results
  assert r["num_members"] == M and result.ensemble.num_members == 1
  probs = result.ensemble.member_probs(x[:64])
  assert probs.shape == (M, 64, 4) and np.abs(probs[0] - probs[1]).max() > 1e-3
  forward = 2.0 * (M * 36 * 16 + 16 * M * 4)  # the MIMO network: M images in, M x 4 logits out
  assert r["flops"]["forward_flops_dense"] == forward and r["flops"]["inference_flops"] == forward
  assert r["flops"]["train_flops"] == 2 * r["train_steps"] * 32 * 3 * forward  # r·B rows per step
  assert r["mimo"]["rows_per_step"] == 64
  loss = [rec["train_loss"] for rec in result.log if "train_loss" in rec]
  assert np.isfinite(loss).all()


def test_a_model_without_num_classes_is_refused_with_the_reason():
  import flax.linen as nn

  class NoClasses(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(3)(x.reshape(x.shape[0], -1))

  data = {"x_train": np.zeros((8, 3), np.float32), "y_train": np.zeros(8, int)}
  with pytest.raises(ConfigError, match="needs an integer num_classes field"):
    ensembles.fit("mimo", NoClasses(), data)
  with pytest.raises(ConfigError, match="config.mimo.input_repetition must be in"):
    ensembles.fit("mimo", MLP(2), data, input_repetition=1.0)


def test_weighted_loss_of_member_rows_is_the_mean_over_rows_and_members():
  logits = jax.random.normal(jax.random.PRNGKey(0), (4, M, K))
  y = jnp.arange(4 * M).reshape(4, M) % K
  w = jnp.ones((4, M))
  flat = train_lib.weighted_cross_entropy(logits.reshape(-1, K), y.reshape(-1), w.reshape(-1))
  assert float(train_lib.weighted_cross_entropy(logits, y, w)) == pytest.approx(float(flat), rel=1e-6)
