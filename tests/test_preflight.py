"""Pre-flight (`ensembles.preflight`, `python -m experiments.preflight`): programs compiled for TPU and
GPU targets from this CPU, with XLA's memory and FLOPs; the same step factories as training, the
conv lowering of the target's platform; one-line errors for a bad target, a mesh that leaves
devices idle and a missing compiler; exit status 1 with advice when a program does not fit.

The compilers live in .venv/compilers (`make compilers`, run by `make test`), put on PYTHONPATH of
the subprocesses only: imported into every JAX process they print warnings about missing hardware.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `make compilers` installs them beside the environment's bin/ (.venv/compilers)
COMPILERS = os.environ.get("ENSEMBLES_COMPILERS",
                           os.path.join(os.path.dirname(os.path.dirname(sys.executable)), "compilers"))
requires_compilers = pytest.mark.skipif(not os.path.exists(os.path.join(COMPILERS, "libtpu")),
                                        reason=f"no TPU/GPU compilers in {COMPILERS}: `make compilers`")


def env(compilers: bool = True) -> dict:
  out = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out.pop("XLA_FLAGS", None)
  if compilers:
    out["PYTHONPATH"] = COMPILERS
  return out


def cli(*args, compilers: bool = True) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "experiments.preflight", "--cache", "", *args], cwd=ROOT,
                        env=env(compilers), capture_output=True, text=True, timeout=600)


SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_platforms", "cpu")
    from ensembles import preflight, targets
    from experiments import cli

    def config(path, **fields):
      return cli.apply_overrides(cli.load_config_file(path), [(k, repr(v)) for k, v in fields.items()])

    target = targets.named("v5e-4")
    out = {"device_kind": target.device_kind, "hosts": target.num_hosts}
    # 1. an MLP deep ensemble, one member per chip: every program of the run
    run, results = preflight.preflight(config("experiments/configs/deep_ensemble.py"), target)
    out["deep"] = {"mesh": dict(run.mesh.shape), "execution": run.execution.mode,
                   "programs": {r.name: r.as_dict() for r in results}}
    try:  # nothing can be placed on compile-only devices: a clear error, not XLA's
      run.init_members()
    except ValueError as err:
      out["placing"] = str(err)
    # 2. DST, 2 members x 2 data-parallel chips: its programs; compiled (argv "compile"): the train
    # step and the topology update (RigL)
    compile_more = sys.argv[1:] == ["compile"]
    run, method, options = preflight.run_for(config("experiments/configs/dst_ensemble.py", num_members=2,
                                                    **{"mesh.members": 2, "mesh.data": 2}), target)
    programs = {p.name: p for p in preflight.plan_for(method, run, options).programs}
    out["dst"] = {"names": sorted(programs), **{name: preflight.compile_program(programs[name], target).as_dict()
                                               for name in ("train chunk (per step)", "topology update")
                                               if compile_more}}
    # 3. a reduced ResNet: the conv lowering is the target's (XLA convolutions on TPU, im2col patches
    # for the stem and strided layers on CPU), from the same step factory
    resnet = config("experiments/configs/deep_ensemble.py", member_execution="vmap",  # one traced member either way
                    **{"model.name": "resnet", "dataset.train_subset": 512})
    resnet.model.depth = 8
    convolutions = {}
    for name, t in (("tpu", target), ("cpu", targets.local())):
      r, m, o = preflight.run_for(resnet, t)
      chunk = next(p for p in preflight.plan_for(m, r, o).programs if p.name.startswith("train"))  # chunk or step
      convolutions[name] = chunk.jitted.lower(*chunk.args).as_text().count("stablehlo.convolution")
      if name == "tpu" and compile_more:
        out["resnet_tpu"] = preflight.compile_program(chunk, t).as_dict()
    out["convolutions"] = convolutions
    print("RESULT " + json.dumps(out))
""")


def v5e_4(*args) -> dict:
  proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=ROOT, env=env(), capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.split("RESULT ", 1)[1])


