import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensembles import flops, subnetworks
from ensembles.models import build_model


MLP = build_model("mlp", 5, {"hidden": (12, 9, 7)})
ORDER = [c.path for c in flops.layer_costs(MLP, (6,))]


def _params():
  return MLP.init(jax.random.PRNGKey(0), jnp.zeros((1, 6)))["params"]


def test_round_robin_deals_strong_and_weak_evenly():
  owner = subnetworks.round_robin(jnp.arange(12.0), 3)
  # descending order 11, 10, ..., 0 dealt 0, 1, 2, 0, ...
  np.testing.assert_array_equal(owner[::-1], np.arange(12) % 3)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_weight_masks_disjoint_covering_and_equal(m):
  params = _params()
  masks = subnetworks.partition_masks(params, m, "weight", share_input_output=True, layer_order=ORDER)
  for name in ("Dense_1", "Dense_2"):  # partitioned hidden layers
    k = np.asarray(masks[name]["kernel"])
    assert k.shape == (m, *params[name]["kernel"].shape)
    np.testing.assert_array_equal(k.sum(0), 1)  # disjoint and covering
    counts = k.reshape(m, -1).sum(1)
    assert counts.max() - counts.min() <= 1
    assert bool(np.asarray(masks[name]["bias"]).all())  # biases stay whole at weight granularity
  for name in ("Dense_0", "Dense_3"):  # shared input and output layers
    assert bool(np.asarray(masks[name]["kernel"]).all())
  shares = subnetworks.child_shares(masks, params, True, ORDER)
  np.testing.assert_allclose(shares, 1 / m, atol=1 / params["Dense_2"]["kernel"].size + 1e-9)


def test_weight_masks_partition_every_layer_when_not_shared():
  params = _params()
  masks = subnetworks.partition_masks(params, 3, "weight", share_input_output=False)
  for name in ("Dense_0", "Dense_1", "Dense_2", "Dense_3"):
    np.testing.assert_array_equal(np.asarray(masks[name]["kernel"]).sum(0), 1)


def test_unit_masks_partition_units_and_their_biases():
  params = _params()
  masks = subnetworks.partition_masks(params, 3, "unit", layer_order=ORDER)
  k, b = np.asarray(masks["Dense_1"]["kernel"]), np.asarray(masks["Dense_1"]["bias"])
  units = k.all(axis=1)  # [M, C_out]: a unit is kept whole or not at all
  np.testing.assert_array_equal(k.any(axis=1), units)
  np.testing.assert_array_equal(units.sum(0), 1)
  np.testing.assert_array_equal(units, b)
  assert sorted(units.sum(1).tolist()) == [3, 3, 3]
  # strongest unit (largest L1 norm of its incoming weights) goes to child 0
  l1 = np.abs(np.asarray(params["Dense_1"]["kernel"])).sum(0)
  assert units[0, np.argmax(l1)]


def test_bad_input_is_named():
  params = _params()
  with pytest.raises(ValueError, match=r"num_members \(8\) exceeds the 7 units"):
    subnetworks.partition_masks(params, 8, "unit", layer_order=ORDER)
  with pytest.raises(ValueError, match="subnetwork.granularity must be one of"):
    subnetworks.partition_masks(params, 2, "filter")
  with pytest.raises(ValueError, match="share_input_output=True"):
    subnetworks.partition_masks(params, 2, "unit", share_input_output=False)
  small = build_model("mlp", 3, {"hidden": (4,)})
  two_layers = small.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))["params"]
  with pytest.raises(ValueError, match="leaves no layer to partition"):
    subnetworks.partition_masks(two_layers, 2, "weight", share_input_output=True,
                                layer_order=[c.path for c in flops.layer_costs(small, (2,))])
  with pytest.raises(ValueError, match="share_input_output needs layer_order"):
    subnetworks.partition_masks(params, 2, "weight", share_input_output=True)


@pytest.mark.parametrize("name,kwargs,first,last", [
    ("resnet", {"depth": 8}, "['Conv_0']['kernel']", "['Dense_0']['kernel']"),
    ("wide_resnet", {"depth": 10, "width": 1}, "['Conv_0']['kernel']", "['Dense_0']['kernel']"),
    ("mlp", {"hidden": (4,) * 11}, "['Dense_0']['kernel']", "['Dense_11']['kernel']"),
])
def test_shared_layers_are_the_input_and_output_layers(name, kwargs, first, last):
  # the params tree is sorted by name (a ResNet's stem Conv_0 sorts after its blocks, Dense_11
  # before Dense_2): the shared layers must come from the call order
  model = build_model(name, 10, kwargs)
  shape = (8, 8, 3) if name != "mlp" else (6,)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))["params"]
  order = [c.path for c in flops.layer_costs(model, shape)]
  masks = subnetworks.partition_masks(params, 2, "unit", layer_order=order)
  flat = {jax.tree_util.keystr(p): np.asarray(m) for p, m in jax.tree_util.tree_flatten_with_path(masks)[0]}
  assert flat[first].all() and flat[last].all()  # shared: every child keeps all classes and inputs
  partitioned = subnetworks.partitioned_kernels(params, True, order)
  assert first not in partitioned and last not in partitioned and len(partitioned) == len(order) - 2


def test_removed_units_output_exactly_zero_through_batchnorm():
  """Unit-level children of a ResNet: a channel that reaches a BatchNorm as all zeros (a removed
  unit) must leave it as zeros, in training and in inference mode (before: ReLU(bias))."""
  import flax.linen as nn
  from ensembles.models import build_model
  model = build_model("resnet", 4, {"depth": 8})
  variables = dict(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3))))
  params = variables.pop("params")
  key = iter(jax.random.split(jax.random.PRNGKey(1), 1000))
  # a trained parent: nonzero norm biases and running statistics
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.5 + jax.random.uniform(next(key), x.shape) if "BatchNorm" in jax.tree_util.keystr(p) else x,
      params)
  variables = jax.tree.map(lambda x: x + jax.random.uniform(next(key), x.shape), variables)
  order = [c.path for c in flops.layer_costs(model, (8, 8, 3))]
  masks = subnetworks.partition_masks(params, 2, "unit", True, layer_order=order)
  masks = subnetworks.silence_removed_units(model, {"params": params, **variables}, masks, (8, 8, 3))
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 3))
  silenced = 0
  for i in range(2):
    child = jax.tree.map(lambda p, m: jnp.where(m[i], p, 0.0), params, masks)
    for train in (False, True):
      seen = []

      def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, nn.BatchNorm):
          seen.append((jnp.all(args[0] == 0, axis=(0, 1, 2)), out))
        return out

      with nn.intercept_methods(interceptor):
        model.apply({"params": child, **variables}, x, train=train, mutable=["batch_stats"] if train else False)
      for zero_in, out in seen:
        np.testing.assert_array_equal(np.asarray(out)[..., np.asarray(zero_in)], 0.0)
        silenced += int(zero_in.sum())
  assert silenced > 0  # the check is not vacuous: removed channels reach the norms
