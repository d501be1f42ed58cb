"""SWA: the running average is the mean of the weights at the averaging steps, per member; the
BatchNorm moments are the batch's own mean and variance whatever the layer's momentum, and the
recomputed statistics are their mean over the training batches."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensembles import weight_averaging
from ensembles.methods import swa
from test_methods_end_to_end import _config, _saved_ensemble, _train


def test_running_average_is_the_mean_of_the_weights_seen():
  rng = np.random.default_rng(0)
  weights = [{"w": rng.normal(size=(2, 3, 4)).astype(np.float32)} for _ in range(5)]  # 5 snapshots of M = 2
  average, count = jax.tree.map(np.zeros_like, weights[0]), jnp.zeros(2, jnp.int32)
  for w in weights:
    average, count = weight_averaging.running_average(average, w, count)
  np.testing.assert_allclose(average["w"], np.mean([w["w"] for w in weights], 0), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(count, [5, 5])
  # members at different counts average separately
  mixed, n = weight_averaging.running_average({"w": np.stack([np.ones(3), np.ones(3)])},
                                              {"w": np.stack([np.full(3, 4.0), np.full(3, 4.0)])}, jnp.array([1, 3]))
  np.testing.assert_allclose(mixed["w"], [[2.5] * 3, [1.75] * 3])
  np.testing.assert_array_equal(n, [2, 4])


class DenseBN(nn.Module):
  momentum: float

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Dense(5, name="dense")(x.reshape(len(x), -1))
    return nn.Dense(3)(nn.BatchNorm(use_running_average=not train, momentum=self.momentum, name="bn")(h))


@pytest.mark.parametrize("momentum", [0.9, 0.99])
def test_batch_moments_are_the_batch_mean_and_variance_whatever_the_momentum(momentum):
  model = DenseBN(momentum)
  images = np.random.default_rng(1).integers(0, 256, size=(3, 16, 2, 2, 1)).astype(np.uint8)  # 3 batches
  mean, std = np.array([0.4]), np.array([0.2])  # in units of x / 255 (augment.normalize)
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  variables = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 2, 2, 1)), train=False))(keys)  # M = 2
  params = variables["params"]
  model_state = {"batch_stats": variables["batch_stats"]}
  moments = weight_averaging.make_batch_moments(model, execution="vmap", mean=mean, std=std)

  def by_hand(member, batch):
    x = (images[batch].reshape(16, -1).astype(np.float32) / 255.0 - 0.4) / 0.2
    h = x @ np.asarray(params["dense"]["kernel"][member]) + np.asarray(params["dense"]["bias"][member])
    return h.mean(0), h.var(0)

  got = moments(params, model_state, images[0])
  for member in range(2):
    mu, var = by_hand(member, 0)
    np.testing.assert_allclose(got["bn"]["mean"][member], mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["bn"]["var"][member], var, rtol=1e-3, atol=1e-5)
  state = weight_averaging.recompute_batch_stats(moments, params, model_state, images.reshape(48, 2, 2, 1), 16)
  for member in range(2):
    mus, vars_ = zip(*[by_hand(member, b) for b in range(3)])
    np.testing.assert_allclose(state["batch_stats"]["bn"]["mean"][member], np.mean(mus, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state["batch_stats"]["bn"]["var"][member], np.mean(vars_, 0), rtol=1e-3, atol=1e-5)


def test_schedule_and_averaging_steps():
  schedule = swa.swa_schedule(0.1, 0.5, 100)
  lr = [float(schedule(s)) for s in (0, 50, 70, 90, 95, 100)]
  np.testing.assert_allclose(lr, [0.1, 0.1, 0.1 * (1 - 0.5 * 0.5), 0.05, 0.05, 0.05], rtol=1e-6)
  assert swa.averaging_steps(100, 10, 0.75) == [80, 90, 100]  # epoch ends from step 75 on
  assert swa.averaging_steps(12, 5, 0.9) == [12]  # no epoch end after the start: the last step


def test_swa_members_are_the_mean_of_their_weights_at_the_averaging_steps(tmp_path, fake_data):
  cfg = _config("swa", num_members=2, steps_per_dispatch=1, **{"training.epochs": 3, "swa.start_fraction": 0.5})
  results, recorded, _ = _train(cfg, tmp_path, record={8, 12})  # 4 steps per epoch: averaged at 8 and 12
  assert results["swa"]["averaged_steps"] == [8, 12] and results["num_members"] == 2
  saved = _saved_ensemble(tmp_path)["params"]
  expected = jax.tree.map(lambda a, b: (np.asarray(a) + np.asarray(b)) / 2, recorded[8].params, recorded[12].params)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), saved, expected)
  assert not np.allclose(saved["Dense_0"]["kernel"][0], saved["Dense_0"]["kernel"][1])  # two members
