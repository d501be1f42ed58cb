"""The run context: one frozen value holding what every step of a method's recipe needs.

A `Run` is built once from a config and the model and data (a config's named ones, or a user's
own); a recipe never changes it. A recipe phase that trains differently (one member instead of M,
sparse, its own lr schedule or epochs, its own folder) asks for a new `Run` with `Run.phase`.

Fields: the validated config (training, augmentation and loop settings), model, data, workdir (None:
nothing is written, checkpoints and collected members stay in memory), M, the optimizer (wrapped
by `sparse.masked` in a sparse phase), the member execution (mode, device mesh), each seed's init
key and the S·M per-member data-order keys, the jitted train step (one step, several steps of an epoch per
dispatch, and one step on a batch read from disk) and predictor, and the metrics log.

Seeds as members: a run of S seeds (``seeds``, default the config's one) trains the S runs of the
config, each with its own keys, in the same compiled steps. Its member axis holds S·M members,
seed-major (member m of seed s at s·M + m); every key a member is given (initialisation, masks,
data order, and through ``rng`` augmentation, dropout and topology updates) is the one it has in
the run of its seed alone, so each seed's members equal that run's (tests/test_seeds_as_members.py).
A recipe splits its stacked results per seed with `Run.split_seeds` and builds each seed's
ensemble on `Run.seed_runs`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ensembles import data as data_lib
from ensembles import ensemble as ensemble_lib
from ensembles import collected
from ensembles import files
from ensembles import flops as flops_lib
from ensembles import health as health_lib
from ensembles import members as members_lib
from ensembles import sparse
from ensembles import targets
from ensembles import train as train_lib
from ensembles.log import MetricsLog

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Run:
  config: Any
  model: nn.Module
  data: data_lib.Dataset
  workdir: str | None
  num_members: int
  epochs: int  # this phase's epochs (config.training.epochs unless the phase says otherwise)
  tx: optax.GradientTransformation
  execution: members_lib.Execution
  init_keys: jax.Array  # [S, 2]: each seed's init key
  data_keys: jax.Array  # [S·M] per-member data-order keys
  train_step: Callable
  train_chunk: Callable  # several steps of one epoch per dispatch (`train.make_train_chunk`)
  batch_step: Callable  # one step on a host-read `train.Batch` (streaming input)
  predict: Callable
  log: MetricsLog
  name: str  # progress-bar label: the method, or the phase ("parent", "children")
  key_salt: int = 0
  seeds: tuple[int, ...] = ()  # S seeds trained as members (`build`: the config's seed)
  phase_args: dict = dataclasses.field(default_factory=dict)  # `build`'s phase arguments (for `seed_runs`)
  target: targets.Target | None = None  # the devices the run is built for (`build`: `targets.local()`)
  health: health_lib.Monitor | None = None  # the health flags of the run and its phases (`build`: from the config)

  @property
  def num_seeds(self) -> int:
    """S: seeds trained together as members (1 for a plain run)."""
    return len(self.seeds)

  @property
  def total_members(self) -> int:
    """S·M: the stacked members of all the run's seeds."""
    return self.num_seeds * self.num_members

  @property
  def init_key(self) -> jax.Array:
    """The init key of a one-seed run (a run of several seeds has one per seed: `member_keys`)."""
    if self.num_seeds != 1:
      raise ValueError(f"Run.init_key is one seed's key; this run trains seeds {self.seeds} (use Run.member_keys "
                       "or Run.seed_runs).")
    return self.init_keys[0]

  def member_keys(self, salt: int | None = None) -> jax.Array:
    """[S·M] keys, seed-major: seed s's M keys are split(init_key_s) (or split(fold_in(init_key_s,
    salt))), the keys its run alone gives its members."""
    per_seed = [jax.random.split(k if salt is None else jax.random.fold_in(k, salt), self.num_members)
                for k in self.init_keys]
    return jnp.concatenate(per_seed)

  def split_seeds(self, stacked: Any) -> list:
    """A tree stacked over the run's seeds ([S·k, ...] leaves, seed-major; or a list of S·k items)
    as S trees [k, ...] (lists of k items), one per seed."""
    if isinstance(stacked, (list, tuple)):
      k = len(stacked) // self.num_seeds
      return [list(stacked[s * k:(s + 1) * k]) for s in range(self.num_seeds)]
    k = members_lib.num_members(stacked) // self.num_seeds
    return [jax.tree.map(lambda x, s=s: x[s * k:(s + 1) * k], stacked) for s in range(self.num_seeds)]

  def seed_runs(self) -> list["Run"]:
    """This phase's run for each seed alone (its config's seed, in memory, writing to this log):
    what a seed's ensemble, predictor and cost are built on."""
    if self.num_seeds == 1:
      return [self]
    runs = []
    for seed in self.seeds:
      config = self.config.copy_and_resolve_references()
      config.seed = seed
      runs.append(build(config, self.model, self.data, None, num_members=self.num_members, log=self.log,
                        target=self.target, **self.phase_args))
    return runs

  def require_devices(self, what: str, allow_abstract: bool = False) -> None:
    """A clear error when ``what`` would place arrays on a compile-only target's devices (outside a
    `jax.eval_shape` trace where ``allow_abstract``)."""
    if self.target is None or not self.target.compile_only:
      return
    if allow_abstract and isinstance(jnp.zeros(()), jax.core.Tracer):
      return
    raise ValueError(f"cannot {what} on {self.target.name}: its devices are compile-only (ensembles.preflight "
                     "compiles a run's programs for them; train on the hardware itself).")

  @property
  def mesh(self) -> jax.sharding.Mesh:
    return self.execution.mesh

  def epoch_order(self, epoch: int):
    """Each member's example order of ``epoch`` on the host: int32 [S·M, steps_per_epoch, B]
    (`train.epoch_indices`); the in-memory and the streamed input both train in this order."""
    t = self.config.training
    return np.concatenate([np.asarray(train_lib.epoch_indices(keys, epoch, len(self.data.y_train), t.batch_size,
                                                              t.shared_data_order))
                           for keys in self.split_seeds(self.data_keys)])

  @property
  def compute_dtype(self) -> str:
    return self.config.training.get("compute_dtype", "float32")

  @property
  def steps_per_epoch(self) -> int:
    return len(self.data.y_train) // self.config.training.batch_size

  @property
  def total_steps(self) -> int:
    return self.epochs * self.steps_per_epoch

  def phase(self, *, num_members: int | None = None, sparse_training: bool = False,
            schedule: optax.Schedule | None = None, epochs: int | None = None, key_salt: int | None = None,
            subdir: str | None = None, name: str | None = None) -> "Run":
    """A new run context for one phase of the recipe: ``num_members`` members, optimizer wrapped
    by `sparse.masked` if ``sparse_training``, lr ``schedule`` instead of the config's, ``epochs``,
    ``key_salt`` > 0 folded into the seed (streams different from the first phase's), checkpoints
    and log in workdir/``subdir``."""
    workdir = self.workdir if subdir is None or self.workdir is None else os.path.join(self.workdir, subdir)
    return build(self.config, self.model, self.data, workdir, num_members=num_members or self.num_members,
                 sparse_training=sparse_training, schedule=schedule, epochs=epochs or self.epochs,
                 key_salt=self.key_salt if key_salt is None else key_salt, name=name or self.name,
                 log=None if self.workdir is not None else self.log.tagged(name) if name else self.log,
                 seeds=self.seeds, target=self.target, health=self.health)

  def member_probs(self, state: train_lib.TrainState, x) -> Any:
    """Member probabilities [S·M, N, K] of ``state``'s members on inputs x [N, ...] (in batches of
    config.eval_batch_size)."""
    return train_lib.predict_probs(self.predict, state, x, self.config.eval_batch_size, self.mesh)

  def init_members(self) -> train_lib.TrainState:
    """S·M freshly initialised members (`member_keys`), laid out on the run's mesh (abstractly, by
    `jax.eval_shape`, on a compile-only target)."""
    self.require_devices("initialise members", allow_abstract=True)
    return train_lib.init_member_states(self.model, self.tx, self.member_keys(), self.data.image_shape, self.mesh)

  def collection(self, name: str, ends: dict[int, int], **extra) -> collected.Collection:
    """Members collected during this run (snapshots, checkpoints, tickets): item k saved at the
    step ``ends`` maps to k, in workdir/``name`` (in memory without a workdir)."""
    return collected.Collection(None if self.workdir is None else os.path.join(self.workdir, name), ends, extra,
                                self.seeds)

  def ensemble(self, members: PyTree, weights=None, combine: str = "mean",
               apply: Callable | None = None) -> ensemble_lib.Ensemble:
    """The `Ensemble` of stacked ``members`` ({"params", "model_state"} [M, ...]) laid out on a
    mesh for their M, predicted with ``apply`` (default: the plain predictor for M members)."""
    m = members_lib.num_members(members["params"])
    execution = self.ensemble_execution(m)
    members = members_lib.place(members, execution.mesh, members_lib.MEMBER_AXIS)
    apply = apply or self.ensemble_predictor(m)
    return ensemble_lib.Ensemble(members["params"], members["model_state"], apply, self.data.image_shape,
                                 None if weights is None else tuple(float(w) for w in weights), combine,
                                 self.config.eval_batch_size, execution.mesh)

  def ensemble_execution(self, num_members: int) -> members_lib.Execution:
    """How an ensemble of ``num_members`` collected members runs: a mesh sized for its M."""
    return execution_for(self.config, self.model, num_members, input_shape=self.data.image_shape, target=self.target)

  def ensemble_predictor(self, num_members: int) -> Callable:
    """The plain jitted predictor of an ensemble of ``num_members`` members (`train.make_predict`)."""
    return train_lib.make_predict(self.model, execution=self.ensemble_execution(num_members), mean=self.data.mean,
                                  std=self.data.std, compute_dtype=self.compute_dtype)

  def flops(self, num_members: int, steps: int, densities: dict[str, float] | None = None,
            rule: str = "dense", gradient_updates: int = 0, trained_members: int | None = None,
            reference_epochs: int | None = None, extra_passes: float = 0.0) -> dict:
    """Inference FLOPs of ``num_members`` members and training FLOPs (DESIGN §5) of
    ``trained_members`` (default: the same) trained ``steps`` steps each at ``densities``
    (`flops.sparse_training_flops`), with ``gradient_updates`` RigL updates in all, plus
    ``extra_passes`` forward passes of one example through the (sparse) network that the algorithm
    needs besides training (e.g. CBNN's training-set predictions). Training also as a multiple of
    one dense model trained for ``reference_epochs`` (default: the configured epochs) -- x_dense.
    ``rule`` names the counting for the report."""
    batch = self.config.training.batch_size
    trained_members = trained_members or num_members
    reference_steps = (reference_epochs or self.config.training.epochs) * self.steps_per_epoch
    costs = flops_lib.layer_costs(self.model, self.data.image_shape)
    f_dense = flops_lib.forward_flops(costs)
    f_sparse = flops_lib.forward_flops(costs, densities)
    train = (flops_lib.sparse_training_flops(f_dense, f_sparse, trained_members * steps, batch, gradient_updates)
             + extra_passes * f_sparse)
    return {
        "forward_flops_dense": f_dense,
        "inference_flops": num_members * f_sparse,
        "inference_x_dense": num_members * f_sparse / f_dense,
        "train_flops": train,
        "train_x_dense": train / (reference_steps * batch * 3.0 * f_dense),
        "flops_rule": rule,
    }


