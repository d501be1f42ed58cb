"""PNG plots of evaluation results (matplotlib): reliability diagrams, accuracy and NLL
against training FLOPs, and accuracy / NLL against corruption severity.

Every function takes plain numbers (as stored in results.json) and a path, and writes one PNG.
"""
from __future__ import annotations

import io
import math
import os
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure  # figures without pyplot: no backend is chosen or changed

from ensembles import files


def _save(fig, path: str) -> str:
  files.make_dirs(os.path.dirname(files.absolute(path)))
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  files.write_atomic(path, buffer.getvalue())
  return path


def _draw_reliability(ax, bins: dict, title: str, ece_label: str = "ECE") -> None:
  n = len(bins["count"])
  edges = np.linspace(0.0, 1.0, n + 1)
  centers = (edges[:-1] + edges[1:]) / 2
  acc = np.array([np.nan if a is None else a for a in bins["accuracy"]], float)
  conf = np.array([np.nan if c is None else c for c in bins["confidence"]], float)
  count = np.asarray(bins["count"], float)
  filled = count > 0
  ax.bar(centers[filled], acc[filled], width=1.0 / n, edgecolor="k", color="tab:blue", label="accuracy")
  ax.bar(centers[filled], (conf - acc)[filled], bottom=acc[filled], width=1.0 / n, edgecolor="tab:red",
         color="tab:red", alpha=0.3, hatch="//", label="gap to confidence")
  ax.plot([0, 1], [0, 1], "k--", lw=1)
  ece = float(np.nansum(count * np.abs(acc - conf)) / max(count.sum(), 1))
  ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"{title}\n{ece_label} {ece:.4f}")
  ax.legend(loc="upper left", fontsize=7)


def reliability_diagrams(path: str, bins_by_label: dict[str, dict], columns: int = 4, ece_label: str = "ECE") -> str:
  """One reliability diagram per label; ``bins`` as `metrics.reliability_bins` returns them (the
  title's ECE is computed from the bins, so for pooled bins it is the pooled ECE)."""
  k = len(bins_by_label)
  cols = min(columns, k)
  rows = math.ceil(k / cols)
  fig = Figure(figsize=(3.3 * cols, 3.3 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax, (label, bins) in zip(axes.flat, bins_by_label.items()):
    _draw_reliability(ax, bins, label, ece_label)
  for ax in list(axes.flat)[k:]:
    ax.axis("off")
  return _save(fig, path)


def merge_bins(bins_list: Sequence[dict]) -> dict:
  """Pools reliability bins of several runs (e.g. seeds): counts add, means are count-weighted."""
  count = np.sum([b["count"] for b in bins_list], axis=0)
  out = {"count": count.tolist()}
  for key in ("confidence", "accuracy"):
    total = np.sum([[0.0 if v is None else v * c for v, c in zip(b[key], b["count"])] for b in bins_list], axis=0)
    out[key] = [float(t / c) if c else None for t, c in zip(total, count)]
  return out


def metrics_vs_flops(path: str, points: dict[str, dict]) -> str:
  """Accuracy and NLL against training FLOPs (× one dense model).
  ``points``: {label: {"flops": x, "accuracy": [values over seeds], "nll": [...]}}; mean ± std bars."""
  fig = Figure(figsize=(10, 4))
  axes = fig.subplots(1, 2)
  for ax, key, name in ((axes[0], "accuracy", "test accuracy (%)"), (axes[1], "nll", "test NLL")):
    for label, p in points.items():
      values = np.asarray(p[key], float) * (100 if key == "accuracy" else 1)
      std = values.std(ddof=1) if len(values) > 1 else 0.0
      ax.errorbar(p["flops"], values.mean(), yerr=std, fmt="o", capsize=3, label=label)
      ax.annotate(label, (p["flops"], values.mean()), textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.set(xlabel="training FLOPs (x one dense model)", ylabel=name)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  return _save(fig, path)


def corruption_vs_severity(path: str, curves: dict[str, dict]) -> str:
  """Accuracy and NLL against corruption severity (0 = clean test set), mean over corruption types.
  ``curves``: {label: {"severities": [...], "accuracy": [[per severity] per seed], "nll": [...],
  "clean_accuracy": [per seed], "clean_nll": [per seed]}}."""
  fig = Figure(figsize=(10, 4))
  axes = fig.subplots(1, 2)
  for ax, key, name in ((axes[0], "accuracy", "accuracy (%)"), (axes[1], "nll", "NLL")):
    for label, c in curves.items():
      scale = 100 if key == "accuracy" else 1
      values = np.column_stack([np.asarray(c[f"clean_{key}"], float), np.asarray(c[key], float)]) * scale
      x = [0] + list(c["severities"])
      std = values.std(axis=0, ddof=1) if len(values) > 1 else None
      ax.errorbar(x, values.mean(axis=0), yerr=std, marker="o", capsize=3, label=label)
    ax.set(xlabel="corruption severity (0 = clean)", ylabel=f"{name}, mean over corruption types")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  return _save(fig, path)


def run_plots(results: dict, directory: str) -> list[str]:
  """The plots of one run's results: reliability diagram (when there is a test split), and accuracy
  against severity when the results hold a corruption evaluation. Returns the written paths."""
  label = f"{results['method']} (M = {results['num_members']})"
  paths = []
  if "test" in results:
    paths.append(reliability_diagrams(os.path.join(directory, "reliability.png"),
                                      {label: results["test"]["ensemble"]["reliability"]}))
  if "corruption" in results:
    c = results["corruption"]
    paths.append(corruption_vs_severity(os.path.join(directory, "corruption.png"), {label: {
        "severities": c["severities"], "accuracy": [[b["accuracy"] for b in c["by_severity"]]],
        "nll": [[b["nll"] for b in c["by_severity"]]], "clean_accuracy": [c["clean"]["accuracy"]],
        "clean_nll": [c["clean"]["nll"]]}}))
  return paths
