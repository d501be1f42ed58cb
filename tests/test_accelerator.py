"""Checks that matter most where the step runs on an accelerator, written for whatever backend JAX
picks: the default suite runs them on the CPU; `benchmarks/accelerator.py` runs them first on a
GPU or TPU host (with JAX_PLATFORMS='', so JAX uses the accelerator, and the `slow` ones included:
on the CPU tests/test_train.py checks the same).

M members in one compiled step equal M separate steps; sharded over the devices equals vmap; the
conv lowering is the backend's; the compiled step's memory (XLA's analysis) fits the device and the
step runs; bfloat16 compute stays close to float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ensembles import hardware
from ensembles import members as members_lib
from ensembles import targets
from ensembles import train as train_lib
from ensembles.models import MLP, ResNet
from ensembles.models.layers import resolve_conv_impl

M, B, SHAPE, CLASSES = 4, 8, (8, 8, 3), 5


@pytest.fixture(autouse=True)
def exact_matmuls():
  """TF32 / bf16-pass matmuls on GPUs and TPUs would make the comparisons below approximate."""
  with jax.default_matmul_precision("highest"):
    yield


def setup(model=None, execution=None, mesh=None, m=M, compute_dtype="float32"):
  """ResNet-8 members, their step and one batch; ``execution`` default: what `auto` picks on this
  backend for one device (vmap on accelerators, a loop of members for convolutions on the CPU)."""
  model = model or ResNet(CLASSES, depth=8)
  execution = execution or members_lib.resolve_execution("auto", True, backend=jax.default_backend(), num_members=m,
                                                         num_devices=1)
  tx = optax.sgd(0.05, momentum=0.9)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (4 * B, *SHAPE)), jnp.uint8)
  labels = jnp.asarray(rng.integers(0, CLASSES, 4 * B), jnp.int32)
  idx = np.tile(np.arange(B, dtype=np.int32)[None], (m, 1)) + np.arange(m, dtype=np.int32)[:, None]
  state = train_lib.init_state(model, tx, jax.random.PRNGKey(0), m, SHAPE, mesh)
  step = train_lib.make_train_step(model, tx, execution=members_lib.Execution(execution, mesh, True),
                                   mean=np.full(3, 0.5, np.float32), std=np.full(3, 0.25, np.float32),
                                   compute_dtype=compute_dtype)
  if mesh is not None:
    idx = members_lib.place(idx, mesh, members_lib.MEMBER_AXIS)
  return state, step, images, labels, jnp.asarray(idx) if mesh is None else idx


@pytest.mark.slow  # on the CPU: tests/test_train.py (benchmarks/accelerator.py runs it on the accelerator)
def test_members_in_one_step_equal_separate_steps():
  state, step, images, labels, idx = setup()
  before = jax.tree.map(jnp.copy, state)  # the step donates its state
  together, metrics = step(state, images, labels, idx)
  state = before
  _, one_step, *_ = setup(m=1)
  for i in range(M):
    alone, alone_metrics = one_step(jax.tree.map(lambda x: x[i:i + 1], state), images, labels, idx[i:i + 1])
    np.testing.assert_allclose(alone_metrics["loss"][0], metrics["loss"][i], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b[i], rtol=1e-4, atol=1e-5), alone.params,
                 together.params)


def test_sharded_over_the_devices_equals_vmap():
  devices = jax.devices()
  if len(devices) < 2 or M % len(devices) and len(devices) % M:
    pytest.skip(f"needs several devices dividing or divided by M = {M}; this backend has {len(devices)}")
  mesh = members_lib.make_mesh(devices=devices, num_members=M)
  one = setup(execution="vmap")
  sharded = setup(execution="sharded", mesh=mesh)
  a, _ = one[1](*one[0:1], *one[2:])
  b, _ = sharded[1](*sharded[0:1], *sharded[2:])
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(members_lib.to_host(y)),
                                                       rtol=1e-4, atol=1e-5), a.params, b.params)


def test_convolutions_lower_as_this_backend_wants():
  platform = targets.local().platform
  mesh = members_lib.make_mesh(devices=jax.devices()[:1])
  execution = members_lib.Execution("vmap", mesh, True)
  chosen = execution.map(lambda x: jnp.asarray(resolve_conv_impl("auto", 3) == "xla"))(jnp.zeros((1,)))
  assert bool(chosen[0]) == (platform != "cpu")  # image-input layers: im2col patches on CPU only


def test_compiled_step_fits_the_device_and_runs():
  # an MLP on the CPU (the default suite; its convolutions are the slow part of compiling there)
  mlp = MLP(CLASSES, hidden=(32,)) if jax.default_backend() == "cpu" else None
  state, step, images, labels, idx = setup(mlp)
  memory = step.lower(state, images, labels, idx).compile().memory_analysis()
  need = memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes + \
      memory.temp_size_in_bytes
  limit = hardware.memory_bytes(jax.devices()[0])
  assert 0 < need and (limit is None or need < limit)
  state, metrics = step(state, images, labels, idx)
  assert np.all(np.isfinite(np.asarray(metrics["loss"])))


@pytest.mark.slow  # on the CPU: tests/test_train.py (benchmarks/accelerator.py runs it on the accelerator)
def test_bfloat16_compute_is_close_to_float32():
  state, step, images, labels, idx = setup()
  _, m32 = step(state, images, labels, idx)
  state, step, images, labels, idx = setup(compute_dtype="bfloat16")
  state, m16 = step(state, images, labels, idx)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))  # stored in float32
  np.testing.assert_allclose(np.asarray(m16["loss"]), np.asarray(m32["loss"]), rtol=0.05)
