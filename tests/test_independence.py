"""Members are independent where a user relies on it: each member sees its own data order, its own
dropout masks and its own augmentations. The batches, masks and augmented images themselves are
checked (not the keys that make them)."""
import dataclasses
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ensembles import api
from ensembles import train, trainer
from ensembles.models import build_model
from experiments.configs import deep_ensemble as deep_config
from conftest import make_dataset, method_config


def test_members_train_on_different_batches_each_epoch(tmp_path, fake_data, monkeypatch):
  """Through the deep ensemble's real training loop: the [M, B] indices handed to each step."""
  seen = []
  original_fit = trainer.fit

  def fit(run, state, *args, **kwargs):
    def spy_step(state, images, labels, idx):
      seen.append(np.asarray(idx))
      return run.train_step(state, images, labels, idx)

    def spy_chunk(state, images, labels, epoch_idx, start, count):  # the default: steps in chunks
      seen.extend(np.asarray(epoch_idx)[:, i] for i in range(int(start), int(start) + int(count)))
      return run.train_chunk(state, images, labels, epoch_idx, start, count)

    return original_fit(dataclasses.replace(run, train_step=spy_step, train_chunk=spy_chunk), state, *args, **kwargs)

  monkeypatch.setattr(trainer, "fit", fit)
  cfg = method_config(deep_config, hidden=(8,), num_members=3, **{"training.epochs": 2})
  api.run_config(cfg, str(tmp_path))
  steps_per_epoch = len(fake_data.y_train) // cfg.training.batch_size
  idx = np.stack(seen)  # [steps, M, B]
  assert idx.shape == (2 * steps_per_epoch, 3, cfg.training.batch_size)
  for epoch in range(2):
    orders = idx[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch].transpose(1, 0, 2).reshape(3, -1)
    for m in range(3):  # an epoch is a sample without replacement of the training set
      assert len(set(orders[m].tolist())) == orders.shape[1] and orders[m].max() < len(fake_data.y_train)
    for a in range(3):
      for b in range(a + 1, 3):  # the first batches hold different examples, the orders differ
        first_a, first_b = set(orders[a, :cfg.training.batch_size]), set(orders[b, :cfg.training.batch_size])
        assert len(first_a & first_b) < cfg.training.batch_size // 2, (epoch, a, b)
        assert np.mean(orders[a] == orders[b]) < 0.2
  for m in range(3):  # and a member reshuffles every epoch
    assert not np.array_equal(idx[:steps_per_epoch, m], idx[steps_per_epoch:, m])


class _ShowDropoutMask(nn.Module):
  """Logits = dropout(1) * w: the loss-side view of the dropout mask (kept units are 1 / (1 - rate))."""

  @nn.compact
  def __call__(self, x, train=False):
    w = self.param("w", nn.initializers.ones, (8,))
    return nn.Dropout(0.5, deterministic=not train)(jnp.ones((x.shape[0], 8))) * w


class _ShowInput(nn.Module):
  """Logits = the (augmented, normalised) input image, flattened, times a scalar weight."""

  @nn.compact
  def __call__(self, x, train=False):
    return x.reshape(x.shape[0], -1) * self.param("w", nn.initializers.ones, ())


def _member_aux(model, data, num_members=3, steps=(0,), crop_padding=0, flip=False):
  """aux["logits"] of every member at each step for the SAME batch (indices 0..15), [S, M, 16, K],
  through the training gradient function and the per-member state `init_state` creates."""
  state = train.init_state(model, optax.sgd(0.1), jax.random.PRNGKey(0), num_members, data.image_shape)
  gradients = train.make_member_gradients(model, mean=np.zeros(1), std=np.ones(1), crop_padding=crop_padding,
                                          flip=flip)
  batch = train.gather_batch(jnp.asarray(data.x_train), jnp.asarray(data.y_train), jnp.arange(16))
  out = []
  for step in steps:
    state = state.replace(step=jnp.full(num_members, step, jnp.int32))
    _, aux = jax.vmap(gradients, in_axes=(0, None))(state, batch)
    out.append(np.asarray(aux["logits"]))
  return np.stack(out)


def test_each_member_and_step_draws_its_own_dropout_mask():
  data = make_dataset(n_train=32, num_classes=8)
  masks = _member_aux(_ShowDropoutMask(), data, steps=(0, 1, 0)) > 0  # [3 steps, M, 16, 8]
  assert 0.4 < masks.mean() < 0.6  # rate 0.5
  for a in range(3):
    for b in range(a + 1, 3):  # members agree on a kept/dropped unit about half the time
      assert 0.3 < np.mean(masks[0, a] == masks[0, b]) < 0.7, (a, b)
  assert 0.3 < np.mean(masks[0] == masks[1]) < 0.7  # a new mask each step
  np.testing.assert_array_equal(masks[0], masks[2])  # the same step draws the same mask (resume)


def test_each_member_augments_its_batch_differently():
  data = make_dataset(n_train=32, shape=(6, 6, 1))
  seen = _member_aux(_ShowInput(), data, crop_padding=2, flip=True)[0].reshape(3, 16, 6, 6) * 255.0
  originals = data.x_train[:16, :, :, 0].astype(np.float32)
  for m in range(3):  # every augmented image is a flip and/or a shift (zero padded) of its original
    for i in range(16):
      padded = np.pad(originals[i], 2)
      candidates = [img[dy:dy + 6, dx:dx + 6] for img in (padded, padded[:, ::-1]) for dy in range(5)
                    for dx in range(5)]
      assert any(np.allclose(seen[m, i], c, atol=1e-3) for c in candidates), (m, i)
  for a in range(3):
    for b in range(a + 1, 3):  # members see different augmentations of the same images
      same = [np.allclose(seen[a, i], seen[b, i]) for i in range(16)]
      assert sum(same) <= 4, (a, b, sum(same))


def test_identical_members_given_the_same_batch_still_differ_through_dropout():
  """The compiled train step (what the trainer calls): 3 copies of one member on one batch get
  different losses with dropout and identical ones without."""
  data = make_dataset(n_train=64)
  losses = {}
  for rate in (0.0, 0.5):
    model = build_model("mlp", data.num_classes, {"hidden": (32,), "dropout_rate": rate})
    state = train.init_state(model, optax.sgd(0.1), jax.random.PRNGKey(0), 3, data.image_shape)
    state = state.replace(params=jax.tree.map(lambda p: jnp.broadcast_to(p[:1], p.shape), state.params))
    step = train.make_train_step(model, optax.sgd(0.1), execution="vmap", mean=data.mean, std=data.std)
    idx = jnp.broadcast_to(jnp.arange(32), (3, 32))
    _, metrics = step(state, jnp.asarray(data.x_train), jnp.asarray(data.y_train), idx)
    losses[rate] = np.asarray(metrics["loss"])
  assert losses[0.0][0] == losses[0.0][1] == losses[0.0][2]
  assert len(set(losses[0.5].tolist())) == 3
