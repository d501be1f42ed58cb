import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensembles import flops
from ensembles.models import MODELS, build_model
from ensembles.models.layers import Conv, max_pool_2x2, resolve_conv_impl


def _count(params):
  return sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name,kwargs,shape", [
    ("mlp", {"hidden": (32, 16)}, (3, 28, 28, 1)),
    ("lenet", {}, (3, 28, 28, 1)),
    ("lenet", {"padding": "VALID"}, (3, 28, 28, 1)),
    ("lenet5_caffe", {}, (3, 28, 28, 1)),
    ("lenet5", {}, (3, 28, 28, 1)),
    ("lenet_300_100", {}, (3, 28, 28, 1)),
    ("resnet", {"depth": 8}, (3, 32, 32, 3)),
    ("wide_resnet", {"depth": 10, "width": 1}, (3, 32, 32, 3)),
])
def test_forward_shapes(name, kwargs, shape):
  model = build_model(name, 7, kwargs)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros(shape))
  out = model.apply(variables, jnp.ones(shape))
  assert out.shape == (shape[0], 7) and np.all(np.isfinite(out))


def test_resnet20_parameter_count():
  # He et al. (2016), Table 6: ResNet-20 has 0.27M parameters.
  variables = build_model("resnet", 10, {"depth": 20}).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  assert _count(variables["params"]) == pytest.approx(0.27e6, rel=0.02)


def test_wide_resnet_28_10_builds_and_runs():
  model = build_model("wide_resnet", 10, {"depth": 28, "width": 10})
  x = jnp.zeros((1, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  # Zagoruyko & Komodakis (2016): WRN-28-10 has 36.5M parameters.
  assert _count(variables["params"]) == pytest.approx(36.5e6, rel=0.01)
  out = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
  assert out.shape == (1, 10)


def test_dropout_is_active_only_in_training():
  model = build_model("mlp", 3, {"hidden": (64,), "dropout_rate": 0.5})
  x = jnp.ones((4, 10))
  variables = model.init(jax.random.PRNGKey(0), x)
  a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("impl", ["xla", "patches", "auto"])
@pytest.mark.parametrize("shape,features,kernel,stride", [
    ((2, 9, 9, 1), 4, 5, 1), ((2, 8, 8, 6), 5, 3, 2), ((2, 7, 7, 3), 4, 3, 2), ((2, 8, 8, 4), 6, 1, 2)])
def test_conv_implementations_equal_flax_conv(impl, shape, features, kernel, stride, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  ref = nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding)
  ours = Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, impl=impl)
  variables = ref.init(jax.random.PRNGKey(1), x)
  assert jax.tree.structure(variables) == jax.tree.structure(ours.init(jax.random.PRNGKey(1), x))
  np.testing.assert_allclose(ours.apply(variables, x), ref.apply(variables, x), rtol=1e-5, atol=1e-5)
  grad = lambda m: jax.grad(lambda v: jnp.sum(m.apply(v, x) ** 2))(variables)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grad(ours), grad(ref))


@pytest.mark.parametrize("name,params,macs", [
    # Caffe's LeNet-5: 20·25 + 20 + 50·20·25 + 50 + 800·500 + 500 + 500·10 + 10 weights; multiply-adds:
    # 24·24·20·25 + 8·8·50·500 + 800·500 + 500·10
    ("lenet5_caffe", 431_080, 24 * 24 * 20 * 25 + 8 * 8 * 50 * 500 + 800 * 500 + 500 * 10),
    ("lenet5", 156 + 2_416 + 30_840 + 10_164 + 850, 24 * 24 * 6 * 25 + 8 * 8 * 16 * 150 + 256 * 120 + 120 * 84 + 840),
    ("lenet_300_100", 266_610, 784 * 300 + 300 * 100 + 100 * 10),
])
def test_classic_lenet_shapes(name, params, macs):
  """The classic networks by their published parameter counts, and the FLOPs counter's
  multiply-adds (2 FLOPs each) counted by hand."""
  from ensembles import flops
  model = build_model(name, 10)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  assert _count(variables["params"]) == params
  assert flops.forward_flops(flops.layer_costs(model, (28, 28, 1))) == 2 * macs


def test_conv_impl_choice_and_param_paths():
  assert resolve_conv_impl("auto", 1, backend="cpu") == "patches"
  assert resolve_conv_impl("auto", 32, backend="cpu") == "xla"
  assert resolve_conv_impl("auto", 32, stride=2, backend="cpu") == "patches"
  assert resolve_conv_impl("auto", 1, backend="gpu") == "xla"
  with pytest.raises(ValueError, match="conv_impl must be one of"):
    resolve_conv_impl("winograd", 3)
  params = build_model("lenet", 10).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  assert {"Conv_0", "Conv_1", "Dense_0", "Dense_1"} == set(params)


