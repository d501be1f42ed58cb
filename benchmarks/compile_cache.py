"""Whole-command wall time of the CLI with a cold and a warm persistent compilation cache.

  python -m benchmarks.compile_cache [--config experiments/configs/edst_ensemble.py] [--repeats 2]

Runs the same small command (a Fashion-MNIST subset, a few epochs, no OoD or corruption sets)
first with an empty cache folder, then again (new workdirs, same cache), and also with the cache
off. Reports each command's whole wall time (start-up, compiles, training, evaluation), best of
``--repeats``; warm minus off is the compile time the cache saves. Writes
benchmarks/results/compile_cache_cpu.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config.dataset.train_subset=4096", "--config.dataset.test_subset=1000", "--config.dataset.val_size=1000",
         "--config.evaluation.ood_datasets=()", "--config.evaluation.corruptions=()", "--config.evaluation.plots=False"]


def run(config: str, workdir: str, cache: str) -> float:
  env = {**os.environ, "ENSEMBLES_COMPILATION_CACHE": cache}
  start = time.perf_counter()
  out = subprocess.run([sys.executable, "-m", "experiments.train", f"--config={config}", f"--workdir={workdir}",
                        *FLAGS], cwd=ROOT, capture_output=True, text=True, env=env)
  if out.returncode:
    raise RuntimeError(out.stderr[-2000:])
  return time.perf_counter() - start


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="experiments/configs/edst_ensemble.py")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--out", default="benchmarks/results/compile_cache_cpu.json")
  args = p.parse_args()
  times = {"off": [], "cold": [], "warm": []}
  for _ in range(args.repeats):
    with tempfile.TemporaryDirectory() as tmp:
      cache = os.path.join(tmp, "cache")
      times["off"].append(run(args.config, os.path.join(tmp, "off"), "off"))
      times["cold"].append(run(args.config, os.path.join(tmp, "cold"), cache))
      times["warm"].append(run(args.config, os.path.join(tmp, "warm"), cache))
  best = {k: min(v) for k, v in times.items()}
  result = {"config": args.config, "flags": FLAGS, "wall_s": best, "all_s": times,
            "warm_over_off": best["warm"] / best["off"], "saved_s": best["off"] - best["warm"]}
  print(json.dumps(result, indent=2))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
