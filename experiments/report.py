"""Results tables: one run's table (members and ensemble) and a comparison across runs.

  python -m experiments.report runs/single runs/deep_ensemble    # prints a Markdown comparison
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

METRICS = ("accuracy", "nll", "ece", "brier")


def _row(name: str, m: dict) -> str:
  return (f"| {name} | {100 * m['accuracy']:.2f} | {m['nll']:.4f} | {m['ece']:.4f} | {m['brier']:.4f} |")


def run_table(results: dict, split: str = "test") -> str:
  """Markdown: each member, the members' mean ± std, and the ensemble, on ``split`` (the validation
  split when the data have no test split, as a folder of images without test/ or val/)."""
  if split not in results:
    split = "val" if "val" in results else None
  if split is None:
    return (f"### {results['method']} on {results['dataset']}\n\nNo test or validation split to evaluate "
            "(dataset.val_size = 0 and no test split).\n")
  ev = results[split]
  lines = [f"### {results['method']} on {results['dataset']} ({split}, M = {results['num_members']}, "
           f"model {results['model']}, seed {results['seed']})", "",
           "| predictor | accuracy (%) | NLL | ECE | Brier |", "|---|---|---|---|---|"]
  for i, m in enumerate(ev["members"]):
    lines.append(_row(f"member {i}", m))
  if len(ev["members"]) > 1:
    mean = {k: np.mean([m[k] for m in ev["members"]]) for k in METRICS}
    std = {k: np.std([m[k] for m in ev["members"]]) for k in METRICS}
    lines.append(f"| member mean ± std | {100 * mean['accuracy']:.2f} ± {100 * std['accuracy']:.2f} | "
                 f"{mean['nll']:.4f} ± {std['nll']:.4f} | {mean['ece']:.4f} ± {std['ece']:.4f} | "
                 f"{mean['brier']:.4f} ± {std['brier']:.4f} |")
  lines.append(_row("**ensemble**", ev["ensemble"]))
  lines.append("")
  if "per_class_accuracy" in ev["ensemble"]:
    lines.append("Per-class accuracy of the ensemble (%): " +
                 ", ".join(f"{c}: {100 * a:.1f}" for c, a in enumerate(ev["ensemble"]["per_class_accuracy"])) + ".")
  if "diversity" in ev:
    lines.append(f"Diversity: disagreement {ev['diversity']['disagreement']:.4f}, "
                 f"pairwise KL {ev['diversity']['kl']:.4f} nats.")
  nonzero = results.get("nonzero_params_total", results["params_total"])
  lines.append(f"Cost: {results['params_per_member']:,} parameters per member, {nonzero:,} nonzero in all; "
               f"training {results['train_time_s']:.1f} s wall ({results['train_steps']} steps, "
               f"{results['backend']}, member execution {results['member_execution']}).")
  if "flops" in results:
    f = results["flops"]
    lines.append(f"FLOPs: training {f['train_x_dense']:.2f}x one dense model ({f['flops_rule']}), inference "
                 f"{f['inference_x_dense']:.2f}x one dense model ({f['inference_flops']:.3g} per example).")
  lines += ood_lines(results) + corruption_lines(results) + shift_lines(results) + health_lines(results)
  return "\n".join(lines) + "\n"


def health_lines(results: dict) -> list[str]:
  """The run's health (`ensembles.health`): one line when healthy, else each flag."""
  health = results.get("health")
  if health is None:
    return []
  if health["status"] == "healthy":
    return ["Health: no check fired (loss spikes, chance accuracy, one-class predictions, boosting weights)."]
  return ["", f"**Unhealthy run** ({len(health['flags'])} flag(s); do not average it in silently):"] + [
      f"- {flag['message']}" for flag in health["flags"]]


