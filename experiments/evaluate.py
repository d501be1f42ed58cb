"""Evaluates a finished run's saved ensemble without retraining, and prints the full metric set.

  python -m experiments.evaluate --workdir runs/default
  python -m experiments.evaluate --workdir runs/default --ood_datasets=digits \
      --corruptions=gaussian_noise,contrast --corruption_examples=500

Reads WORKDIR/config.json and the members every finished run saves in WORKDIR/ensemble (stacked
members, EDST tickets, CBNN checkpoints with their α, snapshots; MC dropout's trained network), runs
`ensembles.evaluation.evaluate_all` (test and validation metrics, diversity, OoD detection, corruption
robustness; the run's ``config.evaluation`` unless a flag overrides it), prints the tables and writes
WORKDIR/evaluation.json and the plots.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

from ensembles import config as config_lib
from ensembles import files
from experiments import plots, report, runner

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's folder (holds config.json and ensemble/).")
_OOD = flags.DEFINE_list("ood_datasets", None, "OoD test sets (default: the run's config); 'none' = skip.")
_CORRUPTIONS = flags.DEFINE_list("corruptions", None, "Corruption types, 'all' or 'none' (default: the run's config).")
_CORRUPTION_EXAMPLES = flags.DEFINE_integer("corruption_examples", None, "Test images per corrupted set (0 = all).")
_OOD_EXAMPLES = flags.DEFINE_integer("ood_examples", None, "OoD images per set (0 = all).")
_RESIZE_OOD = flags.DEFINE_boolean("resize_ood", None, "Resize OoD images of another shape.")


def _overrides() -> dict:
  out = {}
  if _OOD.value is not None:
    out["ood_datasets"] = () if _OOD.value == ["none"] else tuple(_OOD.value)
  if _CORRUPTIONS.value is not None:
    out["corruptions"] = () if _CORRUPTIONS.value == ["none"] else tuple(_CORRUPTIONS.value)
  for key, flag in (("corruption_examples", _CORRUPTION_EXAMPLES), ("ood_examples", _OOD_EXAMPLES),
                    ("resize_ood", _RESIZE_OOD)):
    if flag.value is not None:
      out[key] = flag.value
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required.")
  logging.set_verbosity(logging.WARNING)
  try:
    results = runner.evaluate_workdir(_WORKDIR.value, **_overrides())
  except (config_lib.ConfigError, ValueError, FileNotFoundError) as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  files.write_atomic(os.path.join(_WORKDIR.value, "evaluation.json"), json.dumps(results, indent=2))
  written = plots.run_plots(results, _WORKDIR.value) if "params_per_member" in results else []
  print(report.run_table(results) if "params_per_member" in results else
        "\n".join(report.ood_lines(results) + report.corruption_lines(results)))
  print(f"Wrote {os.path.join(_WORKDIR.value, 'evaluation.json')}" + (f" and {', '.join(written)}." if written else "."))


if __name__ == "__main__":
  app.run(main)
