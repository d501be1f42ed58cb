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
import optax

from benchmarks.timing import best_time
from ensembles import members as members_lib
from ensembles import sparse
from ensembles import train as train_lib
from ensembles.methods import sparse_common
from ensembles.models import build_model
from experiments.configs import dst_ensemble

MODELS = {
    "mlp": ("mlp", {"hidden": (512, 512)}, (28, 28, 1)),
    "lenet": ("lenet", {}, (28, 28, 1)),
    "resnet20": ("resnet", {"depth": 20}, (32, 32, 3)),
}


def measure(key, m, batch, min_time):
  name, kwargs, shape = MODELS[key]
  model = build_model(name, 10, kwargs)
  inner = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
  execution = members_lib.resolve_execution("auto", model.has_conv, num_members=m)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (4 * batch, *shape)), jnp.uint8)
  labels = jnp.asarray(rng.integers(0, 10, 4 * batch), jnp.int32)
  idx = jnp.tile(jnp.arange(batch, dtype=jnp.int32)[None], (m, 1))
  mean, std = np.full(shape[-1], 0.5, np.float32), np.full(shape[-1], 0.25, np.float32)
  times = {}
  for label, tx in (("dense", inner), ("masked", sparse.masked(inner))):
    state = train_lib.init_state(model, tx, jax.random.PRNGKey(0), m, shape)
    if label == "masked":
      plan = sparse.make_plan(members_lib.member(state.params, 0), 0.8, "erk")
      state = sparse_common.init_member_masks(state, inner, plan, "random", jax.random.PRNGKey(1))
    step = train_lib.make_train_step(model, tx, execution=execution, mean=mean, std=std)
    box = [state]

    def run():
      box[0], metrics = step(box[0], images, labels, idx)
      jax.block_until_ready(metrics)

    times[label] = best_time(run, min_time)
  cfg = dst_ensemble.sparse_block()
  update = sparse_common.make_topology_update(model, inner, plan, cfg, execution=execution, mean=mean, std=std)

  def run_update():
    box[0] = update(box[0], images, labels, idx, jnp.float32(cfg.drop_fraction))
    jax.block_until_ready(box[0].params)

  times["topology"] = best_time(run_update, min_time)
  return {"model": key, "members": m, "execution": execution, **{f"{k}_ms": 1e3 * v for k, v in times.items()},
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
