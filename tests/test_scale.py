"""Scale-out on forced host devices: every method family trained on a (members x data) mesh equals
the same run on one device; M or batch sizes that do not divide over the mesh get clear errors.

XLA_FLAGS must be set before jax starts, so each check runs in a subprocess with 8 CPU devices.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import requires_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import importlib, json, sys, tempfile
    import jax, numpy as np
    sys.path.insert(0, "tests")
    from conftest import make_dataset, method_config
    from ensembles import data as data_lib
    from experiments import runner
    assert jax.device_count() == 8, jax.devices()
    dataset = make_dataset(n_train=128, n_val=16, n_test=32)
    data_lib.load_dataset = lambda _: dataset

    def config(module, overrides):
      c = method_config(importlib.import_module(f"experiments.configs.{module}"), hidden=(16,), **overrides)
      c.eval_batch_size = 16
      return c

    out = {}
    for name, module, overrides in json.loads(sys.argv[1]):
      try:
        res = {}
        for layout in ("one_device", "mesh"):
          cfg = config(module, overrides)
          if layout == "one_device":
            cfg.mesh.members, cfg.mesh.data = 1, 1
          res[layout] = runner.run(cfg, tempfile.mkdtemp())
        a, b = res["one_device"]["test"], res["mesh"]["test"]
        close = np.allclose([m["nll"] for m in a["members"]], [m["nll"] for m in b["members"]], rtol=1e-4)
        out[name] = {"equal": bool(close), "mesh": res["mesh"]["mesh"], "execution": res["mesh"]["member_execution"],
                     "nll": [a["ensemble"]["nll"], b["ensemble"]["nll"]]}
      except Exception as err:
        out[name] = {"error": f"{type(err).__name__}: {err}"}
    print("RESULT " + json.dumps(out))
""")


def _run(cases):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cases)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.split("RESULT ", 1)[1])


# (name, method config, overrides): every method family on a (members x data) mesh
CASES = {
    # members x data layouts of a deep ensemble (dropout and augmentation: random streams must match)
    "8x1": ("deep_ensemble", {"num_members": 8, "mesh.data": 1, "member_execution": "vmap",
                              "model.dropout_rate": 0.1, "augment.crop_padding": 1}),
    # the default execution (auto -> sharded): members gather their batches from the shared training set
    "8x1_auto": ("deep_ensemble", {"num_members": 8, "model.dropout_rate": 0.1, "augment.crop_padding": 1}),
    "4x2": ("deep_ensemble", {"num_members": 4, "mesh.data": 2, "model.dropout_rate": 0.1, "augment.flip": True}),
    # BatchNorm: statistics over the data axis only; reduced across members they would differ
    "2x4_batchnorm": ("deep_ensemble", {"num_members": 2, "mesh.data": 4, "model": {"name": "resnet", "depth": 8}}),
    "dst_2x2": ("dst_ensemble", {"num_members": 2, "mesh.data": 2, "sparse.update_every": 2}),
    # sharded topology updates on a mesh smaller than the 8 devices (3 prune-and-grow updates each)
    "dst_m2_sharded": ("dst_ensemble", {"num_members": 2, "sparse.update_every": 2}),
    "dst_m4_sharded": ("dst_ensemble", {"num_members": 4, "sparse.update_every": 2}),
    "edst_1x2": ("edst_ensemble", {"num_members": 2, "mesh.data": 2, "edst.exploration_epochs": 1,
                                   "edst.refinement_epochs": 1, "training.epochs": 3, "sparse.update_every": 2}),
    "subnetwork_2x2": ("subnetwork_ensemble", {"num_members": 2, "mesh.data": 2, "training.epochs": 2}),
    "cbnn_1x4": ("cbnn", {"num_members": 2, "mesh.data": 4}),
    "snapshot_1x2": ("snapshot_ensemble", {"num_members": 2, "mesh.data": 2, "training.epochs": 2}),
    "mc_dropout_1x2": ("mc_dropout", {"mesh.data": 2}),
}
# the default run checks one layout of every family; the other layouts run with `make test-slow`
# (auto -> sharded on a mesh: also the 4-device default command below)
DEFAULT_CASES = ("4x2", "2x4_batchnorm", "dst_m2_sharded", "edst_1x2", "subnetwork_2x2", "cbnn_1x4")


