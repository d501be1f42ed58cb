"""Pieces every method's recipe uses: building the run from the config, and the final evaluation."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from ensembles import checkpoints
from ensembles import data as data_lib
from ensembles import evaluation as evaluation_lib
from ensembles import flops as flops_lib
from ensembles import members as members_lib
from ensembles import models as models_lib
from ensembles import sparse
from ensembles import train as train_lib
from ensembles import trainer


ENSEMBLE_DIR = "ensemble"  # WORKDIR/ensemble: the evaluated members, saved by `evaluate`


@dataclasses.dataclass
class Run:
  """Everything a recipe needs, built once from the config."""

  config: Any
  workdir: str
  data: data_lib.Dataset
  model: Any
  tx: optax.GradientTransformation  # what the train step uses (sparse.masked(inner_tx) for sparse methods)
  inner_tx: optax.GradientTransformation  # the configured optimizer
  execution: members_lib.Execution  # concrete mode, device mesh (members x data; 1 x 1 on one device), conv flag
  init_key: jax.Array
  data_keys: jax.Array  # [M] per-member data-order keys
  train_step: Callable
  predict: Callable
  log: trainer.MetricsLog

  @property
  def mesh(self) -> jax.sharding.Mesh:
    return self.execution.mesh


def build_run(config: Any, workdir: str, num_members: int | None = None, sparse_training: bool = False,
              schedule: Callable[[int, int], optax.Schedule] | None = None, key_salt: int = 0) -> Run:
  """Loads data, builds model, optimizer and the jitted step/predict functions for M members.

  With ``sparse_training`` the optimizer is wrapped in `sparse.masked` (masks in its state);
  ``schedule(total_steps, steps_per_epoch)``, if given, builds the lr schedule instead of the config's.
  ``key_salt`` > 0 folds into the seed's key, so a second phase of a recipe (e.g. subnetwork
  children after their parent) draws streams different from the first's.
  """
  m = num_members or config.num_members
  data = data_lib.load_dataset(config.dataset)
  model_kwargs = {k: v for k, v in config.model.items() if k != "name"}
  model = models_lib.build_model(config.model.name, data.num_classes, model_kwargs)
  t = config.training
  steps_per_epoch = len(data.y_train) // t.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"config.training.batch_size ({t.batch_size}) exceeds the {len(data.y_train)} "
                     "training examples.")
  total_steps = t.epochs * steps_per_epoch
  inner_tx = train_lib.make_optimizer(t, total_steps, steps_per_epoch,
                                      schedule(total_steps, steps_per_epoch) if schedule else None)
  tx = sparse.masked(inner_tx) if sparse_training else inner_tx
  execution = run_execution(config, model, m, t.batch_size, data.image_shape)
  key = jax.random.PRNGKey(config.seed)
  init_key, data_key = jax.random.split(jax.random.fold_in(key, key_salt) if key_salt else key)
  train_step = train_lib.make_train_step(model, tx, execution=execution, mean=data.mean, std=data.std,
                                         crop_padding=config.augment.crop_padding, flip=config.augment.flip,
                                         batch_split=t.batch_split)
  predict = train_lib.make_predict(model, execution=execution, mean=data.mean, std=data.std)
  os.makedirs(workdir, exist_ok=True)
  return Run(config, workdir, data, model, tx, inner_tx, execution, init_key, jax.random.split(data_key, m),
             train_step, predict, trainer.MetricsLog(os.path.join(workdir, "metrics.jsonl")))


def run_execution(config: Any, model: Any, num_members: int, batch_size: int | None = None,
                  input_shape: tuple[int, ...] | None = None) -> members_lib.Execution:
  """How M = ``num_members`` members run: the device mesh of ``config.mesh`` (checked: M and the
  batch sizes divide over it), the concrete member-execution mode on it and whether the model
  convolves (`members.has_convolutions` on inputs of ``input_shape``)."""
  mesh_cfg = config.get("mesh") or {"members": 0, "data": 1}
  mesh = members_lib.make_mesh(mesh_cfg["members"], mesh_cfg["data"], num_members=num_members)
  members_lib.check_layout(mesh, num_members, batch_size, config.eval_batch_size)
  has_conv = members_lib.has_convolutions(model, input_shape)
  mode = members_lib.resolve_execution(
      config.member_execution, has_conv, num_members=num_members,
      num_devices=mesh.shape[members_lib.MEMBER_AXIS], data_parallel=mesh.shape[members_lib.DATA_AXIS])
  return members_lib.Execution(mode, mesh, has_conv)


def init_members(run: Run, num_members: int, tx: optax.GradientTransformation | None = None) -> train_lib.TrainState:
  """``num_members`` freshly initialised members (optimizer ``tx``, default the run's), laid out
  on the run's mesh."""
  return train_lib.init_state(run.model, tx or run.tx, run.init_key, num_members, run.data.image_shape, run.mesh)


def collected_ensemble(run: Run, members: Any) -> train_lib.TrainState:
  """A TrainState for evaluation from collected members (tickets, checkpoints, snapshots):
  ``members`` holds stacked ``params`` and ``model_state`` [M, ...]; also points ``run.predict``
  at a predictor for M members."""
  m = members_lib.num_members(members["params"])
  run.execution = run_execution(run.config, run.model, m, input_shape=run.data.image_shape)
  run.predict = train_lib.make_predict(run.model, execution=run.execution, mean=run.data.mean, std=run.data.std)
  members = members_lib.place(members, run.mesh, members_lib.MEMBER_AXIS)
  return train_lib.TrainState(step=jnp.zeros(m, jnp.int32), params=members["params"],
                              model_state=members["model_state"], opt_state=None, rng=jnp.zeros((m, 2), jnp.uint32))


def evaluate(run: Run, state: train_lib.TrainState, weights=None, combine: str = "mean") -> dict:
  """Saves the ensemble to WORKDIR/ensemble (for `experiments.evaluate`) and returns its full
  evaluation (`evaluation.evaluate_all`: test and validation metrics, OoD, corruptions, as
  ``config.evaluation`` asks). ``weights``, ``combine``: see `metrics.evaluate_ensemble`."""
  m = members_lib.num_members(state.params)
  checkpoints.save_ensemble(os.path.join(run.workdir, ENSEMBLE_DIR), {"params": state.params, "model_state": state.model_state},
                            {"method": run.config.method, "num_members": m, "combine": combine,
                             "weights": None if weights is None else [float(w) for w in weights]})
  return evaluate_saved(run, state, weights, combine)


def evaluate_saved(run: Run, state: train_lib.TrainState, weights=None, combine: str = "mean",
                   eval_cfg: Any = None) -> dict:
  """`evaluation.evaluate_all` of ``state``'s members through ``run.predict`` (``eval_cfg``
  defaults to the config's evaluation block)."""
  batch = run.config.eval_batch_size
  return evaluation_lib.evaluate_all(
      lambda images: train_lib.predict_probs(run.predict, state, images, batch), run.data,
      run.config.get("evaluation") if eval_cfg is None else eval_cfg, weights, combine,
      data_dir=run.config.dataset.data_dir)


def load_saved_ensemble(run: Run) -> tuple[train_lib.TrainState, dict]:
  """The ensemble a finished run saved in WORKDIR/ensemble (a TrainState for evaluation, and the
  meta: method, num_members, weights, combine); ``run.predict`` is pointed at its members (or at the
  method module's ``predictor(run)`` where it defines one)."""
  directory = os.path.join(run.workdir, ENSEMBLE_DIR)
  meta = checkpoints.read_ensemble_meta(directory)
  m = int(meta["num_members"])
  like = jax.eval_shape(lambda: train_lib.init_state(run.model, run.inner_tx, run.init_key, m, run.data.image_shape))
  members = checkpoints.load_ensemble(directory, {"params": like.params, "model_state": like.model_state})
  state = collected_ensemble(run, members)
  from ensembles import methods  # pylint: disable=g-import-not-at-top  (methods import this module)
  method_predictor = getattr(methods.get_method(meta["method"]), "predictor", None)
  if method_predictor is not None:  # e.g. MC dropout's T stochastic passes
    run.predict = method_predictor(run)
  return state, meta


def flops_summary(run: Run, num_members: int, steps: int, densities: dict[str, float] | None = None,
                  rule: str = "dense", gradient_updates: int = 0, trained_members: int | None = None,
                  reference_epochs: int | None = None, extra_passes: float = 0.0) -> dict:
  """Inference FLOPs of ``num_members`` members and training FLOPs (DESIGN §5) of
  ``trained_members`` (default: the same) trained ``steps`` steps each at ``densities``
  (`flops.sparse_training_flops`), with ``gradient_updates`` RigL updates in all, plus
  ``extra_passes`` forward passes of one example through the (sparse) network that the algorithm
  needs besides training (e.g. CBNN's training-set predictions). Training also as a multiple of one
  dense model trained for ``reference_epochs`` (default: the configured epochs) -- x_dense.
  ``rule`` names the counting for the report."""
  t = run.config.training
  trained_members = trained_members or num_members
  reference_steps = (reference_epochs or t.epochs) * (len(run.data.y_train) // t.batch_size)
  costs = flops_lib.layer_costs(run.model, run.data.image_shape)
  f_dense = flops_lib.forward_flops(costs)
  f_sparse = flops_lib.forward_flops(costs, densities)
  train = (flops_lib.sparse_training_flops(f_dense, f_sparse, trained_members * steps, t.batch_size, gradient_updates)
           + extra_passes * f_sparse)
  return {
      "forward_flops_dense": f_dense,
      "inference_flops": num_members * f_sparse,
      "inference_x_dense": num_members * f_sparse / f_dense,
      "train_flops": train,
      "train_x_dense": train / (reference_steps * t.batch_size * 3.0 * f_dense),
      "flops_rule": rule,
  }


def results(run: Run, state: train_lib.TrainState, info: dict, evaluation: dict,
            flops: dict | None = None, masks: Any = None) -> dict:
  """The summary a method returns: what ran, its cost (FLOPs default: dense members) and metrics.
  With stacked ``masks`` the nonzero parameter counts are the masks' True entries."""
  per_member = train_lib.num_params(state.params)
  m = members_lib.num_members(state.params)
  flops = flops or flops_summary(run, m, info["steps"])
  nonzero_total = per_member * m if masks is None else int(sum(int(x.sum()) for x in jax.tree.leaves(masks)))
  return {
      "method": run.config.method,
      "dataset": run.data.name,
      "model": run.config.model.name,
      "num_members": m,
      "seed": run.config.seed,
      "member_execution": run.execution.mode,
      "mesh": {axis: int(size) for axis, size in run.mesh.shape.items()},
      "backend": jax.default_backend(),
      "params_per_member": per_member,
      "params_total": per_member * m,
      "nonzero_params_total": nonzero_total,
      "train_time_s": info["train_time_s"],
      "train_steps": info["steps"],
      "flops": flops,
      **evaluation,
  }
