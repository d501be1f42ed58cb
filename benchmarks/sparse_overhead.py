"""Cost of sparse training against dense training, in one run (ratios, not absolute times).

  python -m benchmarks.sparse_overhead [--models mlp,lenet] [--members 3]

For each model, M members at S = 0.8 (ERK), batch 128 per member, best of several calls:
  dense step        the plain all-members train step
  masked step       the same step through `sparse.masked` (what static and DST training run)
  topology update   one prune-and-grow of every member (RigL growth: includes the dense gradient)
Reported: masked / dense (goal < 1.10) and topology update / dense step (goal <= 10).
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import best_time
from ensembles import context
from ensembles import train as train_lib
from ensembles import data as data_lib
from ensembles.defaults import method_config
from ensembles.methods import sparse_common
from ensembles.models import build_model

MODELS = {
    "mlp": ("mlp", {"hidden": (512, 512)}, (28, 28, 1)),
    "lenet": ("lenet", {}, (28, 28, 1)),
    "resnet20": ("resnet", {"depth": 20}, (32, 32, 3)),
}


def measure(key, m, batch, min_time):
  name, kwargs, shape = MODELS[key]
  model = build_model(name, 10, kwargs)
  cfg = method_config("dst_ensemble")  # SGD momentum 0.9, weight decay 5e-4; the sparse block's defaults
  cfg.num_members, cfg.training.batch_size, cfg.training.lr_schedule = m, batch, "constant"
  options = sparse_common.SparseOptions(**cfg.sparse)
  rng = np.random.default_rng(0)
  data = data_lib.from_arrays(rng.integers(0, 256, (4 * batch, *shape)).astype(np.uint8),
                              rng.integers(0, 10, 4 * batch))
  images, labels = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  idx = jnp.tile(jnp.arange(batch, dtype=jnp.int32)[None], (m, 1))
  times = {}
  for label in ("dense", "masked"):
    run = context.build(cfg, model, data, None, sparse_training=label == "masked")
    state = run.init_members()
    if label == "masked":
      plan = sparse_common.make_plan(state, options)
      state = sparse_common.init_member_masks(run, state, plan, "random")
    box = [state]

    def one_step():
      box[0], metrics = run.train_step(box[0], images, labels, idx)
      jax.block_until_ready(metrics)

    times[label] = best_time(one_step, min_time)
  update = sparse_common.make_topology_update(run, options.topology(plan, run.tx))
  batch = train_lib.gather_batch(images, labels, idx)

  def run_update():
    box[0] = update(box[0], batch, jnp.float32(options.drop_fraction))
    jax.block_until_ready(box[0].params)

  times["topology"] = best_time(run_update, min_time)
  return {"model": key, "members": m, "execution": run.execution.mode, **{f"{k}_ms": 1e3 * v for k, v in times.items()},
          "masked_over_dense": times["masked"] / times["dense"],
          "update_in_dense_steps": times["topology"] / times["dense"]}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="mlp,lenet")
  p.add_argument("--members", type=int, default=3)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--min-time", type=float, default=1.0)
  p.add_argument("--out", default="benchmarks/results/sparse_overhead_cpu.json")
  args = p.parse_args()
  rows = [measure(k, args.members, args.batch, args.min_time) for k in args.models.split(",")]
  print(f"backend {jax.default_backend()}, jax {jax.__version__}, M = {args.members}, batch {args.batch}, S = 0.8 (ERK)")
  print("| model | execution | dense step (ms) | masked step (ms) | masked / dense | topology update (ms) "
        "| update / dense step |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['model']} | {r['execution']} | {r['dense_ms']:.1f} | {r['masked_ms']:.1f} | "
          f"{r['masked_over_dense']:.2f} | {r['topology_ms']:.1f} | {r['update_in_dense_steps']:.1f} |")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"backend": jax.default_backend(), "jax": jax.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
