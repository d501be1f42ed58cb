"""Whole EDST runs as a user waits for them, against a PyTorch dense loop of the same network.

  python -m benchmarks.end_to_end [--models lenet_300_100 lenet5_caffe] [--threads 1 2] [--epochs 6]

For every model and thread count, three processes run one after another, each timed from its
launch to its exit:
  * ``jax cold``: the CLI (`experiments.train`, in a child process, with phase timers) running EDST
    (M = 2 tickets, ΔT = 100, exploration 2 + 2 x 2 refinement epochs = 6 epochs) on offline
    Fashion-MNIST (55,000 train, validation of 5,000 every epoch, 10,000 test; no OoD or corruption
    sets, no plots) with an empty persistent compilation cache;
  * ``jax warm``: the same command again in a new workdir with that cache (what a rerun costs);
  * ``torch``: a PyTorch loop training one dense network of the same shape for the same epochs,
    batch (128) and optimizer (SGD, Nesterov momentum 0.9, weight decay 5e-4), with the same
    validation each epoch and test evaluation.
One thread: the process is pinned to core 0 (taskset) with one XLA / PyTorch thread; two: both cores.

The JAX run is split into start-up (launch to the first training step: imports, data, model and mask
set-up), compilation (tracing, lowering, XLA compiles and cache reads, from jax.monitoring), training
steps, topology updates, validation, test evaluation, ticket saves and checkpoints; each phase's time
excludes the compiles made inside it. Each step's achieved GFLOP/s is the FLOPs it executes (the dense
network's: 3 x forward FLOPs of the FLOPs counter x batch; the masked weights are multiplied too)
over its time, against this core's peak (`core_peak_gflops`). Writes
benchmarks/results/end_to_end_cpu.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
BATCH, VAL_SIZE, MEMBERS, UPDATE_EVERY = 128, 5000, 2, 100


def core_peak_gflops(clock_ghz: float) -> dict:
  """fp32 peak of one core: FMA units x vector lanes x 2 FLOPs per FMA x clock. This CPU reports
  AVX-512 (and AMX, AVX512-FP16: a Sapphire Rapids-class Xeon, 2 AVX-512 FMA units per core); the
  clock is the nominal one the VM reports (turbo, if any, is hidden from the guest)."""
  fma_units, lanes = 2, 16
  return {"fma_units": fma_units, "fp32_lanes": lanes, "clock_ghz": clock_ghz,
          "gflops": fma_units * lanes * 2 * clock_ghz}


def _clock_ghz() -> float:
  """The clock /proc/cpuinfo reports ('cpu MHz'; in this VM the nominal one), in GHz; 2.6 if absent."""
  mhz = [float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz")]
  return round(mhz[0] / 1000, 2) if mhz else 2.6


def edst_flags(model: str, epochs: int) -> list[str]:
  """The CLI overrides of the benchmarked EDST run (``epochs`` = exploration + 2 x refinement)."""
  refinement = max((epochs - 2) // MEMBERS, 1)
  exploration = epochs - MEMBERS * refinement
  return [f"--config.model.name={model}", f"--config.num_members={MEMBERS}",
          f"--config.edst.exploration_epochs={exploration}", f"--config.edst.refinement_epochs={refinement}",
          f"--config.training.epochs={epochs}", f"--config.sparse.update_every={UPDATE_EVERY}",
          f"--config.training.batch_size={BATCH}", f"--config.dataset.val_size={VAL_SIZE}",
          "--config.evaluation.ood_datasets=()", "--config.evaluation.corruptions=()",
          "--config.evaluation.plots=False"]


def _thread_env(threads: int) -> tuple[list[str], dict]:
  """(command prefix, environment) running a process on ``threads`` cores with as many threads."""
  env = dict(os.environ)
  if threads == 1:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                        "intra_op_parallelism_threads=1").strip()
    return ["taskset", "-c", "0"], env
  return [], env


def _spawn(kind: str, model: str, threads: int, args, workdir: str, cache: str) -> dict:
  """Runs one child process; returns its timings with the whole wall time measured from here."""
  prefix, env = _thread_env(threads)
  env["ENSEMBLES_COMPILATION_CACHE"] = cache
  out = os.path.join(workdir, "timings.json")
  launch = time.time()
  cmd = [*prefix, sys.executable, "-m", "benchmarks.end_to_end", "--child", kind, "--models", model,
         "--threads", str(threads), "--epochs", str(args.epochs), "--train-subset", str(args.train_subset),
         "--workdir", workdir, "--launch", repr(launch)]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  wall = time.time() - launch
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  with open(out) as f:
    result = json.load(f)
  result["whole_s"] = wall
  return result


# ----------------------------------------------------------------------------- the JAX child

class _Phases:
  """Wall time per phase of a run and the compile time inside each (jax.monitoring events)."""

  COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                    "/jax/core/compile/backend_compile_duration")  # (includes persistent-cache reads)

  def __init__(self):
    self.wall = collections.defaultdict(float)
    self.compile = collections.defaultdict(float)
    self.calls = collections.defaultdict(int)
    self.current = "startup"
    self.fit_start = None

  def on_event(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event in self.COMPILE_EVENTS:
      self.compile[self.current] += duration

  @contextlib.contextmanager
  def phase(self, name: str):
    previous, self.current = self.current, name
    start = time.perf_counter()
    try:
      yield
    finally:
      self.wall[name] += time.perf_counter() - start
      self.calls[name] += 1
      self.current = previous

  def wrap(self, fn, name: str):
    import jax  # pylint: disable=g-import-not-at-top

    def wrapped(*args, **kwargs):
      with self.phase(name):
        out = fn(*args, **kwargs)
        jax.block_until_ready(out)  # the work belongs to this phase
      return out

    return wrapped


def _instrument(phases: _Phases) -> None:
  """Puts the phase timers around the library's steps, updates, validation and evaluation."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from ensembles import api, collected, context, trainer  # pylint: disable=g-import-not-at-top
  from ensembles.methods import sparse_common  # pylint: disable=g-import-not-at-top

  jax.monitoring.register_event_duration_secs_listener(phases.on_event)
  build = context.build

  def timed_build(*args, **kwargs):
    run = build(*args, **kwargs)
    return dataclasses.replace(run, train_step=phases.wrap(run.train_step, "steps"),
                               train_chunk=phases.wrap(run.train_chunk, "steps"))

  context.build = timed_build
  make_update = sparse_common.make_topology_update
  sparse_common.make_topology_update = lambda *a, **k: phases.wrap(make_update(*a, **k), "topology")
  trainer._validate = phases.wrap(trainer._validate, "validation")  # pylint: disable=protected-access
  api.evaluate = phases.wrap(api.evaluate, "evaluation")
  collected.Collection.save = phases.wrap(collected.Collection.save, "tickets")
  trainer._Checkpoints.save = phases.wrap(trainer._Checkpoints.save, "checkpoints")  # pylint: disable=protected-access
  fit = trainer.fit

  def timed_fit(*args, **kwargs):
    if phases.fit_start is None:
      phases.fit_start = time.time()
      phases.current = "other"
    return fit(*args, **kwargs)

  trainer.fit = timed_fit