@requires_compilers
def test_small_programs_compile_for_a_v5e_4_slice():
  """An MLP deep ensemble's programs compiled; DST's programs and a ResNet's step lowered (the
  conv lowering of each platform)."""
  out = v5e_4()
  assert out["device_kind"] == "TPU v5 lite" and out["hosts"] == 1
  assert out["placing"].startswith("cannot initialise members on v5e-4: its devices are compile-only")
  deep = out["deep"]
  assert deep["mesh"] == {"members": 4, "data": 1} and deep["execution"] == "sharded"
  assert set(deep["programs"]) == {"init", "train chunk (per step)", "validation prediction", "ensemble evaluation"}
  for result in deep["programs"].values():
    assert result["fits"] and result["memory_bytes"] > 0 and result["device_bytes"] == 15.75 * 2**30
  train = deep["programs"]["train chunk (per step)"]
  # one MLP member per chip: the state is donated (aliased), the training set replicated (47 MB)
  assert train["alias_bytes"] > 0 and train["argument_bytes"] > 55_000 * 784
  # ours counts 3 x forward per trained example; XLA skips the first layer's input gradient (1 of 3
  # passes of its 784 x 512 of 669k MACs): about 0.80
  assert 0.75 < train["flops_ratio"] < 0.9, train
  assert train["collectives"] == 0  # members never reduce across chips
  assert abs(deep["programs"]["validation prediction"]["flops_ratio"] - 1) < 0.02
  assert {"mask initialisation", "topology update", "ensemble evaluation"} <= set(out["dst"]["names"])
  # ResNet-8 has 9 conv layers; on CPU the stem (3 channels) and the 4 strided ones become patches
  assert out["convolutions"]["tpu"] > out["convolutions"]["cpu"] > 0, out["convolutions"]


@requires_compilers
@pytest.mark.slow  # about a minute more: a DST step and its topology update, and a ResNet step, compiled
def test_dst_update_and_a_resnet_compile_for_a_v5e_4_slice():
  out = v5e_4("compile")
  dst = out["dst"]
  assert dst["topology update"]["fits"] and dst["train chunk (per step)"]["collectives"] >= 1  # data-parallel
  assert out["resnet_tpu"]["fits"] and 0.7 < out["resnet_tpu"]["flops_ratio"] < 1.1, out["resnet_tpu"]


@requires_compilers
def test_cli_on_a_gpu_host_and_a_program_that_does_not_fit(tmp_path):
  report_file = tmp_path / "h100.json"
  proc = cli("--config", "experiments/configs/deep_ensemble.py", "--target", "h100x8", "--config.mesh.members=4",
             "--config.mesh.data=2", "--json", str(report_file), "--save", str(tmp_path / "compiled"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(report_file.read_text())
  assert report["device_kind"] == "NVIDIA H100 80GB HBM3" and report["mesh"] == {"members": 4, "data": 2}
  assert report["fits"] and all(p["fits"] for p in report["programs"])
  assert "cudart_stub" not in proc.stderr  # the plugin's warnings about the missing GPU are kept quiet
  saved = sorted(p.name for p in (tmp_path / "compiled").iterdir())  # serialised for loading on the host
  assert saved == ["ensemble_evaluation.xla", "init.xla", "train_chunk_per_step_.xla", "validation_prediction.xla"]
  assert all(p["saved"] for p in report["programs"])
  # 2 x 65,536-unit hidden layers: 32 GiB of parameters and momentum on a 15.75 GiB chip
  proc = cli("--config", "experiments/configs/single.py", "--target", "v5e-1", "--config.model.hidden=(65536,65536)")
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "DOES NOT FIT (the compiler refused it)" in proc.stdout
  assert "parameters and optimizer state alone take 32.39 GiB per device" in proc.stdout
  assert "--config.training.compute_dtype=bfloat16" in proc.stdout


@pytest.mark.parametrize("args, compilers, message", [
    (["--target", "v5e-3"], True, "error: unknown target 'v5e-3'; known: v5e-1, v5e-4"),
    (["--target", "v5e-4", "--config.num_members=3"], True,
     "error: target v5e-4 has 4 devices; the run's mesh (mesh.members=3 x mesh.data=1) uses 3"),
    (["--target", "v5e-16", "--config.num_members=2", "--config.mesh.data=2"], True,
     "error: On 4 hosts every step must run on devices of each: 2 member(s) on mesh.members=2 x mesh.data=2 use 4"),
    (["--target", "v5e-4"], False, 'needs libtpu, which is not installed: pip install -e ".[tpu]"'),
    (["--target", "a100x8"], False, 'needs the CUDA plugin, which is not installed: pip install -e ".[cuda12]"'),
])
def test_cli_mistakes_are_one_line(args, compilers, message):
  if compilers and not os.path.exists(os.path.join(COMPILERS, "libtpu")):
    pytest.skip(f"no TPU/GPU compilers in {COMPILERS}: `make compilers`")
  proc = cli("--config", "experiments/configs/deep_ensemble.py", *args, compilers=compilers)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
