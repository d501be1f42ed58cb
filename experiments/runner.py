"""Run one config in a workdir (validate, refuse a different config, train, write results), and
evaluate a finished run's saved ensemble again.

Used by the entry points (`experiments.train`, `experiments.evaluate`) and the comparison runner
(`experiments.compare`).
"""
from __future__ import annotations

import json
import os

import jax
import ml_collections

from ensembles import api
from ensembles import config as config_lib
from ensembles import data as data_lib
from ensembles import defaults
from ensembles import evaluation as evaluation_lib
from experiments import plots
from experiments import report

# Fields that may change between a run and its resumption (they do not change the result).
_RESUMABLE_FIELDS = ("log_every_steps", "eval_every_epochs", "eval_batch_size", "checkpoint_every_steps",
                     "keep_checkpoints", "member_execution", "evaluation", "mesh")


def _config_for_resume_check(config_dict: dict) -> dict:
  return {k: v for k, v in config_dict.items() if k not in _RESUMABLE_FIELDS}


def run(config, workdir: str) -> dict:
  """Validates ``config``, trains and evaluates its method in ``workdir``; returns the results."""
  config_lib.validate(config)
  data_lib.check_training_source(config.dataset)  # the training set first, then the evaluation's sets
  evaluation_lib.check_sources(config.dataset.name, config.evaluation, config.dataset.data_dir)
  os.makedirs(workdir, exist_ok=True)
  config_path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json())
  if os.path.exists(config_path):
    with open(config_path) as f:
      previous = json.load(f)
    if _config_for_resume_check(previous) != _config_for_resume_check(current):
      raise ValueError(f"{workdir} holds a run with a different config ({config_path}); resume with the "
                       "same config or choose a new --workdir.")
  main_process = jax.process_index() == 0  # one writer across hosts
  if main_process:
    write_atomic(config_path, json.dumps(current, indent=2))
  results = api.run_config(config, workdir)
  if main_process:
    write_atomic(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    if config.evaluation.plots:
      plots.run_plots(results, workdir)
    write_atomic(os.path.join(workdir, "results.md"), report.run_table(results))
  return results


def write_atomic(path: str, text: str) -> None:
  """Writes ``text`` to a temporary file beside ``path`` and renames it over ``path``: a crash
  leaves the old file or the new one, never half of one."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _tuples(value):
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (WORKDIR/config.json); runs from before the evaluation block
  existed get the default one."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} is not a run folder (no config.json); train first with "
                            f"`python -m experiments.train --config ... --workdir {workdir}`.")
  with open(path) as f:
    config = ml_collections.ConfigDict(_tuples(json.load(f)))
  if "evaluation" not in config:
    config.evaluation = defaults.default_config().evaluation
  return config


def evaluate_workdir(workdir: str, **evaluation_overrides) -> dict:
  """The run's results with a fresh evaluation of its saved ensemble (keys test, val, ood,
  corruption replaced); ``evaluation_overrides`` replace fields of ``config.evaluation``."""
  config = load_run_config(workdir)
  config.evaluation.update(evaluation_overrides)
  config_lib.validate_evaluation(config.evaluation, config.dataset.name)
  evaluation_lib.check_sources(config.dataset.name, config.evaluation, config.dataset.data_dir)
  run, ensemble, meta = api.load_saved(config, workdir)
  evaluation = api.evaluate(run, ensemble, config.evaluation)
  results_path = os.path.join(workdir, "results.json")
  results = {}
  if os.path.exists(results_path):
    with open(results_path) as f:
      results = json.load(f)
  for key in ("test", "val", "ood", "corruption"):
    results.pop(key, None)
  results.update(evaluation)
  results.setdefault("method", meta["method"])
  results.setdefault("num_members", meta["num_members"])
  return results


def load_ensemble(workdir: str, config=None):
  """A finished run's saved ensemble, ready to predict: (run, ensemble, meta) where
  ``ensemble.member_probs(images)`` gives member probabilities [M, N, K], ``ensemble.predict(images)``
  the combined ones, ``run.data`` is the run's dataset and meta holds method, num_members, weights,
  combine (`ensembles.api.load_saved`)."""
  return api.load_saved(config or load_run_config(workdir), workdir)
