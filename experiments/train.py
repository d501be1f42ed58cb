"""One entry point for every method:

  python -m experiments.train --config experiments/configs/NAME.py [--config.field=value ...] --workdir DIR

Trains, evaluates, prints the results table and writes results.json / results.md, metrics.jsonl and
Orbax checkpoints into DIR. Rerunning with the same DIR resumes from the newest checkpoint.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ensembles import config as config_lib
from ensembles import methods
from experiments import report

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results.")

# Fields that may change between a run and its resumption (they do not change the result).
_RESUMABLE_FIELDS = ("log_every_steps", "eval_every_epochs", "eval_batch_size", "checkpoint_every_steps",
                     "keep_checkpoints", "member_execution")


def _config_for_resume_check(config_dict: dict) -> dict:
  return {k: v for k, v in config_dict.items() if k not in _RESUMABLE_FIELDS}


def run(config, workdir: str) -> dict:
  """Validates ``config``, trains and evaluates its method in ``workdir``; returns the results."""
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  config_path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json())
  if os.path.exists(config_path):
    with open(config_path) as f:
      previous = json.load(f)
    if _config_for_resume_check(previous) != _config_for_resume_check(current):
      raise ValueError(f"{workdir} holds a run with a different config ({config_path}); resume with the "
                       "same config or choose a new --workdir.")
  with open(config_path, "w") as f:
    json.dump(current, f, indent=2)
  results = methods.get_method(config.method).train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  table = report.run_table(results)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table)
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required.")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file operation at INFO
  try:
    results = run(_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, ValueError, FileNotFoundError, FloatingPointError) as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  print(report.run_table(results))
  print(f"Wrote {os.path.join(_WORKDIR.value, 'results.md')} and results.json.")


if __name__ == "__main__":
  app.run(main)