def build(config: Any, model: nn.Module, data: data_lib.Dataset, workdir: str | None, *,
          num_members: int | None = None, sparse_training: bool = False, schedule: optax.Schedule | None = None,
          epochs: int | None = None, key_salt: int = 0, name: str | None = None,
          log: MetricsLog | None = None, seeds: tuple[int, ...] | None = None,
          target: targets.Target | None = None, health: health_lib.Monitor | None = None) -> Run:
  """The `Run` of ``model`` on ``data`` under a validated ``config`` (arguments: see `Run.phase`);
  ``seeds``: train these S seeds as members (default: the config's seed); ``target``: the devices
  it is built for (default: this process's, `targets.local`; a compile-only target for pre-flight);
  ``health``: the monitor the run's checks report to (default: a new one from the config)."""
  target = target or targets.local()
  m = num_members or config.num_members
  seeds = tuple(int(s) for s in seeds) if seeds else (int(config.seed),)
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct, got {seeds}.")
  t = config.training
  epochs = epochs or t.epochs
  steps_per_epoch = len(data.y_train) // t.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"config.training.batch_size ({t.batch_size}) exceeds the {len(data.y_train)} "
                     "training examples.")
  inner = train_lib.make_optimizer(t, epochs * steps_per_epoch, steps_per_epoch, schedule)
  tx = sparse.masked(inner) if sparse_training else inner
  try:
    execution = execution_for(config, model, len(seeds) * m, t.batch_size, data.image_shape, target)
  except ValueError as error:
    if len(seeds) == 1:
      raise
    raise ValueError(f"{error} (Seeds as members: num_members here is {len(seeds)} seeds x {m} members.)") from None
  init_keys, data_keys = [], []
  for seed in seeds:
    key = jax.random.PRNGKey(seed)
    init_key, data_key = jax.random.split(jax.random.fold_in(key, key_salt) if key_salt else key)
    init_keys.append(init_key)
    data_keys.append(jax.random.split(data_key, m))
  step_args = dict(execution=execution, mean=data.mean, std=data.std, **train_lib.gradient_options(config))
  train_step = train_lib.make_train_step(model, tx, **step_args)
  train_chunk = train_lib.make_train_chunk(model, tx, **step_args)
  batch_step = train_lib.make_batch_train_step(model, tx, **step_args)
  predict = train_lib.make_predict(model, execution=execution, mean=data.mean, std=data.std,
                                   compute_dtype=t.get("compute_dtype", "float32"))
  if workdir is not None:
    files.make_dirs(workdir)
    log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), tensorboard=bool(config.get("tensorboard", True)))
  phase_args = dict(sparse_training=sparse_training, schedule=schedule, epochs=epochs, key_salt=key_salt,
                    name=name)
  return Run(config, model, data, workdir, m, epochs, tx, execution, jnp.stack(init_keys), jnp.concatenate(data_keys),
             train_step, train_chunk, batch_step, predict, log or MetricsLog(None), name or config.method, key_salt,
             seeds, phase_args, target, health or health_lib.Monitor.from_config(config))


