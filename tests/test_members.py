import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensembles import members


def test_stack_unstack_roundtrip():
  trees = [{"w": jnp.full((2, 3), i), "b": jnp.array(i)} for i in range(3)]
  stacked = members.stack(trees)
  assert stacked["w"].shape == (3, 2, 3) and members.num_members(stacked) == 3
  for i, tree in enumerate(members.unstack(stacked)):
    np.testing.assert_array_equal(tree["w"], trees[i]["w"])


def test_num_members_rejects_mismatch():
  with pytest.raises(ValueError, match="disagree"):
    members.num_members({"a": jnp.zeros((2, 1)), "b": jnp.zeros((3,))})


@pytest.mark.parametrize("mode", ["vmap", "loop", "map"])
def test_member_map_modes_agree(mode):
  def fn(params, x):
    return {"y": jnp.tanh(x @ params["w"]) + params["b"], "n": jnp.sum(params["w"])}

  key = jax.random.PRNGKey(0)
  params = {"w": jax.random.normal(key, (4, 3, 2)), "b": jnp.arange(4.0)}
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 5, 3))
  expected = [fn(members.member(params, i), x[i]) for i in range(4)]
  out = jax.jit(members.member_map(fn, mode))(params, x)
  for i in range(4):
    np.testing.assert_allclose(out["y"][i], expected[i]["y"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["n"][i], expected[i]["n"], rtol=1e-6)


def test_resolve_execution():
  assert members.resolve_execution("auto", has_conv=True, backend="cpu", num_devices=1) == "loop"
  assert members.resolve_execution("auto", has_conv=False, backend="cpu", num_devices=1) == "vmap"
  assert members.resolve_execution("auto", has_conv=False, backend="cpu", num_members=4, num_devices=1) == "vmap"
  assert members.resolve_execution("auto", has_conv=True, backend="gpu", num_devices=1) == "vmap"
  assert members.resolve_execution("auto", has_conv=True, backend="tpu", num_members=8, num_devices=4) == "sharded"
  assert members.resolve_execution("auto", has_conv=True, backend="cpu", num_members=3, num_devices=2) == "loop"
  assert members.resolve_execution("map", has_conv=True, backend="gpu") == "map"
  with pytest.raises(ValueError, match="member_execution must be one of"):
    members.resolve_execution("pmap", has_conv=False)
  with pytest.raises(ValueError, match=r"num_members \(3\) divisible by the 2 devices"):
    members.resolve_execution("sharded", has_conv=False, num_members=3, num_devices=2)
  with pytest.raises(ValueError, match="concrete mode"):
    members.member_map(lambda x: x, "auto")


def test_resolve_execution_with_a_data_axis():
  assert members.resolve_execution("auto", has_conv=True, backend="cpu", num_members=4, num_devices=2,
                                   data_parallel=2) == "vmap"
  assert members.resolve_execution("loop", has_conv=True, backend="cpu", num_devices=2, data_parallel=2) == "loop"
  with pytest.raises(ValueError, match="'sharded' splits members only; with mesh.data=2"):
    members.resolve_execution("sharded", has_conv=False, num_members=4, num_devices=2, data_parallel=2)


def test_mesh_on_one_device():
  mesh = members.make_mesh(num_members=3)
  assert dict(mesh.shape) == {"members": 1, "data": 1} and not members.is_distributed(mesh)
  members.check_layout(mesh, 3, 7, 5)  # everything divides by 1
  tree = {"a": np.ones((3, 2))}
  placed = members.place(tree, mesh, "members")  # on one device: just device_put
  assert isinstance(placed["a"], jax.Array) and placed["a"].shape == (3, 2)
  with pytest.raises(ValueError, match=r"mesh.members=2 x mesh.data=1 needs 2 devices; 1 are available"):
    members.make_mesh(2, 1)
  with pytest.raises(ValueError, match="mesh.data must be an integer >= 1"):
    members.make_mesh(0, 0)


def test_a_user_model_without_a_conv_flag_is_read_from_its_computation():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class UserCNN(nn.Module):  # no `has_conv` attribute
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.relu(nn.Conv(4, (3, 3))(x))
      return nn.Dense(3)(x.reshape(x.shape[0], -1))

  class UserMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(3)(nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1))))

  assert members.has_convolutions(UserCNN(), (8, 8, 1)) is True
  assert members.has_convolutions(UserMLP(), (8, 8, 1)) is False
  assert members.has_convolutions(UserCNN()) is False  # nothing to trace: no input shape
  from ensembles.models import build_model  # pylint: disable=g-import-not-at-top
  assert members.has_convolutions(build_model("lenet", 3), None) is True  # declared flags are used as they are
  assert members.resolve_execution("auto", members.has_convolutions(UserCNN(), (8, 8, 1)), backend="cpu",
                                   num_devices=1) == "loop"