def _child_jax(args) -> dict:
  phases = _Phases()
  _instrument(phases)
  from absl import app  # pylint: disable=g-import-not-at-top
  from ensembles import flops as flops_lib, models  # pylint: disable=g-import-not-at-top
  from experiments import train as cli  # pylint: disable=g-import-not-at-top

  model = args.models[0]
  sys.argv = ["experiments.train", "--config=experiments/configs/edst_ensemble.py",
              f"--workdir={os.path.join(args.workdir, 'run')}", *edst_flags(model, args.epochs),
              f"--config.dataset.train_subset={args.train_subset}"]
  try:
    app.run(cli.main, flags_parser=cli.parse_flags)
  except SystemExit as exit_:
    if exit_.code:
      raise
  end = time.time()
  with open(os.path.join(args.workdir, "run", "results.json")) as f:
    results = json.load(f)
  forward = flops_lib.forward_flops(flops_lib.layer_costs(models.build_model(model, 10), (28, 28, 1)))
  return {"launch_to_end_s": end - args.launch, "startup_s": phases.fit_start - args.launch,
          "wall_s": dict(phases.wall), "compile_s": dict(phases.compile), "calls": dict(phases.calls),
          "steps": results["train_steps"], "forward_flops_dense": forward,
          "test_accuracy": results["test"]["ensemble"]["accuracy"]}


# ----------------------------------------------------------------------------- the PyTorch child

