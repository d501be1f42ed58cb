"""Run one config in a workdir (validate, check the data sources, train, write results), and
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
from ensembles import defaults
from ensembles import evaluation as evaluation_lib
from ensembles import files
from ensembles import workdir_lock
from experiments import report


def run(config, workdir: str) -> dict:
  """Validates ``config``, trains and evaluates its method in ``workdir``; returns the results."""
  model, data = api.prepare_run(config)  # validates, checks the data sources: a mistake writes nothing
  with workdir_lock.held(workdir):  # training and results; another run in the folder is refused
    results = api.fit_config(config, model, data, workdir).results  # refuses another config's workdir
    write_results(config, workdir, results)
  return results


def run_seeds(config, seeds, workdirs, group_workdir: str) -> list[dict]:
  """`run` for each of ``seeds`` (config.seed replaced), trained together as members in
  ``group_workdir`` (`api.run_config_seeds`); each seed's folder of ``workdirs`` gets the files
  `run` writes. Returns each seed's results."""
  model, data = api.prepare_run(config)
  with workdir_lock.held(*workdirs):  # the group folder too, once the seeds train together (fit_config_seeds)
    all_results = api.fit_config_seeds_or_in_turn(config, model, data, seeds, workdirs, group_workdir)
    if jax.process_index() == 0:  # every seed's results.json first: what marks a seed finished
      for workdir, results in zip(workdirs, all_results):
        files.write_atomic(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    for seed, workdir, results in zip(seeds, workdirs, all_results):
      seed_config = config.copy_and_resolve_references()
      seed_config.seed = int(seed)
      write_results(seed_config, workdir, results)
  return all_results


def write_results(config, workdir: str, results: dict) -> None:
  """results.json, results.md and (if the config asks) the plots of a finished run in ``workdir``."""
  if jax.process_index() == 0:  # one writer across hosts
    files.write_atomic(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    if config.evaluation.plots:
      from experiments import plots  # pylint: disable=g-import-not-at-top  (matplotlib: only when plotting)
      plots.run_plots(results, workdir)
    files.write_atomic(os.path.join(workdir, "results.md"), report.run_table(results))


def _tuples(value):
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (WORKDIR/config.json); runs from before the evaluation block
  existed get the default one."""
  path = os.path.join(workdir, api.CONFIG_FILE)
  if not files.exists(path):
    raise FileNotFoundError(f"{workdir} is not a run folder (no config.json); train first with "
                            f"`python -m experiments.train --config ... --workdir {workdir}`.")
  config = ml_collections.ConfigDict(_tuples(json.loads(files.read_text(path))))
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
  if files.exists(results_path):
    results = json.loads(files.read_text(results_path))
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