def test_max_pool_matches_flax():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6, 3))
  np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


def test_bad_model_names_and_fields():
  with pytest.raises(ValueError, match=r"model.name must be one of \['efficientnet_b0', 'imagenet_resnet', 'lenet', 'lenet5', 'lenet5_caffe', 'lenet_300_100', 'mlp'"):
    build_model("vgg", 10)
  with pytest.raises(ValueError, match="Unknown field.*'widht'.*allowed"):
    build_model("resnet", 10, {"widht": 2})
  with pytest.raises(ValueError, match="dropout_rate"):
    build_model("mlp", 10, {"dropout_rate": 1.0})
  with pytest.raises(ValueError, match="6n\\+2"):
    build_model("resnet", 10, {"depth": 21}).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="6n\\+4"):
    build_model("wide_resnet", 10, {"depth": 27}).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  assert set(MODELS) == {"mlp", "lenet", "lenet5_caffe", "lenet5", "lenet_300_100", "resnet", "wide_resnet", "imagenet_resnet", "efficientnet_b0"}


@pytest.mark.parametrize("name,kwargs,classes,shape,params,gmacs", [
    # torchvision's resnet50 has 25,557,032 parameters; ~4.1 GMACs per 224x224 image
    ("imagenet_resnet", {"depth": 50}, 1000, (224, 224, 3), 25_557_032, (4.05, 4.15)),
    ("imagenet_resnet", {"depth": 18, "stem": "small"}, 200, (64, 64, 3), 11_271_432, (2.2, 2.25)),
    # EfficientNet-B0 (Tan & Le: 5.3M parameters, 0.39B multiply-adds; Keras: 5,288,548 trainable)
    ("efficientnet_b0", {}, 1000, (224, 224, 3), 5_288_548, (0.38, 0.39)),
    # CIFAR ResNet-110 (He et al.: 1.7M parameters)
    ("resnet", {"depth": 110}, 10, (32, 32, 3), 1_730_714, (0.25, 0.26)),
])
def test_paper_scale_models_parameters_and_flops(name, kwargs, classes, shape, params, gmacs):
  model = build_model(name, classes, kwargs)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), train=False))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"])) == params
  macs = flops.forward_flops(flops.layer_costs(model, shape)) / 2 / 1e9
  assert gmacs[0] <= macs <= gmacs[1]


def test_imagenet_resnet_runs_and_checks_its_fields():
  model = build_model("imagenet_resnet", 10, {"depth": 18, "width": 2, "stem": "small"})  # bottlenecks: shapes above
  x = jnp.zeros((2, 16, 16, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  logits, state = jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)
  assert logits.shape == (2, 10) and "batch_stats" in state
  with pytest.raises(ValueError, match="model.depth for imagenet_resnet must be one of"):
    build_model("imagenet_resnet", 10, {"depth": 20}).init(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize("name, fields, shape", [
    ("resnet", {"depth": 8}, (16, 16, 3)),
    pytest.param("wide_resnet", {"depth": 10, "width": 1}, (16, 16, 3), marks=pytest.mark.slow),
    pytest.param("imagenet_resnet", {"depth": 50, "width": 4}, (32, 32, 3), marks=pytest.mark.slow),  # same block_maker
    pytest.param("efficientnet_b0", {"width": 0.25}, (16, 16, 3), marks=pytest.mark.slow)])
def test_remat_keeps_parameters_and_gradients(name, fields, shape):
  """model.remat (layers.block_maker) changes what the backward pass keeps, nothing else: the same
  parameter paths (checkpoints and masks carry over) and the same gradient."""
  x = jax.random.normal(jax.random.PRNGKey(1), (4, *shape))
  grads = {}
  for remat in ("none", "blocks", "dots"):
    model = build_model(name, 10, {**fields, "remat": remat})
    variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)

    def loss(params):
      out, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.PRNGKey(2)})
      return jnp.sum(out ** 2)

    grads[remat] = jax.jit(jax.grad(loss))(variables["params"])
  for remat in ("blocks", "dots"):
    assert jax.tree_util.tree_structure(grads[remat]) == jax.tree_util.tree_structure(grads["none"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads[remat], grads["none"])
  with pytest.raises(ValueError, match="model.remat must be one of"):
    build_model(name, 10, {**fields, "remat": "all"}).init(jax.random.PRNGKey(0), x[:1], train=False)
