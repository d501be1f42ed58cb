"""Trains (or reloads) every run of a comparison over several seeds and writes one report.

  python -m experiments.compare --comparison experiments/comparisons/freetickets_fashion_mnist.py \
      --workdir runs/compare_freetickets

A comparison file defines ``get_comparison()`` returning {"seeds": [...], "runs": [(label,
config_file, {field: value, ...}), ...]}. Each (run, seed) trains in WORKDIR/LABEL/seed_S with the
`experiments.runner.run` (so it resumes, and a finished run is only reloaded). The report (Markdown with
mean ± std over seeds, and JSON with every run's results) goes to WORKDIR/report.md|json.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
from absl import app, flags, logging

from experiments import runner

_COMPARISON = flags.DEFINE_string("comparison", None, "Comparison file with get_comparison().")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for all runs and the report.")
_SEEDS = flags.DEFINE_list("seeds", None, "Override the comparison's seeds, e.g. 0,1,2.")


def load_module(path: str):
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist.")
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def make_config(config_file: str, overrides: dict, seed: int):
  """The config of ``config_file`` with dotted-field ``overrides`` and ``seed``."""
  config = load_module(config_file).get_config()
  for dotted, value in overrides.items():
    node = config
    *path, last = dotted.split(".")
    for p in path:
      node = node[p]
    if last not in node:
      raise ValueError(f"{config_file} has no field {dotted!r}.")
    node[last] = value
  config.seed = seed
  return config


def run_comparison(comparison: dict, workdir: str) -> list[dict]:
  """Trains or reloads every (run, seed); returns the results with ``label`` added."""
  all_results = []
  for label, config_file, overrides in comparison["runs"]:
    for seed in comparison["seeds"]:
      run_dir = os.path.join(workdir, label, f"seed_{seed}")
      path = os.path.join(run_dir, "results.json")
      if os.path.exists(path):
        with open(path) as f:
          results = json.load(f)
      else:
        print(f"== {label}, seed {seed} -> {run_dir}", file=sys.stderr, flush=True)
        results = runner.run(make_config(config_file, overrides, int(seed)), run_dir)
      all_results.append({**results, "label": label})
  return all_results


ROW_FIELDS = [
    ("accuracy (%)", lambda r: 100 * r["test"]["ensemble"]["accuracy"], "{:.2f}"),
    ("NLL", lambda r: r["test"]["ensemble"]["nll"], "{:.4f}"),
    ("ECE", lambda r: r["test"]["ensemble"]["ece"], "{:.4f}"),
    ("Brier", lambda r: r["test"]["ensemble"]["brier"], "{:.4f}"),
    ("worst class (%)", lambda r: 100 * min(r["test"]["ensemble"].get("per_class_accuracy", [float("nan")])), "{:.1f}"),
    ("disagreement", lambda r: r["test"].get("diversity", {}).get("disagreement", float("nan")), "{:.4f}"),
    ("train FLOPs (x dense)", lambda r: r["flops"]["train_x_dense"], "{:.2f}"),
    ("inference FLOPs (x dense)", lambda r: r["flops"]["inference_x_dense"], "{:.2f}"),
    ("train time (s)", lambda r: r["train_time_s"], "{:.0f}"),
]


def summary_table(all_results: list[dict]) -> str:
  """Markdown: one row per label, mean ± std over its seeds."""
  labels = list(dict.fromkeys(r["label"] for r in all_results))
  header = "| method | M | seeds | " + " | ".join(name for name, _, _ in ROW_FIELDS) + " | params |"
  lines = [header, "|" + "---|" * (len(ROW_FIELDS) + 4)]
  for label in labels:
    rs = [r for r in all_results if r["label"] == label]
    cells = []
    for _, get, fmt in ROW_FIELDS:
      values = np.array([get(r) for r in rs], dtype=float)
      if np.all(np.isnan(values)):
        cells.append("-")
      elif len(values) > 1:
        cells.append(f"{fmt.format(values.mean())} ± {fmt.format(values.std(ddof=1))}")
      else:
        cells.append(fmt.format(values[0]))
    params = rs[0].get("nonzero_params_total", rs[0]["params_total"])
    lines.append(f"| {label} | {rs[0]['num_members']} | {len(rs)} | " + " | ".join(cells) + f" | {params:,} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if not (_COMPARISON.value and _WORKDIR.value):
    raise app.UsageError("--comparison and --workdir are required.")
  logging.set_verbosity(logging.WARNING)
  comparison = load_module(_COMPARISON.value).get_comparison()
  if _SEEDS.value:
    comparison["seeds"] = [int(s) for s in _SEEDS.value]
  all_results = run_comparison(comparison, _WORKDIR.value)
  table = summary_table(all_results)
  command = " ".join(["python -m experiments.compare"] + sys.argv[1:])
  text = (f"# {comparison.get('title', 'Comparison')}\n\n{comparison.get('description', '')}\n\n"
          f"Command: `{command}`\n\nMean ± sample std over seeds {comparison['seeds']}; test set; "
          f"ensemble metrics.\n\n{table}")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, "report.md"), "w") as f:
    f.write(text)
  with open(os.path.join(_WORKDIR.value, "report.json"), "w") as f:
    json.dump(all_results, f, indent=2)
  print(text)


if __name__ == "__main__":
  app.run(main)
