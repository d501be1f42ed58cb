"""The public entry: any registered method on any Flax model and data, in one call.

  result = ensembles.fit("edst_ensemble", model, data, sparsity=0.9, epochs=...)
  probs = result.predict(x_new)          # [N, K] ensemble probabilities
  result.results["test"]["ensemble"]     # accuracy, NLL, ECE, Brier, ...

``model``: any `flax.linen` module called as ``model(x, train=...)`` returning logits [B, K] (the
model contract: README "Adding a model"). ``data``: a `data.Dataset` (e.g. `data.load_dataset`) or
a mapping of plain arrays for `data.from_arrays` (x_train, y_train, optional x_val/y_val,
x_test/y_test, num_classes). ``workdir=None`` trains in memory; with a folder the run checkpoints
there, resumes from it when rerun and saves the ensemble in ``workdir/ensemble``.

The config-file CLI (`experiments.train`) calls `run_config`, which builds the config's named model
and dataset and goes through the same `fit_config`.

Seeds as members: ``ensembles.fit_seeds(method, model, data, seeds=(0, 1, 2))`` trains the runs of
several seeds in the same compiled steps (S·M members; `context.Run`) and returns one `Fitted` per
seed, each equal to what `fit` gives for that seed alone (`fit_config_seeds`; the comparison runner
trains its seeds this way).
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import ml_collections

from ensembles import checkpoints
from ensembles import config as config_lib
from ensembles import context
from ensembles import data as data_lib
from ensembles import defaults
from ensembles import evaluation as evaluation_lib
from ensembles import files
from ensembles import health as health_lib
from ensembles import memory
from ensembles import models as models_lib
from ensembles import streaming
from ensembles import train as train_lib
from ensembles import workdir_lock
from ensembles.ensemble import Ensemble
from ensembles.errors import ConfigError
from ensembles.methods import Method, Trained, get_method, register
from ensembles.models import multi_member

ENSEMBLE_DIR = "ensemble"  # WORKDIR/ensemble: the evaluated members
CONFIG_FILE = "config.json"  # WORKDIR/config.json: the config the run in the folder trains
# Fields that may change between a run and its resumption (they do not change the result).
RESUMABLE_FIELDS = ("log_every_steps", "steps_per_dispatch", "eval_every_epochs", "eval_batch_size",
                    "checkpoint_every_steps", "keep_checkpoints", "member_execution", "evaluation", "mesh",
                    "compilation_cache_dir", "health", "training.on_unhealthy")  # a block, or block.field


@dataclasses.dataclass(frozen=True)
class Fitted:
  """What `fit` returns: the trained ``ensemble``, its ``results`` (metrics, costs, method
  details: the same dictionary the CLI writes to results.json), the ``log`` records of a run
  without a workdir, and the full ``config`` it ran with."""

  ensemble: Ensemble
  results: dict
  log: list
  config: ml_collections.ConfigDict

  def predict(self, x) -> Any:
    """The ensemble's probabilities [N, K] of inputs x [N, ...]."""
    return self.ensemble.predict(x)


def fit(method: str | Method, model: nn.Module, data: data_lib.Dataset | Mapping, workdir: str | None = None, *,
        config: ml_collections.ConfigDict | None = None, **fields: Any) -> Fitted:
  """Trains and evaluates ``method`` on ``model`` and ``data`` (see the module docstring).

  ``fields`` change the method's default config (`defaults.method_config`): a top-level field
  (``num_members=5``, ``seed=1``), a block as a dict (``training={"epochs": 5, "lr": 0.1}``) or a
  field by its own name where only one block has it (``epochs=5``, ``sparsity=0.9``). ``config``:
  a full config to start from instead. Evaluation on OoD and corrupted sets is off unless asked for
  (``evaluation={"ood_datasets": ("digits",)}`` for 28x28 images). The dataset block does not apply
  (subset or split your arrays yourself) and plots are the CLI's (`experiments.train`).

  ``method``: a registered name, or a `Method` value (registered here under its name).
  """
  cfg, dataset = user_config(method, model, data, config, fields)
  return fit_config(cfg, model, dataset, workdir)


