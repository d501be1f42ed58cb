"""Run one config in a workdir: validate, refuse a different config, train, write results.

Used by the entry point (`experiments.train`) and the comparison runner (`experiments.compare`).
"""
from __future__ import annotations

import json
import os

from ensembles import config as config_lib
from ensembles import methods
from experiments import report

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
