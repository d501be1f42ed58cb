"""The member engine: M-member steps equal M single-member steps, for every execution mode."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ensembles import augment, members, train
from ensembles.models import build_model

MODELS = {
    "mlp_dropout": ("mlp", {"hidden": (16,), "dropout_rate": 0.3}),
    "lenet": ("lenet", {"features": (4,), "hidden": (8,), "kernel_size": 3}),
    "resnet_bn": ("resnet", {"depth": 8}),
}


def _setup(tiny_dataset, model_key, m=3, execution="vmap", crop=2, flip=True):
  name, kwargs = MODELS[model_key]
  model = build_model(name, tiny_dataset.num_classes, kwargs)
  tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.05, momentum=0.9))
  state = train.init_state(model, tx, jax.random.PRNGKey(0), m, tiny_dataset.image_shape)
  step = train.make_train_step(model, tx, execution=execution, mean=tiny_dataset.mean,
                               std=tiny_dataset.std, crop_padding=crop, flip=flip)
  idx = train.epoch_indices(jax.random.split(jax.random.PRNGKey(1), m), 0, len(tiny_dataset.y_train), 16)
  return model, tx, state, step, idx


def _copy(tree):
  return jax.tree.map(jnp.array, tree)


@pytest.mark.parametrize("model_key", sorted(MODELS))
def test_member_step_equals_single_member_steps(tiny_dataset, model_key):
  _, _, state, step, idx = _setup(tiny_dataset, model_key)
  images, labels = jnp.asarray(tiny_dataset.x_train), jnp.asarray(tiny_dataset.y_train)
  singles = [members.stack([members.member(_copy(state), i)]) for i in range(3)]
  for t in range(3):
    state, metrics = step(state, images, labels, idx[:, t])
    for i in range(3):
      singles[i], single_metrics = step(singles[i], images, labels, idx[i:i + 1, t])
      np.testing.assert_allclose(metrics["loss"][i], single_metrics["loss"][0], rtol=1e-5)
  for i in range(3):
    expected = members.member(singles[i], 0)
    got = members.member(state, i)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), got, expected)


@pytest.mark.parametrize("model_key", ["lenet", "resnet_bn"])
def test_execution_modes_agree(tiny_dataset, model_key):
  images, labels = jnp.asarray(tiny_dataset.x_train), jnp.asarray(tiny_dataset.y_train)
  finals = {}
  # `map` runs convolutions in a while loop, about 70x slower on XLA:CPU: its BatchNorm model is left to
  # the slow suite's timings (the map path itself is checked on LeNet)
  modes = ("vmap", "loop", "map") if model_key == "lenet" else ("vmap", "loop")
  for mode in modes:
    _, _, state, step, idx = _setup(tiny_dataset, model_key, execution=mode)
    for t in range(2):
      state, _ = step(state, images, labels, idx[:, t])
    finals[mode] = state.params
  for mode in modes[1:]:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), finals[mode], finals["vmap"])


def test_members_differ_after_init_and_training(tiny_dataset):
  _, _, state, step, idx = _setup(tiny_dataset, "mlp_dropout")
  kernel = state.params["Dense_0"]["kernel"]
  assert not np.allclose(kernel[0], kernel[1]) and not np.allclose(kernel[1], kernel[2])
  assert len({tuple(np.asarray(k)) for k in state.rng}) == 3
  state, _ = step(state, jnp.asarray(tiny_dataset.x_train), jnp.asarray(tiny_dataset.y_train), idx[:, 0])
  assert np.all(np.asarray(state.step) == 1)


def test_batchnorm_statistics_are_per_member(tiny_dataset):
  _, _, state, step, idx = _setup(tiny_dataset, "resnet_bn")
  state, _ = step(state, jnp.asarray(tiny_dataset.x_train), jnp.asarray(tiny_dataset.y_train), idx[:, 0])
  mean = state.model_state["batch_stats"]["BatchNorm_0"]["mean"]
  assert mean.shape[0] == 3 and not np.allclose(mean[0], mean[1])


def test_sample_weights_scale_the_loss(tiny_dataset):
  _, _, state, step, idx = _setup(tiny_dataset, "lenet", crop=0, flip=False)
  images, labels = jnp.asarray(tiny_dataset.x_train), jnp.asarray(tiny_dataset.y_train)
  _, plain = step(_copy(state), images, labels, idx[:, 0])
  n = len(tiny_dataset.y_train)
  weighted = state.replace(extra={"sample_weights": jnp.full((3, n), 2.0)})
  _, doubled = step(weighted, images, labels, idx[:, 0])
  np.testing.assert_allclose(doubled["loss"], 2 * plain["loss"], rtol=1e-5)


def test_normalized_weighted_loss_divides_by_the_batch_weights(tiny_dataset):
  """training.weighted_loss = normalized: Σ w·CE / Σ w within the batch, so uniform weights of any
  scale give the plain loss and a batch's loss is a weighted mean of its examples' losses."""
  _, tx, state, _, idx = _setup(tiny_dataset, "lenet", crop=0, flip=False)
  name, kwargs = MODELS["lenet"]
  model = build_model(name, tiny_dataset.num_classes, kwargs)
  images, labels = jnp.asarray(tiny_dataset.x_train), jnp.asarray(tiny_dataset.y_train)
  n = len(tiny_dataset.y_train)
  normalized = train.make_train_step(model, tx, execution="vmap", mean=tiny_dataset.mean, std=tiny_dataset.std,
                                     weighted_loss="normalized")
  plain_step = train.make_train_step(model, tx, execution="vmap", mean=tiny_dataset.mean, std=tiny_dataset.std)
  _, plain = plain_step(_copy(state), images, labels, idx[:, 0])
  _, doubled = normalized(_copy(state).replace(extra={"sample_weights": jnp.full((3, n), 2.0)}), images, labels,
                          idx[:, 0])
  np.testing.assert_allclose(doubled["loss"], plain["loss"], rtol=1e-5)
  w = jnp.asarray(np.random.default_rng(0).uniform(0.1, 5.0, (3, n)), jnp.float32)
  _, mean_loss = plain_step(_copy(state).replace(extra={"sample_weights": jnp.array(w)}), images, labels, idx[:, 0])
  _, norm_loss = normalized(_copy(state).replace(extra={"sample_weights": jnp.array(w)}), images, labels, idx[:, 0])
  batch_w = np.take_along_axis(np.asarray(w), np.asarray(idx[:, 0]), axis=1)  # [M, B]
  np.testing.assert_allclose(norm_loss["loss"], mean_loss["loss"] * batch_w.shape[1] / batch_w.sum(1), rtol=1e-4)


def test_weighted_cross_entropy_equals_plain_with_unit_weights():
  logits = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
  labels = jnp.array([0, 3, 1, 2, 2])
  plain = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  np.testing.assert_allclose(train.weighted_cross_entropy(logits, labels, jnp.ones(5)), plain, rtol=1e-6)
  w = jnp.array([0.0, 0.0, 0.0, 0.0, 5.0])
  np.testing.assert_allclose(train.weighted_cross_entropy(logits, labels, w),
                             optax.softmax_cross_entropy_with_integer_labels(logits, labels)[4], rtol=1e-6)


def test_epoch_indices():
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  idx = np.asarray(train.epoch_indices(keys, 0, 100, 16))
  assert idx.shape == (3, 6, 16) and idx.dtype == np.int32
  for member in idx:
    assert len(np.unique(member)) == 96 and member.min() >= 0 and member.max() < 100
  assert not np.array_equal(idx[0], idx[1])
  assert not np.array_equal(idx[0], np.asarray(train.epoch_indices(keys, 1, 100, 16))[0])
  np.testing.assert_array_equal(idx, np.asarray(train.epoch_indices(keys, 0, 100, 16)))
  shared = np.asarray(train.epoch_indices(keys, 0, 100, 16, shared_order=True))
  np.testing.assert_array_equal(shared[0], shared[2])
  with pytest.raises(ValueError, match="batch_size"):
    train.epoch_indices(keys, 0, 10, 16)


def test_augmentation_differs_by_key_and_keeps_shape():
  x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (8, 10, 10, 3)), jnp.uint8)
  a = augment.augment(jax.random.PRNGKey(0), x, 2, True)
  b = augment.augment(jax.random.PRNGKey(1), x, 2, True)
  assert a.shape == x.shape and a.dtype == x.dtype and not np.array_equal(a, b)
  np.testing.assert_array_equal(augment.augment(jax.random.PRNGKey(0), x, 0, False), x)
  # a crop is a shifted window: each crop is found in the zero-padded image
  padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
  crop = np.asarray(augment.random_crop(jax.random.PRNGKey(3), x, 2))
  for i in range(8):
    assert any(np.array_equal(crop[i], padded[i, r:r + 10, c:c + 10]) for r in range(5) for c in range(5))


def _training_cfg(**kw):
  c = ml_collections.ConfigDict(dict(lr=1.0, lr_schedule="step", warmup_epochs=0.0,
                                     decay_milestones=(0.5, 0.75), decay_factor=0.1, optimizer="sgd",
                                     momentum=0.0, nesterov=False, weight_decay=0.0))
  c.update(kw)
  return c


def test_learning_rate_schedules():
  step = train.learning_rate_schedule(_training_cfg(), 100, 10)
  assert [float(step(t)) for t in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
  cos = train.learning_rate_schedule(_training_cfg(lr_schedule="cosine", warmup_epochs=1.0), 110, 10)
  assert float(cos(0)) == 0.0 and float(cos(5)) == pytest.approx(0.5)
  assert float(cos(10)) == pytest.approx(1.0) and float(cos(60)) == pytest.approx(0.5, abs=1e-6)
  with pytest.raises(ValueError, match="lr_schedule"):
    train.learning_rate_schedule(_training_cfg(lr_schedule="linear"), 100, 10)


def test_sgd_weight_decay_is_l2_on_gradient():
  tx = train.make_optimizer(_training_cfg(lr=0.1, lr_schedule="constant", weight_decay=0.5), 10, 1)
  params = {"w": jnp.array([2.0])}
  updates, _ = tx.update({"w": jnp.array([1.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.1 * (1.0 + 0.5 * 2.0)])


def test_all_finite():
  assert bool(train.all_finite({"a": jnp.ones(3), "i": jnp.arange(2)}))
  assert not bool(train.all_finite({"a": jnp.array([1.0, jnp.nan])}))


def test_batch_split_gives_the_same_step(tiny_dataset):
  images, labels = jnp.asarray(tiny_dataset.x_train), jnp.asarray(tiny_dataset.y_train)
  finals = []
  for split in (1, 2, 4):
    model = build_model("lenet", tiny_dataset.num_classes, MODELS["lenet"][1])
    tx = optax.sgd(0.05, momentum=0.9)
    state = train.init_state(model, tx, jax.random.PRNGKey(0), 2, tiny_dataset.image_shape)
    step = train.make_train_step(model, tx, execution="loop", mean=tiny_dataset.mean, std=tiny_dataset.std,
                                 crop_padding=1, flip=True, batch_split=split)
    idx = train.epoch_indices(jax.random.split(jax.random.PRNGKey(1), 2), 0, len(tiny_dataset.y_train), 16)
    for t in range(3):
      state, metrics = step(state, images, labels, idx[:, t])
    finals.append((state.params, metrics["loss"]))
  for params, loss in finals[1:]:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, finals[0][0])
    np.testing.assert_allclose(loss, finals[0][1], rtol=1e-5)


def test_batch_split_refuses_batchnorm(tiny_dataset):
  with pytest.raises(ValueError, match="batch_split > 1 needs a model without BatchNorm"):
    _, _, state, _, idx = _setup(tiny_dataset, "resnet_bn")
    model = build_model("resnet", tiny_dataset.num_classes, {"depth": 8})
    step = train.make_train_step(model, optax.sgd(0.1), execution="vmap", mean=tiny_dataset.mean,
                                 std=tiny_dataset.std, batch_split=2)
    step(state, jnp.asarray(tiny_dataset.x_train), jnp.asarray(tiny_dataset.y_train), idx[:, 0])


def test_float_features_are_not_rescaled_as_images():
  """A 30-feature tabular task in raw float units (mean ~1000, std ~50 per feature), normalised by
  the features' own mean and std: an MLP ensemble must learn it (dividing floats by 255 as if they
  were uint8 pixels left it at the majority class)."""
  rng = np.random.default_rng(0)
  n, d = 2048, 30
  z = rng.normal(size=(n, d)).astype(np.float32)
  direction = rng.normal(size=d).astype(np.float32)
  y = (z @ direction > 0.5).astype(np.int32)  # unbalanced: the majority class is ~65%
  x = 1000.0 + 50.0 * z
  mean, std = x.mean(axis=0), x.std(axis=0)
  model = build_model("mlp", 2, {"hidden": (32,)})
  tx = optax.adam(1e-2)
  state = train.init_state(model, tx, jax.random.PRNGKey(0), 2, (d,))
  step = train.make_train_step(model, tx, execution="vmap", mean=mean, std=std)
  predict = train.make_predict(model, execution="vmap", mean=mean, std=std)
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  images, labels = jnp.asarray(x), jnp.asarray(y)
  for epoch in range(3):
    idx = train.epoch_indices(keys, epoch, n, 64)
    for t in range(idx.shape[1]):
      state, _ = step(state, images, labels, idx[:, t])
  probs = train.predict_probs(predict, state, x, 512)
  accuracy = (probs.mean(0).argmax(-1) == y).mean()
  majority = max(y.mean(), 1 - y.mean())
  assert accuracy > 0.95 > majority + 0.2, (accuracy, majority)
  # uint8 images are still scaled to [0, 1] before (x - mean) / std
  image = jnp.full((1, 2, 2, 1), 255, jnp.uint8)
  np.testing.assert_allclose(augment.normalize(image, jnp.array([0.5]), jnp.array([0.25])), 2.0)


def test_label_smoothing_targets():
  """CE against (1 − ε)·one-hot + ε/K, from the formula; ε = 0 is the plain cross-entropy."""
  logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
  labels = jnp.array([0, 2])
  log_p = np.asarray(jax.nn.log_softmax(logits))
  eps, k = 0.1, 3
  targets = np.full((2, 3), eps / k)
  targets[[0, 1], [0, 2]] += 1 - eps
  expected = -np.mean(np.sum(targets * log_p, axis=1))
  np.testing.assert_allclose(train.weighted_cross_entropy(logits, labels, jnp.ones(2), eps), expected, rtol=1e-6)
  np.testing.assert_allclose(train.weighted_cross_entropy(logits, labels, jnp.ones(2), 0.0),
                             -np.mean(log_p[[0, 1], [0, 2]]), rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_weight_decay_on_kernels_spares_biases_and_batchnorm(optimizer):
  """weight_decay_on='kernels': a zero gradient leaves biases and BatchNorm scales unchanged and
  shrinks kernels (by lr·λ·w for sgd); 'all' shrinks every parameter."""
  cfg = ml_collections.ConfigDict({"optimizer": optimizer, "lr": 0.1, "lr_schedule": "constant", "warmup_epochs": 0.0,
                                   "momentum": 0.0, "nesterov": False, "weight_decay": 0.5, "weight_decay_on": "kernels"})
  params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}, "BatchNorm_0": {"scale": jnp.ones(2)}}
  zero = jax.tree.map(jnp.zeros_like, params)
  for on in ("kernels", "all"):
    cfg.weight_decay_on = on
    tx = train.make_optimizer(cfg, 10, 10)
    updates, _ = tx.update(zero, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    shrunk = 1 - 0.1 * 0.5
    np.testing.assert_allclose(new["Dense_0"]["kernel"], shrunk, rtol=1e-6)
    for leaf in (new["Dense_0"]["bias"], new["BatchNorm_0"]["scale"]):
      np.testing.assert_allclose(leaf, 1.0 if on == "kernels" else shrunk, rtol=1e-6)


def test_weight_decay_on_kernels_spares_the_vectors_member_networks_stack():
  """In a TreeNet's branches and a BatchEnsemble's layers, per-member biases and BatchNorm scales
  are [M, C] and the fast weights [M, C_in], [M, C_out]: 2-D, yet not kernels."""
  from ensembles.models import ResNet, batch_ensemble, treenet
  x = jnp.zeros((1, 8, 8, 3))
  for net in (treenet.TreeNet(ResNet(4, depth=8), 3, 1), batch_ensemble.BatchEnsemble(ResNet(4, depth=8), 3)):
    params = net.init(jax.random.PRNGKey(0), x)["params"]
    decayed = {jax.tree_util.keystr(p): d for p, d in jax.tree_util.tree_flatten_with_path(train.decayed_kernels(params))[0]}
    stacked_vectors = [k for k in decayed if not k.endswith("['kernel']")]
    assert any("branches" in k or "batch_ensemble_" in k for k in stacked_vectors)
    assert not any(decayed[k] for k in stacked_vectors)
    assert all(decayed[k] for k in decayed if k.endswith("['kernel']"))


def test_bfloat16_compute_keeps_float32_state(tiny_dataset):
  """compute_dtype='bfloat16': the convolutions and matmuls of the step run in bf16, while the
  parameters, optimizer state and BatchNorm statistics stay float32 (ResNet, shapes and dtypes
  only); the loss is close to the float32 step's (LeNet, run)."""
  tx = optax.sgd(0.05, momentum=0.9)
  idx = train.epoch_indices(jax.random.split(jax.random.PRNGKey(1), 2), 0, len(tiny_dataset.y_train), 16)[:, 0]
  x, y = jnp.asarray(tiny_dataset.x_train), jnp.asarray(tiny_dataset.y_train)
  losses = {}
  for key in ("resnet_bn", "lenet"):
    name, kwargs = MODELS[key]
    model = build_model(name, tiny_dataset.num_classes, kwargs)
    state = train.init_state(model, tx, jax.random.PRNGKey(0), 2, tiny_dataset.image_shape)
    for dtype in ("float32", "bfloat16"):
      step = train.make_train_step(model, tx, execution="vmap", mean=tiny_dataset.mean, std=tiny_dataset.std,
                                   compute_dtype=dtype)
      jaxpr = str(jax.make_jaxpr(step)(state, x, y, idx))
      assert ("bf16[" in jaxpr) == (dtype == "bfloat16"), (key, dtype)
      if key == "resnet_bn":  # its 3x3 convolutions are XLA's: bf16 operands
        convs = [line for line in jaxpr.splitlines() if "conv_general_dilated" in line]
        assert convs and all(("bf16[" in line) == (dtype == "bfloat16") for line in convs)
      new, _ = jax.eval_shape(step, state, x, y, idx)
      assert key != "resnet_bn" or "batch_stats" in new.model_state
      for leaf in jax.tree.leaves((new.params, new.opt_state, new.model_state)):
        assert leaf.dtype == jnp.float32, (key, leaf.dtype)
      if key == "lenet":
        losses[dtype] = step(_copy(state), x, y, idx)[1]["loss"]
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=3e-2)
  predict = train.make_predict(model, execution="vmap", mean=tiny_dataset.mean, std=tiny_dataset.std,
                               compute_dtype="bfloat16")
  probs = predict(state.params, state.model_state, x[:8])
  assert probs.dtype == jnp.float32
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