def fit_seeds(method: str | Method, model: nn.Module, data: data_lib.Dataset | Mapping, seeds: Sequence[int],
              workdir: str | None = None, *, config: ml_collections.ConfigDict | None = None,
              **fields: Any) -> list[Fitted]:
  """`fit` for each of ``seeds``, all trained together as members of one compiled step (each seed's
  members keep their own keys, masks, data order, sample weights: the results equal S calls of
  `fit`). With a ``workdir``: training checkpoints in WORKDIR/seeds (resumable), each seed's run
  folder WORKDIR/seed_<s> as `fit` writes it. Returns one `Fitted` per seed, in order."""
  if "seed" in fields:
    raise ConfigError("fit_seeds takes the seeds as its `seeds` argument, not a `seed` field.")
  cfg, dataset = user_config(method, model, data, config, fields)
  workdirs = None if workdir is None else [files.join(workdir, f"seed_{s}") for s in seeds]
  return fit_config_seeds(cfg, model, dataset, seeds, workdirs, None if workdir is None else files.join(workdir, "seeds"))


def user_config(method: str | Method, model: nn.Module, data: data_lib.Dataset | Mapping,
                config: ml_collections.ConfigDict | None, fields: Mapping[str, Any]
                ) -> tuple[ml_collections.ConfigDict, data_lib.Dataset]:
  """The validated config and the dataset of a `fit` call (see `fit`)."""
  if isinstance(method, Method):
    register(method)
  method = get_method(method)
  if not isinstance(model, nn.Module):
    raise TypeError(f"model must be a flax.linen Module called as model(x, train=...), got {type(model).__name__}.")
  dataset = data if isinstance(data, data_lib.Dataset) else data_lib.from_arrays(**dict(data))
  base = config.copy_and_resolve_references() if config is not None else defaults.method_config(method.name)
  base.method = method.name
  if config is None:  # the user's data need not be images: evaluation on other image sets only on request
    base.evaluation.ood_datasets, base.evaluation.corruptions = (), ()
  base.evaluation.plots = False
  cfg = with_fields(base, fields, method, fixed=("dataset", "model"))
  if cfg.evaluation.plots:
    raise ConfigError("config.evaluation.plots does not apply to ensembles.fit (the CLI, experiments.train, draws them).")
  # what identifies the model and the data (a workdir refuses another run's): class, fields, data shapes and bytes
  cfg.model = ml_collections.ConfigDict({"name": config_lib.CUSTOM_MODEL,
                                         "module": re.sub(r"0x[0-9a-f]+", "0x", repr(model))})  # no addresses
  cfg.dataset = ml_collections.ConfigDict({"name": dataset.name, "val_size": len(dataset.y_val), "data_dir": "",
                                           "fingerprint": data_lib.fingerprint(dataset)})
  config_lib.validate(cfg, given_data=True)
  evaluation_lib.check_sources(dataset.name, cfg.evaluation)  # before training: the OoD / corrupted sets asked for
  return cfg, dataset


def prepare_run(config: ml_collections.ConfigDict, model: nn.Module | None = None,
                data: data_lib.Dataset | None = None) -> tuple[nn.Module, data_lib.Dataset]:
  """Validates ``config``, checks its data sources, loads its dataset and builds its model (unless
  given); writes nothing, so a mistake leaves no folder behind. Returns (model, data)."""
  config_lib.validate(config, given_data=data is not None)
  if data is None:  # the training set first, then the evaluation's sets
    data_lib.check_training_source(config.dataset)
  evaluation_lib.check_sources(config.dataset.name, config.evaluation, config.dataset.data_dir)
  data = data if data is not None else data_lib.load_dataset(config.dataset)
  model = model if model is not None else build_model(config, data)
  return model, data


def run_config(config: ml_collections.ConfigDict, workdir: str | None, *, model: nn.Module | None = None,
               data: data_lib.Dataset | None = None) -> dict:
  """Validates ``config``, builds its model and dataset (unless given; `prepare_run`), trains and
  evaluates its method; returns the results (the CLI's call)."""
  model, data = prepare_run(config, model, data)
  return fit_config(config, model, data, workdir).results


def run_config_seeds(config: ml_collections.ConfigDict, seeds: Sequence[int], workdirs: Sequence[str],
                     group_workdir: str) -> list[dict]:
  """`run_config` for each of ``seeds`` (`prepare_run`, then `fit_config_seeds_or_in_turn`): the
  config's model and dataset built once; returns each seed's results."""
  model, data = prepare_run(config)
  return fit_config_seeds_or_in_turn(config, model, data, seeds, workdirs, group_workdir)


