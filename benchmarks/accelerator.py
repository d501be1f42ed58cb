"""What we run first on a new accelerator host: the accelerator tests, then members in one step
against separate steps, ResNet-50's bf16 throughput and MFU, and seeds as members. One command, at
most about 8 minutes on one GPU or TPU host; it installs nothing.

  python -m benchmarks.accelerator [--out benchmarks/results/accelerator_<device>.json] [--quick]

1. tests: `pytest tests/test_accelerator.py` on this backend (JAX_PLATFORMS='': the accelerator;
   its `slow` tests included) -- members in one step equal separate steps, sharded equals vmap,
   conv lowering, compiled memory fits, bf16 near f32.
2. members: for MLP (784-512-512-10), ResNet-18 (CIFAR 32x32, small stem) and ResNet-50 (224x224),
   M members trained in one compiled step (``vmap``; ``sharded`` over the devices when they divide
   M) against M separate single-member steps called one after another; images/s and the speed-up
   x_separate = t_separate / t_one_step (> 1: one step of M members is faster).
3. ResNet-50, bf16, one member: images/s and MFU = 3 · f · images/s / (devices · peak)
   (f: our counter's forward FLOPs per image; peak: `ensembles.hardware`, datasheet).
4. seeds as members: S = 3 seeds of a 4-member ResNet-18 deep ensemble as 12 members of one step,
   against the 3 seeds' steps one after another.
Each time is the best of several calls after a compiling call (`benchmarks.timing.best_time`). Writes
one JSON (all numbers, the device, versions) and prints a markdown table. ``--quick``: reduced widths
and inputs (the CPU check in tests/test_benchmarks.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.timing import best_time
from ensembles import flops as flops_lib
from ensembles import hardware
from ensembles import members as members_lib
from ensembles import train as train_lib
from ensembles.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (registry name, fields, input shape, classes, batch per member); --quick: reduced
MODELS = {
    "mlp": ("mlp", {"hidden": (512, 512)}, (28, 28, 1), 10, 128),
    "resnet18_cifar": ("imagenet_resnet", {"depth": 18, "stem": "small"}, (32, 32, 3), 10, 128),
    "resnet50_224": ("imagenet_resnet", {"depth": 50}, (224, 224, 3), 1000, 64),
}
QUICK = {
    "mlp": ("mlp", {"hidden": (64,)}, (28, 28, 1), 10, 16),
    "resnet18_cifar": ("imagenet_resnet", {"depth": 18, "stem": "small", "width": 4}, (16, 16, 3), 10, 8),
    "resnet50_224": ("imagenet_resnet", {"depth": 50, "width": 4}, (32, 32, 3), 10, 8),
}


class Step:
  """The library's jitted train step for M members of one model (`train.make_train_step`)."""

  def __init__(self, spec, m: int, execution: str = "vmap", compute_dtype: str = "float32", batch: int | None = None):
    name, fields, self.shape, classes, default_batch = spec
    self.batch = batch or default_batch
    self.model = build_model(name, classes, fields)
    tx = optax.sgd(0.1, momentum=0.9)
    mesh = members_lib.make_mesh(devices=jax.devices(), num_members=m) if execution == "sharded" else None
    rng = np.random.default_rng(0)
    self.images = jnp.asarray(rng.integers(0, 256, (2 * self.batch, *self.shape)), jnp.uint8)
    self.labels = jnp.asarray(rng.integers(0, classes, 2 * self.batch), jnp.int32)
    self.state = train_lib.init_state(self.model, tx, jax.random.PRNGKey(0), m, self.shape, mesh)
    idx = np.tile(np.arange(self.batch, dtype=np.int32)[None], (m, 1))
    self.idx = members_lib.place(idx, mesh, members_lib.MEMBER_AXIS) if mesh is not None else jnp.asarray(idx)
    c = self.shape[-1]
    self.step = train_lib.make_train_step(
        self.model, tx, execution=members_lib.Execution(execution, mesh, name != "mlp"),
        mean=np.full(c, 0.5, np.float32), std=np.full(c, 0.25, np.float32), compute_dtype=compute_dtype)

  def __call__(self):
    self.state, metrics = self.step(self.state, self.images, self.labels, self.idx)
    jax.block_until_ready(metrics)

  def forward_flops(self) -> float:
    return flops_lib.forward_flops(flops_lib.layer_costs(self.model, self.shape))


def separate_steps(spec, m: int, min_time: float, compute_dtype: str = "float32") -> float:
  """Seconds of M single-member steps called one after another."""
  steps = [Step(spec, 1, compute_dtype=compute_dtype) for _ in range(m)]

  def run():
    for step in steps:
      step()

  return best_time(run, min_time)


def run_tests() -> dict:
  """tests/test_accelerator.py on this backend; (passed, summary line, seconds)."""
  start = time.perf_counter()
  env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "")}
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow",
                         "tests/test_accelerator.py"], cwd=ROOT, env=env, capture_output=True, text=True)
  summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
  return {"passed": proc.returncode == 0, "summary": summary, "seconds": round(time.perf_counter() - start, 1),
          **({} if proc.returncode == 0 else {"output": proc.stdout[-4000:] + proc.stderr[-2000:]})}


