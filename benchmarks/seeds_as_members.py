"""Whole-command wall time of a comparison with its seeds trained one after another and together as
members, and how far the two ways' numbers are apart.

  python -m benchmarks.seeds_as_members --comparison experiments/comparisons/boosting_fashion_mnist.py \
      [--comparison ...] [--workdir /tmp/seeds_bench]

For each comparison: `python -m experiments.compare` with ``--seeds_as_members=false`` in a fresh
workdir, then the default (seeds as members) in another, each with its own empty compilation cache
(what a first run waits for: start-up, compiles, training, evaluation, report). Reports both wall
times, their ratio, and the largest difference between the two reports' test metrics (accuracy,
NLL, ECE, Brier, per run and seed) and whether the FLOPs are identical. Writes
benchmarks/results/seeds_as_members_cpu.json (one entry per comparison, merged with earlier ones).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("accuracy", "nll", "ece", "brier")


def run_compare(comparison: str, workdir: str, together: bool) -> float:
  """Seconds of the whole command (its stderr goes to WORKDIR.log)."""
  env = {**os.environ, "ENSEMBLES_COMPILATION_CACHE": workdir + "_cache"}
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  with open(workdir + ".log", "w") as log:
    out = subprocess.run([sys.executable, "-m", "experiments.compare", f"--comparison={comparison}",
                          f"--workdir={workdir}", f"--seeds_as_members={str(together).lower()}"],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env=env)
  if out.returncode:
    raise RuntimeError(f"{comparison} failed; see {workdir}.log")
  return time.perf_counter() - start


def differences(alone: list[dict], together: list[dict]) -> dict:
  """Largest |difference| of each test metric over (run, seed), and whether every FLOPs entry agrees."""
  key = lambda r: (r["label"], r["seed"])
  pairs = list(zip(sorted(alone, key=key), sorted(together, key=key)))
  assert all(key(a) == key(t) for a, t in pairs)
  worst = {m: max(abs(a["test"]["ensemble"][m] - t["test"]["ensemble"][m]) for a, t in pairs) for m in METRICS}
  return {"max_abs_difference": worst, "flops_identical": all(a["flops"] == t["flops"] for a, t in pairs),
          "runs": len(pairs)}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--comparison", action="append", required=True)
  p.add_argument("--workdir", default="/tmp/seeds_bench")
  p.add_argument("--out", default="benchmarks/results/seeds_as_members_cpu.json")
  args = p.parse_args()
  out_path = os.path.join(ROOT, args.out)
  results = json.load(open(out_path)) if os.path.exists(out_path) else {}
  for comparison in args.comparison:
    name = os.path.splitext(os.path.basename(comparison))[0]
    base = os.path.join(args.workdir, name)
    alone_s = run_compare(comparison, base + "_one_after_another", together=False)
    together_s = run_compare(comparison, base + "_as_members", together=True)
    reports = [json.load(open(os.path.join(base + suffix, "report.json"))) for suffix in ("_one_after_another",
                                                                                         "_as_members")]
    results[name] = {"one_after_another_s": round(alone_s, 1), "as_members_s": round(together_s, 1),
                     "ratio": round(alone_s / together_s, 2), **differences(*reports)}
    print(f"{name}: one after another {alone_s:.0f} s, as members {together_s:.0f} s, "
          f"ratio {alone_s / together_s:.2f}; {json.dumps(results[name])}", flush=True)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
