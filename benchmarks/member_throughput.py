"""Throughput of M ensemble members in one compiled step against M separate single-member steps.

  python -m benchmarks.member_throughput                      # all models, M in {2, 4, 8}
  python -m benchmarks.member_throughput --models lenet --members 4 --torch

For each model it measures, in one process (so the ratios share the machine's state):
  single        one member, one jitted step (baseline t1)
  python_loop   M single-member steps called one after another from Python
  vmap / loop / map   M members in one jitted step (ensembles.members.member_map modes)
  sharded       the member axis split over the host's devices with shard_map (forced with
                --xla_force_host_platform_device_count, set by this script); each device runs
                its members with the single-device rule (loop for conv models on CPU, else vmap)
and the single step with each convolution implementation (xla, patches), plus an optional PyTorch
reference of the same models (--torch; needs `pip install torch`).
Reported: images/s over all members; `x_single` = M·t1 / t_M, the speed-up over M times the
isolated single step t1; and `x_loop` = t_python_loop / t_M, the speed-up over actually calling M
single-member steps in a row (>= 1 means the one compiled step is at least as fast). Each time is the
best of several calls. JSON goes to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys


def _parse():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="mlp,lenet,resnet20,wrn16_4")
  p.add_argument("--members", default="2,4,8")
  p.add_argument("--modes", default="python_loop,vmap,loop,map,sharded")
  p.add_argument("--skip", default="wrn16_4:map",
                 help="model:mode pairs not to time (WRN-16-4 under lax.map with XLA:CPU convolutions took "
                      "more than 6 minutes per step at M=2)")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--min-time", type=float, default=1.5, help="seconds timed per measurement")
  p.add_argument("--devices", type=int, default=2, help="forced host devices for the sharded mode")
  p.add_argument("--conv-impl", default="auto", choices=("auto", "xla", "patches"),
                 help="convolution for the member modes")
  p.add_argument("--torch", action="store_true", help="also time the PyTorch reference models")
  p.add_argument("--out", default="benchmarks/results/member_throughput.json")
  return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={ARGS.devices}").strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks.timing import best_time  # noqa: E402
from ensembles import members as members_lib  # noqa: E402
from ensembles import train as train_lib  # noqa: E402
from ensembles.models import build_model  # noqa: E402

SKIP_BELOW = 0.35  # a mode this much slower than single steps at some M is not timed at larger M

# name -> (registry name, kwargs, input shape, classes)
MODELS = {
    "mlp": ("mlp", {"hidden": (512, 512)}, (28, 28, 1), 10),
    "lenet": ("lenet", {"features": (32, 64), "hidden": (128,), "kernel_size": 5}, (28, 28, 1), 10),
    "resnet20": ("resnet", {"depth": 20}, (32, 32, 3), 10),
    "wrn16_4": ("wide_resnet", {"depth": 16, "width": 4}, (32, 32, 3), 10),
}


class Bench:
  """Builds the step of one model for M members with a given execution and times it."""

  def __init__(self, key, batch, conv_impl, batch_split=1):
    name, kwargs, self.shape, classes = MODELS[key]
    self.model = build_model(name, classes, {**kwargs, "conv_impl": conv_impl} if name != "mlp" else kwargs)
    self.tx = optax.sgd(0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    self.images = jnp.asarray(rng.integers(0, 256, (4 * batch, *self.shape)), jnp.uint8)
    self.labels = jnp.asarray(rng.integers(0, classes, 4 * batch), jnp.int32)
    self.batch = batch
    self.batch_split = batch_split
    self.mean, self.std = np.full(self.shape[-1], 0.5, np.float32), np.full(self.shape[-1], 0.25, np.float32)

  def state_and_step(self, m, execution, mesh=None):
    state = train_lib.init_state(self.model, self.tx, jax.random.PRNGKey(0), m, self.shape, mesh)
    execution = members_lib.Execution(execution, mesh, bool(self.model.has_conv))
    step = train_lib.make_train_step(self.model, self.tx, execution=execution, mean=self.mean, std=self.std,
                                     batch_split=self.batch_split)
    idx = jnp.tile(jnp.arange(self.batch, dtype=jnp.int32)[None], (m, 1))
    return state, step, idx

  def time_step(self, m, execution, min_time, mesh=None):
    state, step, idx = self.state_and_step(m, execution, mesh)
    if mesh is not None:
      idx = members_lib.place(np.asarray(idx), mesh, members_lib.MEMBER_AXIS)
    box = [state]

    def run():
      box[0], metrics = step(box[0], self.images, self.labels, idx)
      jax.block_until_ready(metrics)

    return best_time(run, min_time)

  def time_python_loop(self, m, min_time):
    state, step, idx = self.state_and_step(1, "loop")
    states = [jax.tree.map(jnp.array, state) for _ in range(m)]

    def run():
      out = None
      for i in range(m):
        states[i], out = step(states[i], self.images, self.labels, idx)
      jax.block_until_ready(out)

    return best_time(run, min_time)


def member_mesh(m):
  """All devices on the ``members`` axis (the mesh the library builds); None if M is not divisible.
  Inputs must be laid out on this same mesh: arrays sharded over another mesh object of the same
  devices made the shard_map step several times slower here."""
  devices = jax.devices()
  if len(devices) < 2 or m % len(devices):
    return None
  return members_lib.make_mesh(len(devices), 1)


def torch_step_time(key, batch, min_time):
  """Seconds per SGD step of the same model in PyTorch on CPU, or None if torch is missing."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from torch import nn as tnn  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count() or 1)
  name, kwargs, shape, classes = MODELS[key]
  h, w, c = shape
  if name == "mlp":
    net = tnn.Sequential(tnn.Flatten(), tnn.Linear(h * w * c, 512), tnn.ReLU(), tnn.Linear(512, 512), tnn.ReLU(),
                         tnn.Linear(512, classes))
  elif name == "lenet":
    k = kwargs["kernel_size"]
    net = tnn.Sequential(tnn.Conv2d(c, 32, k, padding=k // 2), tnn.ReLU(), tnn.MaxPool2d(2),
                         tnn.Conv2d(32, 64, k, padding=k // 2), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
                         tnn.Linear(64 * (h // 4) * (w // 4), 128), tnn.ReLU(), tnn.Linear(128, classes))
  elif name == "resnet":
    net = _torch_resnet(tnn, kwargs["depth"], classes)
  else:
    return None
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
  x = torch.randn(batch, c, h, w)
  y = torch.randint(0, classes, (batch,))

  def run():
    opt.zero_grad()
    loss = tnn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()

  return best_time(run, min_time)


def _torch_resnet(tnn, depth, classes):
  class Block(tnn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.body = tnn.Sequential(tnn.Conv2d(cin, cout, 3, stride, 1, bias=False), tnn.BatchNorm2d(cout), tnn.ReLU(),
                                 tnn.Conv2d(cout, cout, 3, 1, 1, bias=False), tnn.BatchNorm2d(cout))
      self.short = (tnn.Identity() if stride == 1 and cin == cout else
                    tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout)))

    def forward(self, x):
      return tnn.functional.relu(self.body(x) + self.short(x))

  n = (depth - 2) // 6
  layers, cin = [tnn.Conv2d(3, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU()], 16
  for stage, cout in enumerate((16, 32, 64)):
    for b in range(n):
      layers.append(Block(cin, cout, 2 if stage > 0 and b == 0 else 1))
      cin = cout
  layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, classes)]
  return tnn.Sequential(*layers)


def main(args):
  ms = [int(m) for m in args.members.split(",")]
  modes = sorted(args.modes.split(","), key=_mode_order)  # python_loop first: x_loop needs it
  rows, conv_rows = [], []
  print(f"backend {jax.default_backend()}, {len(jax.devices())} devices, batch {args.batch} per member, "
        f"jax {jax.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        flush=True)
  for key in args.models.split(","):
    has_conv = MODELS[key][0] != "mlp"
    impls = ("xla", "patches", "auto") if has_conv else ("-",)
    singles = {}
    for impl in impls:
      bench = Bench(key, args.batch, impl if has_conv else "auto")
      singles[impl] = bench.time_step(1, "loop", args.min_time)
    if has_conv and not bench.model.__class__.__name__.endswith("ResNet"):  # no BatchNorm
      singles["auto_split2"] = Bench(key, args.batch, "auto", batch_split=2).time_step(1, "loop", args.min_time)
    t_torch = torch_step_time(key, args.batch, args.min_time) if args.torch else None
    conv_rows.append({"model": key, **{f"single_ms_{k}": 1e3 * v for k, v in singles.items()},
                      "torch_ms": None if t_torch is None else 1e3 * t_torch})
    print("  single step " + ", ".join(f"{k}: {1e3 * v:.1f} ms" for k, v in singles.items()) +
          ("" if t_torch is None else f", PyTorch: {1e3 * t_torch:.1f} ms"), flush=True)
    bench = Bench(key, args.batch, args.conv_impl)
    impl = args.conv_impl if has_conv else "-"
    t1 = singles[impl] if impl in singles else bench.time_step(1, "loop", args.min_time)
    hopeless = {}  # mode -> M at which it fell below SKIP_BELOW
    for m in ms:
      for mode in modes:
        if f"{key}:{mode}" in args.skip.split(","):
          print(f"  {key:9s} M={m} {mode:12s} skipped (--skip)", flush=True)
          continue
        if mode in hopeless:
          print(f"  {key:9s} M={m} {mode:12s} skipped: x_single < {SKIP_BELOW} at M={hopeless[mode]}", flush=True)
          continue
        if mode == "python_loop":
          t = bench.time_python_loop(m, args.min_time)
        elif mode == "sharded":
          mesh = member_mesh(m)
          if mesh is None:
            continue
          t = bench.time_step(m, "sharded", args.min_time, mesh)
        else:
          t = bench.time_step(m, mode, args.min_time)
        if mode == "python_loop":
          t_loop = t
        row = {"model": key, "members": m, "mode": mode, "conv_impl": impl, "step_ms": 1e3 * t,
               "images_per_s": m * args.batch / t, "x_single": m * t1 / t,
               "x_loop": t_loop / t if "python_loop" in modes else None}
        rows.append(row)
        if row["x_single"] < SKIP_BELOW and mode != "python_loop":
          hopeless[mode] = m
        print(f"  {key:9s} M={m} {mode:12s} {row['step_ms']:9.1f} ms  {row['images_per_s']:9.0f} img/s  "
              f"x_single {row['x_single']:.2f}  x_loop {row['x_loop'] or float('nan'):.2f}", flush=True)
  print()
  print(markdown(rows, conv_rows))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"argv": sys.argv[1:], "backend": jax.default_backend(), "devices": len(jax.devices()),
               "jax": jax.__version__, "batch": args.batch, "rows": rows, "single_step": conv_rows}, f, indent=2)
  print(f"wrote {args.out}")


def markdown(rows, conv_rows):
  lines = ["| model | M | " + " | ".join(sorted({r["mode"] for r in rows}, key=_mode_order)) + " |"]
  modes = sorted({r["mode"] for r in rows}, key=_mode_order)
  lines.append("|---|---|" + "---|" * len(modes))
  for (model, m) in dict.fromkeys((r["model"], r["members"]) for r in rows):
    cells = []
    for mode in modes:
      hit = [r for r in rows if (r["model"], r["members"], r["mode"]) == (model, m, mode)]
      if hit and hit[0]["x_loop"] is not None and mode != "python_loop":
        cells.append(f"{hit[0]['step_ms']:.0f} ms, {hit[0]['x_single']:.2f} / {hit[0]['x_loop']:.2f}")
      else:
        cells.append(f"{hit[0]['step_ms']:.0f} ms, {hit[0]['x_single']:.2f}" if hit else "skipped")
    lines.append(f"| {model} | {m} | " + " | ".join(cells) + " |")
  lines += ["", "| model | single step, conv xla (ms) | conv patches (ms) | conv auto (ms) | "
            "conv auto + batch_split 2 (ms) | PyTorch (ms) |", "|---|---|---|---|---|---|"]
  for r in conv_rows:
    fmt = lambda v: "-" if v is None else f"{v:.1f}"
    lines.append(f"| {r['model']} | {fmt(r.get('single_ms_xla', r.get('single_ms_-')))} | "
                 f"{fmt(r.get('single_ms_patches'))} | {fmt(r.get('single_ms_auto'))} | "
                 f"{fmt(r.get('single_ms_auto_split2'))} | {fmt(r['torch_ms'])} |")
  return "\n".join(lines)


def _mode_order(mode):
  order = ["python_loop", "vmap", "loop", "map", "sharded"]
  return order.index(mode) if mode in order else len(order)


if __name__ == "__main__":
  main(ARGS)