def _check_cases(names):
  out = _run([(name, *CASES[name]) for name in names])
  for name in names:
    assert out[name].get("equal"), (name, out[name])
  expected = {"8x1": ({"members": 8, "data": 1}, "vmap"), "4x2": ({"members": 4, "data": 2}, "vmap"),
              "2x4_batchnorm": ({"members": 2, "data": 4}, None), "8x1_auto": ({"members": 8, "data": 1}, "sharded"),
              "dst_m2_sharded": ({"members": 2, "data": 1}, "sharded"),
              "dst_m4_sharded": ({"members": 4, "data": 1}, "sharded")}
  for name in names:
    if name in expected:
      mesh, execution = expected[name]
      assert out[name]["mesh"] == mesh and execution in (None, out[name]["execution"]), (name, out[name])


def test_every_method_family_on_a_mesh_equals_one_device():
  _check_cases(DEFAULT_CASES)


@pytest.mark.slow
def test_more_layouts_on_a_mesh_equal_one_device():
  _check_cases([name for name in CASES if name not in DEFAULT_CASES])


@requires_fashion_mnist
def test_default_command_on_full_fashion_mnist_with_4_devices(tmp_path):
  """The README's default command on 4 forced host devices and the full training split, for the
  layouts above: auto (-> sharded), vmap, and 2 members x 2 data. Before the fixes, sharded failed
  at the first step and the others deadlocked in an XLA:CPU rendezvous after a few steps."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
  results = {}
  for name, extra in (("auto", []), ("vmap", ["--config.member_execution=vmap"]),
                      ("2x2", ["--config.num_members=2", "--config.mesh.data=2"])):
    workdir = tmp_path / name
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config", "experiments/configs/deep_ensemble.py",
         "--config.training.epochs=1", "--config.evaluation.ood_datasets=()", "--config.evaluation.corruptions=()",
         "--config.evaluation.plots=False", *extra, f"--workdir={workdir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (name, out.stderr[-3000:])
    results[name] = json.loads((workdir / "results.json").read_text())
  assert results["auto"]["member_execution"] == "sharded" and results["auto"]["mesh"] == {"members": 4, "data": 1}
  assert results["vmap"]["member_execution"] == "vmap"
  assert results["2x2"]["mesh"] == {"members": 2, "data": 2}
  for r in results.values():
    assert r["train_steps"] == 429 and r["test"]["ensemble"]["accuracy"] > 0.8  # 55,000 / 128 steps, learned
  # the same members, executed two ways: equal up to float reordering
  nll = [[m["nll"] for m in results[k]["test"]["members"]] for k in ("auto", "vmap")]
  np.testing.assert_allclose(nll[0], nll[1], rtol=1e-4)


def test_layouts_that_do_not_divide_are_refused():
  out = _run([
      ("m_not_divisible", "deep_ensemble", {"num_members": 3, "mesh.members": 2}),
      ("batch_not_divisible", "deep_ensemble", {"num_members": 2, "mesh.data": 3, "training.batch_size": 32}),
      ("too_many_devices", "deep_ensemble", {"num_members": 4, "mesh.members": 4, "mesh.data": 4}),
      ("sharded_with_data", "deep_ensemble", {"num_members": 4, "mesh.data": 2, "member_execution": "sharded"}),
      ("auto_members", "deep_ensemble", {"num_members": 3, "mesh.data": 2}),  # 0 = the most devices dividing M
  ])
  assert "num_members (3) must be divisible by mesh.members (2)" in out["m_not_divisible"]["error"]
  assert "training.batch_size (32, per member) must be divisible by mesh.data (3)" in out["batch_not_divisible"]["error"]
  assert "needs 16 devices; 8 are available" in out["too_many_devices"]["error"]
  assert "member_execution='sharded' splits members only" in out["sharded_with_data"]["error"]
  assert out["auto_members"]["mesh"] == {"members": 3, "data": 2} and out["auto_members"]["equal"]