def device_info() -> dict:
  d = jax.devices()[0]
  memory = hardware.memory_bytes(d)
  return {"platform": d.platform, "device_kind": getattr(d, "device_kind", d.platform), "devices": jax.device_count(),
          "memory_gib": None if memory is None else round(memory / 2**30, 2), "jax": jax.__version__,
          "host": platform.node(), "cpus": os.cpu_count()}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/accelerator_<device>.json)")
  p.add_argument("--members", type=int, default=4)
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--min-time", type=float, default=1.0, help="seconds timed per measurement")
  p.add_argument("--quick", action="store_true", help="reduced models and inputs (a check that the script runs)")
  p.add_argument("--no-tests", action="store_true", help="skip tests/test_accelerator.py")
  args = p.parse_args(argv)
  specs = QUICK if args.quick else MODELS
  start = time.perf_counter()
  info = device_info()
  print(f"{info['devices']} x {info['device_kind']} ({info['platform']}), jax {info['jax']}", flush=True)
  result = {"device": info, "quick": args.quick, "members": args.members}
  if not args.no_tests:
    result["tests"] = run_tests()
    print(f"tests/test_accelerator.py: {result['tests']['summary']} ({result['tests']['seconds']} s)", flush=True)
  m, rows = args.members, []
  for key, spec in specs.items():
    separate = separate_steps(spec, m, args.min_time)
    modes = ["vmap"] + (["sharded"] if info["devices"] > 1 and m % info["devices"] == 0 else [])
    for mode in modes:
      step = Step(spec, m, mode)
      t = best_time(step, args.min_time)
      rows.append({"model": key, "members": m, "mode": mode, "batch": step.batch, "step_ms": 1e3 * t,
                   "separate_ms": 1e3 * separate, "images_per_s": m * step.batch / t, "x_separate": separate / t})
      print(f"  {key:15s} M={m} {mode:8s} {1e3 * t:9.2f} ms (separate {1e3 * separate:9.2f} ms) "
            f"x_separate {separate / t:.2f}", flush=True)
  result["members_rows"] = rows
  spec = specs["resnet50_224"]
  step = Step(spec, 1, compute_dtype="bfloat16", batch=spec[4] * 2)
  t = best_time(step, args.min_time)
  peak = hardware.peak_flops(jax.devices()[0], "bfloat16")
  images_per_s = step.batch / t
  result["resnet50_bf16"] = {"batch": step.batch, "step_ms": 1e3 * t, "images_per_s": images_per_s,
                             "forward_gflops": step.forward_flops() / 1e9,
                             "mfu": None if peak is None else 3 * step.forward_flops() * images_per_s / peak}
  print(f"  resnet50 bf16 batch {step.batch}: {images_per_s:,.0f} images/s, MFU "
        f"{result['resnet50_bf16']['mfu'] if peak else 'unknown (no peak for this device)'}", flush=True)
  spec = specs["resnet18_cifar"]
  alone = best_time(Step(spec, m), args.min_time) * args.seeds
  together = best_time(Step(spec, args.seeds * m), args.min_time)
  result["seeds_as_members"] = {"seeds": args.seeds, "members": m, "one_after_another_ms": 1e3 * alone,
                                "as_members_ms": 1e3 * together, "speedup": alone / together}
  print(f"  seeds as members ({args.seeds} x {m} ResNet-18): x{alone / together:.2f}", flush=True)
  result["wall_s"] = round(time.perf_counter() - start, 1)
  table = markdown(result)
  print("\n" + table)
  kind = info["device_kind"].lower().replace(" ", "_")
  out = args.out or os.path.join(ROOT, "benchmarks", "results", f"accelerator_{kind}{'_quick' if args.quick else ''}.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {out} ({result['wall_s']} s)")
  if "tests" in result and not result["tests"]["passed"]:
    sys.exit(1)


def markdown(result: dict) -> str:
  d = result["device"]
  lines = [f"{d['devices']} x {d['device_kind']}, jax {d['jax']}" + (" (--quick)" if result["quick"] else ""), "",
           "| model | M | mode | batch per member | one step (ms) | M separate steps (ms) | images/s | x_separate |",
           "|---|---|---|---|---|---|---|---|"]
  for r in result["members_rows"]:
    lines.append(f"| {r['model']} | {r['members']} | {r['mode']} | {r['batch']} | {r['step_ms']:.2f} | "
                 f"{r['separate_ms']:.2f} | {r['images_per_s']:,.0f} | {r['x_separate']:.2f} |")
  r = result["resnet50_bf16"]
  mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
  s = result["seeds_as_members"]
  lines += ["", f"ResNet-50 bf16, batch {r['batch']}: {r['images_per_s']:,.0f} images/s, MFU {mfu}. "
            f"Seeds as members ({s['seeds']} x {s['members']} ResNet-18): {s['one_after_another_ms']:.1f} ms one "
            f"after another, {s['as_members_ms']:.1f} ms together (x{s['speedup']:.2f})."]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