def fit_config_seeds_or_in_turn(config: ml_collections.ConfigDict, model: nn.Module, data: data_lib.Dataset,
                                seeds: Sequence[int], workdirs: Sequence[str], group_workdir: str) -> list[dict]:
  """The results of ``seeds`` trained together as members (`fit_config_seeds`); a training set
  streamed from disk (too large to hold in memory), or a step whose estimated memory
  (`memory.seeds_fit`) exceeds the device's, trains the seeds one after another instead."""
  streamed = streaming.is_streamed(data.x_train)
  one_network = get_method(config.method).trains_one_network
  fits, words = memory.seeds_fit(context.build(config, network_for(config, model), data, None, seeds=seeds,
                                               num_members=1 if one_network else None))
  if streamed or not fits:
    why = f"the training set of {config.dataset.name} streams from disk" if streamed else f"the step needs {words}"
    print(f"Seeds {list(seeds)} train one after another: {why}.", file=sys.stderr)
    results = []
    for seed, workdir in zip(seeds, workdirs):
      c = config.copy_and_resolve_references()
      c.seed = int(seed)
      results.append(fit_config(c, model, data, workdir).results)
    return results
  return [f.results for f in fit_config_seeds(config, model, data, seeds, workdirs, group_workdir)]


def fit_config(config: ml_collections.ConfigDict, model: nn.Module, data: data_lib.Dataset,
               workdir: str | None) -> Fitted:
  """The shared path for a validated ``config`` (`config.validate`, which includes the method's
  checks): the method's recipe on a run context, then evaluation, the saved ensemble (with a
  workdir) and the results."""
  model = network_for(config, model)
  if workdir is None:
    run, (trained,) = train_method(config, model, data, workdir)
  else:
    with workdir_lock.held(workdir):  # one live run per folder: a second is refused at once
      claim_workdir(config, workdir)
      try:
        run, (trained,) = train_method(config, model, data, workdir)
        save(run, trained.ensemble)
      finally:  # a remote metrics log is written out whole, also when training stops with an error
        files.close_all()
  results = summarize(run, trained, evaluate(run, trained.ensemble))
  results["health"] = health_report(run, config.seed, results, data)
  return Fitted(trained.ensemble, results, run.log.records, config)


def fit_config_seeds(config: ml_collections.ConfigDict, model: nn.Module, data: data_lib.Dataset,
                     seeds: Sequence[int], workdirs: Sequence[str] | None = None,
                     group_workdir: str | None = None) -> list[Fitted]:
  """`fit_config` for each of ``seeds`` (``config.seed`` is replaced), trained together as S·M
  members of one run (`context.Run`; checkpoints and collected members in ``group_workdir``, whose
  config.json lists the seeds). Each seed's folder of ``workdirs`` gets what `fit_config` writes
  (config.json with its seed, the saved ensemble), so it reloads and re-evaluates as a run of its
  own. Results per seed: those of `fit_config`, train_time_s the run's time / S, and
  ``seeds_as_members``: {"seeds", "train_time_s" of the whole run}."""
  seeds = [int(s) for s in seeds]
  method = get_method(config.method)
  if not method.trains_seeds:
    raise ConfigError(f"method {method.name!r} does not train seeds as members (Method.trains_seeds); "
                      "train its seeds one after another.")
  if workdirs is not None and len(workdirs) != len(seeds):
    raise ValueError(f"{len(workdirs)} workdirs for {len(seeds)} seeds.")
  configs = []
  for seed in seeds:
    c = config.copy_and_resolve_references()
    c.seed = seed
    configs.append(c)
  model = network_for(config, model)
  with workdir_lock.held(group_workdir, *(workdirs or ())):
    return _fit_seeds_in(configs, model, data, seeds, workdirs, group_workdir)


def _fit_seeds_in(configs, model, data, seeds, workdirs, group_workdir) -> list[Fitted]:
  """`fit_config_seeds` once its folders are locked."""
  config = configs[0]
  try:
    if group_workdir is not None:  # first: another seed list in the same folder is refused before any seed's
      claim_workdir(ml_collections.ConfigDict({**config.to_dict(), "seed": list(seeds)}), group_workdir)
    for c, workdir in zip(configs, workdirs or ()):
      claim_workdir(c, workdir)
    run, trained = train_method(configs[0], model, data, group_workdir, seeds)  # config.seed: the first seed
    fitted = []
    for c, workdir, t in zip(configs, workdirs or [None] * len(seeds), trained):
      seed_run = context.build(c, model, data, workdir)
      if workdir is not None:
        save(seed_run, t.ensemble)
      info = {**t.info, "train_time_s": t.info["train_time_s"] / len(seeds)}
      results = summarize(seed_run, dataclasses.replace(t, info=info), evaluate(seed_run, t.ensemble))
      results["seeds_as_members"] = {"seeds": seeds, "train_time_s": t.info["train_time_s"]}
      results["health"] = health_report(run, c.seed, results, data)
      fitted.append(Fitted(t.ensemble, results, run.log.records, c))
  finally:
    files.close_all()
  return fitted