def shift_lines(results: dict) -> list[str]:
  """Markdown: ensemble accuracy / NLL / ECE / Brier on each shifted test set."""
  if not results.get("shift"):
    return []
  lines = ["", "Shifted test sets (predicting among the classes given):", "",
           "| set | images | classes | accuracy (%) | NLL | ECE | Brier |", "|---|---|---|---|---|---|---|"]
  for name, m in results["shift"].items():
    lines.append(f"| {name} | {m['num_examples']} | {m.get('num_classes', '')} | {100 * m['accuracy']:.2f} | "
                 f"{m['nll']:.4f} | {m['ece']:.4f} | {m['brier']:.4f} |")
  return lines


def ood_lines(results: dict) -> list[str]:
  """Markdown: AUROC, AUPR and FPR at 95% TPR per OoD set and score (OoD = positive)."""
  if not results.get("ood"):
    return []
  lines = ["", f"OoD detection (in-distribution: {results['dataset']} test set; OoD examples are positives):", "",
           "| OoD set | score | AUROC | AUPR | FPR@95%TPR |", "|---|---|---|---|---|"]
  for name, scores in results["ood"].items():
    for score, m in scores.items():
      if isinstance(m, dict):
        lines.append(f"| {name} ({scores['num_examples']}) | {score} | {m['auroc']:.4f} | {m['aupr']:.4f} | "
                     f"{m['fpr95']:.4f} |")
  return lines


def corruption_lines(results: dict) -> list[str]:
  """Markdown: ensemble accuracy / NLL / ECE per severity (mean over types) and per type."""
  c = results.get("corruption")
  if not c:
    return []
  lines = ["", f"Corruption robustness ({len(c['types'])} types, {c['num_examples']} images per set):", "",
           "| severity | accuracy (%) | NLL | ECE |", "|---|---|---|---|"]
  clean = c["clean"]
  lines.append(f"| clean | {100 * clean['accuracy']:.2f} | {clean['nll']:.4f} | {clean['ece']:.4f} |")
  for sev, b in zip(c["severities"], c["by_severity"]):
    lines.append(f"| {sev} | {100 * b['accuracy']:.2f} | {b['nll']:.4f} | {b['ece']:.4f} |")
  m = c["mean"]
  lines.append(f"| mean | {100 * m['accuracy']:.2f} | {m['nll']:.4f} | {m['ece']:.4f} |")
  lines += ["", "Accuracy (%) per corruption type and severity:", "",
            "| type | " + " | ".join(str(s) for s in c["severities"]) + " |", "|---" * (len(c["severities"]) + 1) + "|"]
  for name, per_sev in c["types"].items():
    lines.append(f"| {name} | " + " | ".join(f"{100 * v['accuracy']:.1f}" for v in per_sev) + " |")
  return lines


def comparison_table(all_results: list[dict], split: str = "test") -> str:
  """Markdown: one row per run (ensemble metrics, diversity, parameters, wall time)."""
  lines = ["| method | M | accuracy (%) | NLL | ECE | Brier | disagreement | nonzero params | train time (s) |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in all_results:
    e = r[split]["ensemble"]
    dis = r[split].get("diversity", {}).get("disagreement")
    lines.append(f"| {r['method']} | {r['num_members']} | {100 * e['accuracy']:.2f} | {e['nll']:.4f} | "
                 f"{e['ece']:.4f} | {e['brier']:.4f} | {'-' if dis is None else f'{dis:.4f}'} | "
                 f"{r.get('nonzero_params_total', r['params_total']):,} | {r['train_time_s']:.1f} |")
  return "\n".join(lines) + "\n"


def load_results(workdir: str) -> dict:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: train first with "
                            f"`python -m experiments.train --config ... --workdir {workdir}`.")
  with open(path) as f:
    return json.load(f)


def main(argv: list[str]) -> None:
  if not argv:
    sys.exit("usage: python -m experiments.report WORKDIR [WORKDIR ...]")
  print(comparison_table([load_results(w) for w in argv]))


if __name__ == "__main__":
  main(sys.argv[1:])
