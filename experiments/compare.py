"""Trains (or reloads) every run of a comparison over several seeds and writes one report.

  python -m experiments.compare --comparison experiments/comparisons/freetickets_fashion_mnist.py \
      --workdir runs/compare_freetickets

A comparison file defines ``get_comparison()`` returning {"seeds": [...], "runs": [(label,
config_file, {field: value, ...}), ...]} and optionally "seeds_as_members" (default True) and
"report_dir" (a subfolder of WORKDIR for the report, so comparisons sharing runs in one WORKDIR keep
their own reports; default: WORKDIR itself). Each
(run, seed) ends in WORKDIR/LABEL/seed_S (a finished run is only reloaded). Seeds as members
(default): the seeds of a run that are not finished train together, as S·M members of one compiled
step, in WORKDIR/LABEL/seeds_<s1>_<s2>... (resumable; `experiments.runner.run_seeds`), and each
seed's folder gets the run of its own; the results equal training the seeds one after another
(`--seeds_as_members=false` or the comparison's "seeds_as_members": False: `experiments.runner.run`
per seed), except for the train times (the run's time / S). Methods without
``Method.trains_seeds``, training sets streamed from disk, and steps whose estimated memory exceeds
the device's (`ensembles.memory.seeds_fit`) train their seeds one after another. The report (Markdown with
mean ± std over seeds: accuracy/calibration/cost, OoD detection, corruption robustness; JSON with
every run's results; plots reliability.png, metrics_vs_flops.png, corruption.png) goes to WORKDIR
(or WORKDIR/report_dir).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
from absl import app, flags, logging

from ensembles import metrics as metrics_lib
from ensembles import api
from ensembles import compilation_cache
from ensembles import defaults
from ensembles import files
from ensembles import workdir_lock
from ensembles.errors import WorkdirInUseError
from ensembles.methods import get_method
from experiments import plots, runner

_COMPARISON = flags.DEFINE_string("comparison", None, "Comparison file with get_comparison().")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for all runs and the report.")
_SEEDS = flags.DEFINE_list("seeds", None, "Override the comparison's seeds, e.g. 0,1,2.")
_SEEDS_AS_MEMBERS = flags.DEFINE_bool("seeds_as_members", None, "Train a run's seeds together as members of one "
                                      "compiled step (default: the comparison's 'seeds_as_members', else True).")


def load_module(path: str):
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist.")
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def make_config(config_file: str, overrides: dict, seed: int):
  """The config of ``config_file`` with dotted-field ``overrides`` and ``seed``. A ``model.name``
  override replaces the model block by that model's fields (as on the command line,
  `defaults.replace_model`), so the other ``model.*`` overrides may set any of them."""
  config = load_module(config_file).get_config()
  if "model.name" in overrides:
    defaults.replace_model(config, overrides["model.name"])
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


def check_same_config(run_dir: str, config, label: str, seed) -> None:
  """A finished run is reused only if it was trained with the config the comparison asks for now
  (a changed default or override would otherwise show the old run's numbers under the new label).
  Raises ValueError naming the fields that differ (`api.config_differences`)."""
  path = os.path.join(run_dir, api.CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    differ = api.config_differences(json.load(f), json.loads(config.to_json()))
  if differ:
    shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
    raise ValueError(f"run {label!r}, seed {seed}: {run_dir} was trained with another config (fields {shown}); "
                     f"delete {os.path.dirname(run_dir)} to retrain it, or use a new --workdir.")


def _needs_evaluation(results: dict, config) -> bool:
  e = config.evaluation
  return bool((len(e.ood_datasets) and "ood" not in results) or (len(e.corruptions) and "corruption" not in results))


def run_comparison(comparison: dict, workdir: str) -> list[dict]:
  """Trains or reloads every (run, seed); returns the results with ``label`` added. The unfinished
  seeds of a run train together as members where ``comparison["seeds_as_members"]`` (default True)
  and the method can (`train_seeds_together`). A finished run whose results lack the OoD or
  corruption evaluation its config asks for is evaluated from its saved ensemble
  (`runner.evaluate_workdir`), not retrained."""
  all_results = []
  for label, config_file, overrides in comparison["runs"]:
    if comparison.get("seeds_as_members", True):
      train_seeds_together(label, config_file, overrides, comparison["seeds"], workdir)
    for seed in comparison["seeds"]:
      run_dir = os.path.join(workdir, label, f"seed_{seed}")
      path = os.path.join(run_dir, "results.json")
      config = make_config(config_file, overrides, int(seed))
      if os.path.exists(path):
        check_same_config(run_dir, config, label, seed)
        with open(path) as f:
          results = json.load(f)
        if _needs_evaluation(results, config):
          print(f"== {label}, seed {seed}: evaluating the saved ensemble", file=sys.stderr, flush=True)
          results = runner.evaluate_workdir(run_dir, **config.evaluation.to_dict())
          files.write_atomic(path, json.dumps(results, indent=2))
      else:
        print(f"== {label}, seed {seed} -> {run_dir}", file=sys.stderr, flush=True)
        results = runner.run(config, run_dir)
      all_results.append({**results, "label": label})
  return all_results


def train_seeds_together(label: str, config_file: str, overrides: dict, seeds, workdir: str) -> None:
  """Trains the seeds of run ``label`` without results yet as members of one run in
  WORKDIR/LABEL/seeds_<s1>_<s2>... (each seed's results in WORKDIR/LABEL/seed_S), where there are
  two or more and the method trains seeds as members (`Method.trains_seeds`)."""
  todo = [int(s) for s in seeds if not os.path.exists(os.path.join(workdir, label, f"seed_{s}", "results.json"))]
  config = make_config(config_file, overrides, todo[0]) if todo else None
  if len(todo) < 2 or not get_method(config.method).trains_seeds:
    return
  group = os.path.join(workdir, label, "seeds_" + "_".join(map(str, todo)))
  print(f"== {label}, seeds {todo} as members -> {group}", file=sys.stderr, flush=True)
  runner.run_seeds(config, todo, [os.path.join(workdir, label, f"seed_{s}") for s in todo], group)


def _ens(split: str, key: str):
  return lambda r: r[split]["ensemble"][key]


ROW_FIELDS = [
    ("accuracy (%)", lambda r: 100 * r["test"]["ensemble"]["accuracy"], "{:.2f}"),
    ("NLL", _ens("test", "nll"), "{:.4f}"),
    ("ECE", _ens("test", "ece"), "{:.4f}"),
    ("Brier", _ens("test", "brier"), "{:.4f}"),
    ("worst class (%)", lambda r: 100 * min(r["test"]["ensemble"].get("per_class_accuracy", [float("nan")])), "{:.1f}"),
    ("disagreement", lambda r: r["test"].get("diversity", {}).get("disagreement", float("nan")), "{:.4f}"),
    ("train FLOPs (x dense)", lambda r: r["flops"]["train_x_dense"], "{:.2f}"),
    ("inference FLOPs (x dense)", lambda r: r["flops"]["inference_x_dense"], "{:.2f}"),
    ("train time (s)", lambda r: r["train_time_s"], "{:.0f}"),
]
_NAN = float("nan")


def ood_fields(all_results: list[dict]) -> list[tuple]:
  """Columns of the OoD table: AUROC of each score, and AUPR / FPR95 of the entropy, per OoD set."""
  names = list(dict.fromkeys(n for r in all_results for n in r.get("ood", {})))
  fields = []
  for n in names:
    get = lambda r, n=n, s="entropy", k="auroc": r.get("ood", {}).get(n, {}).get(s, {}).get(k, _NAN)
    fields += [(f"{n} AUROC ({s})", lambda r, s=s, g=get: g(r, s=s), "{:.4f}") for s in metrics_lib.OOD_SCORES]
    fields += [(f"{n} AUPR (entropy)", lambda r, g=get: g(r, k="aupr"), "{:.4f}"),
               (f"{n} FPR95 (entropy)", lambda r, g=get: g(r, k="fpr95"), "{:.4f}")]
  return fields


CORRUPTION_FIELDS = [
    ("clean accuracy (%)", lambda r: 100 * r["corruption"]["clean"]["accuracy"], "{:.2f}"),
    ("corrupted accuracy (%)", lambda r: 100 * r["corruption"]["mean"]["accuracy"], "{:.2f}"),
    ("corrupted NLL", lambda r: r["corruption"]["mean"]["nll"], "{:.4f}"),
    ("corrupted ECE", lambda r: r["corruption"]["mean"]["ece"], "{:.4f}"),
    ("severity 5 accuracy (%)", lambda r: 100 * r["corruption"]["by_severity"][-1]["accuracy"], "{:.2f}"),
]


UNHEALTHY_MARK = "†"


def is_unhealthy(results: dict) -> bool:
  """A run its health checks flagged (results.json ``health``, `ensembles.health`)."""
  return results.get("health", {}).get("status") == "unhealthy"


def _cell(values: np.ndarray, fmt: str, unhealthy: list[bool] | None = None) -> str:
  """mean ± sample std of the seeds' values; where a seed is ``unhealthy``, no mean: every seed's
  value, the unhealthy ones marked."""
  if np.all(np.isnan(values)):
    return "-"
  if unhealthy and any(unhealthy):
    return " / ".join(fmt.format(v) + (UNHEALTHY_MARK if bad else "") for v, bad in zip(values, unhealthy))
  if len(values) > 1:
    return f"{fmt.format(values.mean())} ± {fmt.format(values.std(ddof=1))}"
  return fmt.format(values[0])


def mean_std_table(all_results: list[dict], fields: list[tuple], params_column: bool = False) -> str:
  """Markdown: one row per label, each field's mean ± sample std over the label's seeds. A label
  with an unhealthy seed (`is_unhealthy`) is never averaged: its row is marked † and shows each
  seed's value (the unhealthy ones marked †)."""
  labels = list(dict.fromkeys(r["label"] for r in all_results))
  header = "| method | M | seeds | " + " | ".join(name for name, _, _ in fields) + (" | params |" if params_column else " |")
  lines = [header, "|" + "---|" * (len(fields) + 3 + params_column)]
  for label in labels:
    rs = [r for r in all_results if r["label"] == label]
    unhealthy = [is_unhealthy(r) for r in rs]
    cells = []
    for _, get, fmt in fields:
      values = []
      for r in rs:
        try:
          values.append(get(r))
        except (KeyError, IndexError, TypeError):
          values.append(_NAN)
      cells.append(_cell(np.array(values, dtype=float), fmt, unhealthy))
    name = f"{label} {UNHEALTHY_MARK}" if any(unhealthy) else label
    row = f"| {name} | {rs[0]['num_members']} | {len(rs)} | " + " | ".join(cells) + " |"
    if params_column:
      row += f" {rs[0].get('nonzero_params_total', rs[0]['params_total']):,} |"
    lines.append(row)
  return "\n".join(lines) + "\n"


def summary_table(all_results: list[dict]) -> str:
  """Markdown: accuracy, calibration, diversity and cost per label (mean ± std over seeds)."""
  return mean_std_table(all_results, ROW_FIELDS, params_column=True)


def comparison_plots(all_results: list[dict], workdir: str) -> list[str]:
  """reliability.png (bins pooled over seeds), metrics_vs_flops.png, and corruption.png when the
  runs were evaluated on corruptions. Returns the written paths."""
  labels = list(dict.fromkeys(r["label"] for r in all_results))
  by_label = {label: [r for r in all_results if r["label"] == label] for label in labels}
  paths = [plots.reliability_diagrams(os.path.join(workdir, "reliability.png"), {
      label: plots.merge_bins([r["test"]["ensemble"]["reliability"] for r in rs])
      for label, rs in by_label.items() if all("reliability" in r["test"]["ensemble"] for r in rs)},
      ece_label="ECE of the seeds' pooled bins")]
  paths.append(plots.metrics_vs_flops(os.path.join(workdir, "metrics_vs_flops.png"), {
      label: {"flops": rs[0]["flops"]["train_x_dense"], "accuracy": [r["test"]["ensemble"]["accuracy"] for r in rs],
              "nll": [r["test"]["ensemble"]["nll"] for r in rs]} for label, rs in by_label.items()}))
  curves = {label: {"severities": rs[0]["corruption"]["severities"],
                    "accuracy": [[b["accuracy"] for b in r["corruption"]["by_severity"]] for r in rs],
                    "nll": [[b["nll"] for b in r["corruption"]["by_severity"]] for r in rs],
                    "clean_accuracy": [r["corruption"]["clean"]["accuracy"] for r in rs],
                    "clean_nll": [r["corruption"]["clean"]["nll"] for r in rs]}
            for label, rs in by_label.items() if all("corruption" in r for r in rs)}
  if curves:
    paths.append(plots.corruption_vs_severity(os.path.join(workdir, "corruption.png"), curves))
  return paths


def evaluated(all_results: list[dict], key: str) -> list[dict]:
  """The results of the labels that have ``key`` ("ood", "corruption") in some seed's results: an
  ablation row whose config skips that evaluation stays out of its table."""
  labels = {r["label"] for r in all_results if r.get(key)}
  return [r for r in all_results if r["label"] in labels]


def report_text(comparison: dict, all_results: list[dict], command: str) -> str:
  """The Markdown report: the summary table, then OoD and corruption tables where evaluated."""
  text = (f"# {comparison.get('title', 'Comparison')}\n\n{comparison.get('description', '')}\n\n"
          f"Command: `{command}`\n\nMean ± sample std over seeds {comparison['seeds']}; test set; "
          f"ensemble metrics.\n\n{summary_table(all_results)}")
  fields = ood_fields(all_results)
  if fields:
    text += ("\n## OoD detection\n\nOoD test sets against the in-distribution test set (OoD = positive; "
             "scores: msp = 1 − max p̄, entropy H(p̄), mutual information H(p̄) − mean H(p_m)).\n\n"
             + mean_std_table(evaluated(all_results, "ood"), fields))
  if any("corruption" in r for r in all_results):
    c = next(r["corruption"] for r in all_results if "corruption" in r)
    text += (f"\n## Corruption robustness\n\n{len(c['types'])} corruption types x severities {c['severities']}, "
             f"{c['num_examples']} test images per set; means over all sets; clean = the same images "
             "uncorrupted.\n\n" + mean_std_table(evaluated(all_results, "corruption"), CORRUPTION_FIELDS))
  text += unhealthy_section(all_results)
  text += ("\nPlots: `reliability.png` (bins pooled over seeds), `metrics_vs_flops.png`"
           + (", `corruption.png`" if any("corruption" in r for r in all_results) else "") + ".\n")
  return text


def unhealthy_section(all_results: list[dict]) -> str:
  """Markdown naming every unhealthy (run, seed) and its health flags ('' when all are healthy)."""
  bad = [r for r in all_results if is_unhealthy(r)]
  if not bad:
    return ""
  lines = [f"\n## Unhealthy runs {UNHEALTHY_MARK}\n", "Rows marked " + UNHEALTHY_MARK + " hold a seed whose health "
           "checks fired (ensembles/health.py); they show each seed's value instead of a mean.\n"]
  for r in bad:
    for flag in r["health"]["flags"]:
      lines.append(f"- {r['label']}, {flag['message']}")
  return "\n".join(lines) + "\n"


def write_report(comparison: dict, all_results: list[dict], workdir: str, command: str) -> str:
  """report.md, report.json and the plots in WORKDIR/``comparison["report_dir"]`` (default WORKDIR);
  returns the Markdown."""
  text = report_text(comparison, all_results, command)
  report_dir = os.path.join(workdir, comparison.get("report_dir", ""))
  os.makedirs(report_dir, exist_ok=True)
  comparison_plots(all_results, report_dir)
  files.write_atomic(os.path.join(report_dir, "report.md"), text)
  files.write_atomic(os.path.join(report_dir, "report.json"), json.dumps(all_results, indent=2))
  return text


def main(argv):
  del argv
  if not (_COMPARISON.value and _WORKDIR.value):
    raise app.UsageError("--comparison and --workdir are required.")
  logging.set_verbosity(logging.WARNING)
  compilation_cache.enable(defaults.default_config().compilation_cache_dir)  # as experiments.train does
  comparison = load_module(_COMPARISON.value).get_comparison()
  if _SEEDS.value:
    comparison["seeds"] = [int(s) for s in _SEEDS.value]
  if _SEEDS_AS_MEMBERS.value is not None:
    comparison["seeds_as_members"] = _SEEDS_AS_MEMBERS.value
  try:
    with workdir_lock.held(_WORKDIR.value):  # one comparison per folder (each run also locks its own)
      all_results = run_comparison(comparison, _WORKDIR.value)
      command = " ".join(["python -m experiments.compare"] + sys.argv[1:])
      print(write_report(comparison, all_results, _WORKDIR.value, command))
  except WorkdirInUseError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