def health_report(run: context.Run, seed: int, results: dict, data: data_lib.Dataset) -> dict:
  """results.json's ``health`` of ``seed``: the flags its training raised (`health.Monitor`) and
  those of its members' test predictions (`health.final_check`), each also printed on stderr."""
  report = health_lib.final_check(run.health.report(int(seed)), int(seed), results.get("test"), data.y_test,
                                  run.health.options)
  if jax.process_index() == 0:  # training's flags were printed as they came; the test set's now
    for flag in (f for f in report["flags"] if f["phase"] == "test"):
      print(f"warning: unhealthy run: {flag['message']}.", file=sys.stderr)
  return report


def network_for(config: ml_collections.ConfigDict, model: nn.Module) -> nn.Module:
  """The network the config's method trains for ``model`` (refusing an already-wrapped model where
  the method would misread it)."""
  method = get_method(config.method)
  if multi_member.is_member_network(model) and (method.network is not None or not method.takes_member_networks):
    raise ConfigError(f"method {method.name!r} cannot train a model that already holds several members "
                      f"({type(model).__name__}); pass the plain model (methods 'batch_ensemble', 'mimo' and "
                      "'treenet' wrap it themselves), or train the wrapped model with 'single' or 'deep_ensemble'.")
  return method.build_network(model, config)


def train_method(config: ml_collections.ConfigDict, network: nn.Module, data: data_lib.Dataset,
                 workdir: str | None, seeds: Sequence[int] | None = None) -> tuple[context.Run, list[Trained]]:
  """The method's recipe on the run context of ``network`` (the method's network: `network_for`)
  for ``seeds`` (default: the config's); returns the run and one `Trained` per seed."""
  method = get_method(config.method)
  run = context.build(config, network, data, workdir, seeds=seeds)
  trained = method.train(run, method.read_options(config))
  trained = [trained] if isinstance(trained, Trained) else list(trained)
  if len(trained) != run.num_seeds:
    raise ValueError(f"method {method.name!r} returned {len(trained)} trained ensembles for {run.num_seeds} seeds.")
  return run, trained