def _read_idx(name: str):
  import numpy as np  # pylint: disable=g-import-not-at-top
  with gzip.open(os.path.join(FASHION_MNIST, name)) as f:
    data = f.read()
  dims = data[3]
  shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
  return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _torch_model(name: str, tnn):
  if name == "lenet_300_100":
    return tnn.Sequential(tnn.Flatten(), tnn.Linear(784, 300), tnn.ReLU(), tnn.Linear(300, 100), tnn.ReLU(),
                          tnn.Linear(100, 10))
  if name == "lenet5_caffe":
    return tnn.Sequential(tnn.Conv2d(1, 20, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Conv2d(20, 50, 5), tnn.ReLU(),
                          tnn.MaxPool2d(2), tnn.Flatten(), tnn.Linear(800, 500), tnn.ReLU(), tnn.Linear(500, 10))
  raise ValueError(f"no PyTorch reference for model {name!r}; one of lenet_300_100, lenet5_caffe")


def _child_torch(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn as tnn  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads[0])
  torch.manual_seed(0)
  x_all = torch.from_numpy(_read_idx("train-images-idx3-ubyte.gz").copy()).unsqueeze(1)  # [N, 1, 28, 28] uint8
  y_all = torch.from_numpy(_read_idx("train-labels-idx1-ubyte.gz").astype("int64"))
  x_test = torch.from_numpy(_read_idx("t10k-images-idx3-ubyte.gz").copy()).unsqueeze(1)
  y_test = torch.from_numpy(_read_idx("t10k-labels-idx1-ubyte.gz").astype("int64"))
  x_train, y_train, x_val, y_val = x_all[VAL_SIZE:], y_all[VAL_SIZE:], x_all[:VAL_SIZE], y_all[:VAL_SIZE]
  if args.train_subset:
    x_train, y_train = x_train[:args.train_subset], y_train[:args.train_subset]
  mean, std = x_train.float().mean() / 255, x_train.float().std() / 255
  net = _torch_model(args.models[0], tnn)
  opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
  loss_fn = tnn.CrossEntropyLoss()
  normalize = lambda x: (x.float() / 255 - mean) / std

  def evaluate(x, y):
    net.eval()
    with torch.no_grad():
      correct = sum(int((net(normalize(x[i:i + 1000])).argmax(1) == y[i:i + 1000]).sum()) for i in range(0, len(y), 1000))
    net.train()
    return correct / len(y)

  startup = time.time() - args.launch
  steps_per_epoch = len(y_train) // BATCH
  step_s = eval_s = 0.0
  for _ in range(args.epochs):
    perm = torch.randperm(len(y_train))
    start = time.perf_counter()
    for i in range(steps_per_epoch):
      idx = perm[i * BATCH:(i + 1) * BATCH]
      opt.zero_grad(set_to_none=True)
      loss_fn(net(normalize(x_train[idx])), y_train[idx]).backward()
      opt.step()
    step_s += time.perf_counter() - start
    start = time.perf_counter()
    evaluate(x_val, y_val)
    eval_s += time.perf_counter() - start
  start = time.perf_counter()
  accuracy = evaluate(x_test, y_test)
  eval_s += time.perf_counter() - start
  return {"launch_to_end_s": time.time() - args.launch, "startup_s": startup, "wall_s": {"steps": step_s,
          "evaluation": eval_s}, "steps": args.epochs * steps_per_epoch, "test_accuracy": accuracy,
          "torch": torch.__version__}


# ----------------------------------------------------------------------------- the parent

def summarize(model: str, threads: int, cold: dict, warm: dict, ref: dict, peak: dict) -> dict:
  """Per-phase seconds, per-step and per-epoch ratios to PyTorch, achieved GFLOP/s."""
  def net(run, phase):
    return run["wall_s"].get(phase, 0.0) - run["compile_s"].get(phase, 0.0)

  steps = warm["steps"]
  step_ms = 1e3 * net(warm, "steps") / steps
  executed = 3 * warm["forward_flops_dense"] * BATCH  # one network, dense math on masked weights
  row = {"model": model, "threads": threads,
         "jax_whole_s_first": cold["whole_s"], "jax_whole_s_rerun": warm["whole_s"],
         "startup_s_first": cold["startup_s"], "startup_s_rerun": warm["startup_s"],
         "compile_s_first": sum(cold["compile_s"].values()), "compile_s_rerun": sum(warm["compile_s"].values()),
         "steps_s": net(warm, "steps"), "topology_s": net(warm, "topology"),
         "topology_updates": warm["calls"].get("topology", 0),
         "evaluation_s": net(warm, "validation") + net(warm, "evaluation"),
         "tickets_checkpoints_s": net(warm, "tickets") + net(warm, "checkpoints"),
         "step_ms": step_ms, "step_gflops": executed / step_ms / 1e6, "peak_gflops": peak["gflops"] * threads,
         "jax_test_accuracy": warm["test_accuracy"]}
  row["step_fraction_of_peak"] = row["step_gflops"] / row["peak_gflops"]
  if ref is None:  # PyTorch is not installed
    return row
  ref_step_ms = 1e3 * ref["wall_s"]["steps"] / ref["steps"]
  row.update({"torch_whole_s": ref["whole_s"], "torch_startup_s": ref["startup_s"],
              "whole_ratio_rerun": warm["whole_s"] / ref["whole_s"], "whole_ratio_first": cold["whole_s"] / ref["whole_s"],
              "torch_steps_s": ref["wall_s"]["steps"], "torch_evaluation_s": ref["wall_s"]["evaluation"],
              "torch_step_ms": ref_step_ms, "step_ratio": step_ms / ref_step_ms,
              "epoch_ratio": (net(warm, "steps") + net(warm, "topology")) / ref["wall_s"]["steps"],
              "torch_step_gflops": executed / ref_step_ms / 1e6, "torch_test_accuracy": ref["test_accuracy"],
              "torch_version": ref["torch"]})
  return row


def table(rows: list[dict]) -> str:
  lines = ["| model | threads | JAX whole run, first / rerun (s) | PyTorch whole run (s) | rerun / PyTorch | "
           "start-up first / rerun (s) | compile first / rerun (s) | steps (s) | topology updates (s) | "
           "evaluation (s) | step JAX / PyTorch (ms) | step GFLOP/s JAX / PyTorch (peak) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  fmt = lambda r, key, spec: "–" if r.get(key) is None else format(r[key], spec)
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['threads']} | {r['jax_whole_s_first']:.1f} / {r['jax_whole_s_rerun']:.1f} | "
        f"{fmt(r, 'torch_whole_s', '.1f')} | {fmt(r, 'whole_ratio_rerun', '.2f')} | {r['startup_s_first']:.1f} / "
        f"{r['startup_s_rerun']:.1f} | {r['compile_s_first']:.1f} / {r['compile_s_rerun']:.1f} | {r['steps_s']:.1f} | "
        f"{r['topology_s']:.2f} ({r['topology_updates']}) | {r['evaluation_s']:.1f} | {r['step_ms']:.2f} / "
        f"{fmt(r, 'torch_step_ms', '.2f')} | {r['step_gflops']:.0f} / {fmt(r, 'torch_step_gflops', '.0f')} "
        f"({r['peak_gflops']:.0f}) |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", nargs="+", default=["lenet_300_100", "lenet5_caffe"])
  p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
  p.add_argument("--epochs", type=int, default=6)
  p.add_argument("--train-subset", type=int, default=0, help="> 0: train on this many examples (quick checks)")
  p.add_argument("--out", default="benchmarks/results/end_to_end_cpu.json")
  p.add_argument("--child", choices=["jax", "torch"], help=argparse.SUPPRESS)
  p.add_argument("--workdir", help=argparse.SUPPRESS)
  p.add_argument("--launch", type=float, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    result = (_child_jax if args.child == "jax" else _child_torch)(args)
    with open(os.path.join(args.workdir, "timings.json"), "w") as f:
      json.dump(result, f)
    return
  peak = core_peak_gflops(_clock_ghz())
  rows = []
  for model in args.models:
    for threads in args.threads:
      tmp = tempfile.mkdtemp(prefix="end_to_end_")
      try:
        cache = os.path.join(tmp, "cache")
        runs = {}
        for kind, name in (("jax", "cold"), ("jax", "warm"), ("torch", "torch")):
          if kind == "torch" and importlib.util.find_spec("torch") is None:
            print("PyTorch is not installed (pip install torch==2.13.0): no reference run.", file=sys.stderr)
            runs[name] = None
            continue
          workdir = os.path.join(tmp, name)
          os.makedirs(workdir)
          runs[name] = _spawn(kind, model, threads, args, workdir, cache)
          print(f"{model}, {threads} thread(s), {name}: {runs[name]['whole_s']:.1f} s", file=sys.stderr, flush=True)
        rows.append({**summarize(model, threads, runs["cold"], runs["warm"], runs["torch"], peak), "raw": runs})
      finally:
        shutil.rmtree(tmp, ignore_errors=True)
  print(table(rows))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"core_peak": peak, "epochs": args.epochs, "members": MEMBERS, "update_every": UPDATE_EVERY,
               "batch": BATCH, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