def execution_for(config: Any, model: nn.Module, num_members: int, batch_size: int | None = None,
                  input_shape: tuple[int, ...] | None = None,
                  target: targets.Target | None = None) -> members_lib.Execution:
  """How M = ``num_members`` members run on ``target``'s devices (default: this process's): the
  device mesh of ``config.mesh`` (checked: M and the batch sizes divide over it), the concrete
  member-execution mode for the target's platform and whether the model convolves
  (`members.has_convolutions` on inputs of ``input_shape``)."""
  target = target or targets.local()
  mesh_cfg = config.get("mesh") or {"members": 0, "data": 1}
  mesh = members_lib.make_mesh(mesh_cfg["members"], mesh_cfg["data"], devices=target.devices, num_members=num_members)
  members_lib.check_layout(mesh, num_members, batch_size, config.eval_batch_size)
  hosts = {d.process_index for d in target.devices}
  if len(hosts) > 1 and {d.process_index for d in mesh.devices.flat} != hosts:
    raise ValueError(f"On {len(hosts)} hosts every step must run on devices of each: {num_members} member(s) on "
                     f"mesh.members={mesh.shape[members_lib.MEMBER_AXIS]} x mesh.data={mesh.shape[members_lib.DATA_AXIS]}"
                     f" use {mesh.size} of the {target.num_devices} devices; set mesh.data (each member's batch split "
                     f"over more devices) so that the mesh spans all hosts.")
  has_conv = members_lib.has_convolutions(model, input_shape)
  mode = members_lib.resolve_execution(
      config.member_execution, has_conv, backend=target.platform, num_members=num_members,
      num_devices=mesh.shape[members_lib.MEMBER_AXIS], data_parallel=mesh.shape[members_lib.DATA_AXIS])
  return members_lib.Execution(mode, mesh, has_conv)


def stacked_members(state: train_lib.TrainState) -> dict:
  """The members of a train state as the tree `Run.ensemble` takes."""
  return {"params": state.params, "model_state": state.model_state}
