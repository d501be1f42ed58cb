"""Sharded member execution on forced host devices equals single-device execution.

XLA_FLAGS must be set before jax starts, so the check runs in a subprocess.
"""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax, sys
    sys.path.insert(0, "tests")
    from conftest import make_dataset
    from ensembles import train
    from ensembles.models import build_model
    assert jax.device_count() == {devices}, jax.devices()
    ds = make_dataset()
    model = build_model("{model}", ds.num_classes, {kwargs})
    tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.05, momentum=0.9))
    out = {{}}
    for mode in ("vmap", "sharded"):
      state = train.init_state(model, tx, jax.random.PRNGKey(0), {m}, ds.image_shape)
      step = train.make_train_step(model, tx, execution=mode, mean=ds.mean, std=ds.std, crop_padding=1, flip=True)
      idx = train.epoch_indices(jax.random.split(jax.random.PRNGKey(1), {m}), 0, len(ds.y_train), 16)
      for t in range(3):
        state, _ = step(state, jnp.asarray(ds.x_train), jnp.asarray(ds.y_train), idx[:, t])
      predict = train.make_predict(model, execution=mode, mean=ds.mean, std=ds.std)
      out[mode] = (state, train.predict_probs(predict, state, ds.x_test, 16))
    if {m} > 1:
      sharding = jax.tree.leaves(out["sharded"][0].params)[0].sharding
      assert "members" in str(sharding), sharding
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), out["vmap"][0], out["sharded"][0])
    np.testing.assert_allclose(out["vmap"][1], out["sharded"][1], rtol=1e-5, atol=1e-6)
    print("EQUAL")
""")


@pytest.mark.parametrize("model,kwargs,devices,m", [
    ("mlp", {"hidden": (16,), "dropout_rate": 0.2}, 2, 4),
    ("lenet", {"features": (4,), "hidden": (8,), "kernel_size": 3}, 4, 4),
    ("resnet", {"depth": 8}, 2, 2),
])
def test_sharded_equals_vmap(model, kwargs, devices, m):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
  code = SCRIPT.format(model=model, kwargs=repr(kwargs), devices=devices, m=m)
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0 and "EQUAL" in out.stdout, out.stderr[-3000:]