def config_differences(old: dict, new: dict) -> list[str]:
  """The dotted fields in which two configs (as JSON dicts) differ, those in `RESUMABLE_FIELDS`
  (which do not change a result) left out."""
  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      if prefix + k in RESUMABLE_FIELDS:
        continue
      if isinstance(v, dict):
        out.update(flat(v, prefix + k + "."))
      else:
        out[prefix + k] = v
    return out
  a, b = flat(old), flat(new)
  return sorted(k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


def claim_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the config to WORKDIR/config.json, refusing a folder that holds a run of another config
  (fields in `RESUMABLE_FIELDS` may differ: they do not change the result). ``workdir`` may be a
  URL (gs://bucket/run; see `files`)."""
  files.make_dirs(workdir)
  path = files.join(workdir, CONFIG_FILE)
  current = json.loads(config.to_json())
  if files.exists(path) and config_differences(json.loads(files.read_text(path)), current):
    raise ValueError(f"{workdir} holds a run with a different config ({path}); resume with the same "
                     "config or choose a new workdir.")
  if jax.process_index() == 0:  # one writer across hosts
    files.write_atomic(path, json.dumps(current, indent=2))


def with_fields(config: ml_collections.ConfigDict, fields: Mapping[str, Any], method: Method,
                fixed: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """``config`` with ``fields`` set (see `fit`), then the method's derived fields that were not set.
  Blocks in ``fixed`` cannot be set (nor their fields by name)."""
  config = ml_collections.ConfigDict(config.to_dict())  # unlocked: fields may take other types
  blocks = [k for k, v in config.items() if isinstance(v, ml_collections.ConfigDict) and k not in fixed]
  given = set()
  for key, value in fields.items():
    if key in fixed:
      raise ConfigError(f"config.{key} does not apply here: the {key} is passed in (subset or split arrays yourself).")
    if key in blocks and isinstance(value, Mapping):
      for field, v in value.items():
        if field not in config[key]:
          raise ConfigError(f"config.{key}.{field} is not a field; the {key} block has {sorted(config[key])}.")
        config[key][field] = v
        given.add(f"{key}.{field}")
    elif key in config and key not in blocks:
      config[key] = value
      given.add(key)
    else:
      owners = [b for b in blocks if key in config[b]]
      if len(owners) > 1:
        raise ConfigError(f"{key!r} is in several blocks {owners}; pass it in a block dict, e.g. "
                          f"{owners[0]}={{{key!r}: ...}}.")
      if not owners:
        raise ConfigError(f"{key!r} is not a config field: give a top-level field "
                          f"{sorted(k for k in config if k not in blocks)}, a block dict {sorted(blocks)}, "
                          "or a field of one block by its name.")
      config[owners[0]][key] = value
      given.add(f"{owners[0]}.{key}")
  for field, value in (method.derived(config) if method.derived else {}).items():
    if field not in given:
      defaults.set_field(config, field, value)
  return config


def build_model(config: ml_collections.ConfigDict, data: data_lib.Dataset) -> nn.Module:
  """The config's named model for ``data``'s classes."""
  return models_lib.build_model(config.model.name, data.num_classes,
                                {k: v for k, v in config.model.items() if k != "name"})


def evaluate(run: context.Run, ensemble: Ensemble, eval_cfg: Any = None) -> dict:
  """`evaluation.evaluate_all` of ``ensemble`` on the run's data (``eval_cfg`` defaults to the
  config's evaluation block): test and validation metrics, OoD, corruptions."""
  return evaluation_lib.evaluate_all(ensemble.member_probs, run.data,
                                     run.config.get("evaluation") if eval_cfg is None else eval_cfg,
                                     ensemble.weights, ensemble.combine, data_dir=run.config.dataset.data_dir)


def save(run: context.Run, ensemble: Ensemble) -> None:
  """Saves the ensemble's members and how they combine in WORKDIR/ensemble."""
  checkpoints.save_ensemble(files.join(run.workdir, ENSEMBLE_DIR),
                            {"params": ensemble.params, "model_state": ensemble.model_state},
                            {"method": run.config.method, "num_members": ensemble.num_members,
                             "combine": ensemble.combine,
                             "weights": None if ensemble.weights is None else list(ensemble.weights)})


def load_saved(config: ml_collections.ConfigDict, workdir: str, *, model: nn.Module | None = None,
               data: data_lib.Dataset | None = None) -> tuple[context.Run, Ensemble, dict]:
  """A finished run's saved ensemble, ready to predict: (run, ensemble, meta), meta holding
  method, num_members, weights and combine. The config's named model and dataset are built unless
  given (a run of `fit` on your own model and arrays needs them: ``model=``, ``data=``)."""
  if (model is None or data is None) and config.model.name == config_lib.CUSTOM_MODEL:
    raise ValueError(f"{workdir} holds a run of ensembles.fit on a user's model and data; pass them: "
                     "load_saved(config, workdir, model=..., data=...).")
  data = data if data is not None else data_lib.load_dataset(config.dataset)
  model = get_method(config.method).build_network(model if model is not None else build_model(config, data), config)
  run = context.build(config, model, data, workdir)
  directory = files.join(workdir, ENSEMBLE_DIR)
  meta = checkpoints.read_ensemble_meta(directory)
  m = int(meta["num_members"])
  like = jax.eval_shape(lambda: train_lib.init_state(run.model, run.tx, run.init_key, m, run.data.image_shape))
  members = checkpoints.load_ensemble(directory, {"params": like.params, "model_state": like.model_state})
  method = get_method(meta["method"])
  apply = method.predictor(run, method.read_options(config)) if method.predictor else None
  return run, run.ensemble(members, meta["weights"], meta["combine"], apply), meta


def summarize(run: context.Run, trained: Trained, evaluation: dict) -> dict:
  """The results of a method: what ran, its cost (FLOPs default: dense members) and metrics. With
  stacked masks the nonzero parameter counts are the masks' True entries."""
  ensemble, info = trained.ensemble, trained.info
  m = ensemble.num_members
  per_member = train_lib.num_params(ensemble.params)
  flops = trained.flops or run.flops(m, info["steps"])
  nonzero = per_member * m if trained.masks is None else int(sum(int(x.sum()) for x in jax.tree.leaves(trained.masks)))
  execution = context.execution_for(run.config, run.model, m, input_shape=run.data.image_shape, target=run.target)
  user_model = run.model.inner if isinstance(run.model, multi_member.MemberNetwork) else run.model  # wrapped
  model_name = run.config.model.name if run.config.model.name != config_lib.CUSTOM_MODEL else type(user_model).__name__
  return {
      "method": run.config.method,
      "dataset": run.data.name,
      "model": model_name,
      "num_members": trained.num_members or m,
      "seed": run.config.seed,
      "member_execution": execution.mode,
      "mesh": {axis: int(size) for axis, size in execution.mesh.shape.items()},
      "backend": run.target.platform,
      "params_per_member": per_member,
      "params_total": per_member * m,
      "nonzero_params_total": nonzero,
      "train_time_s": info["train_time_s"],
      "train_steps": info["steps"],
      "flops": flops,
      **evaluation,
      **trained.results,
  }
