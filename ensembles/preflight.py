"""Pre-flight: compile every program a run will execute for its target, without data or devices.

A run is built as usual (`context.build`, the same step factories the trainer uses) on a target's
devices (`targets.named`: compile-only TPU or GPU devices; or this host's), with its dataset as
shapes only (`data.abstract_dataset`) and its states abstract (`jax.eval_shape` of the same
initialisation the recipe calls). Each program is lowered with abstract arguments laid out as the
trainer lays them out (`members.place`: state over ``members``, batches over ``members`` x
``data``, the in-memory training set replicated) and compiled. What is read is the compiler's:

* memory per device (`Compiled.memory_analysis`): argument, output, aliased (donated), temporary
  and code bytes; total = argument + output − alias + temporary + code, against the device's
  memory. A TPU program over its HBM does not compile (RESOURCE_EXHAUSTED): the bytes it asked for
  are read from the message.
* FLOPs per device (`Compiled.cost_analysis`; for GPU targets, whose plugin has none, XLA's
  HloCostAnalysis of the lowered program: `xla_flops`) against our counter (`flops.layer_costs`: 3 x the dense
  forward FLOPs of every trained row, 1 x for prediction), divided over the devices. A train chunk's
  loop body is counted once, i.e. per step.
* collectives (all-reduce, all-gather, reduce-scatter, collective-permute, all-to-all ops in the
  optimised HLO) and the time to lower and compile here.

Which programs a method executes is declared next to its recipe (``Method.programs``: its phases'
runs, their train step and validation prediction, the topology update, the boosting pass, the
collected members' evaluation, SWA's BatchNorm pass) from the same factories the recipe uses.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import pickle
import re
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ensembles import data as data_lib
from ensembles import flops as flops_lib
from ensembles import hardware
from ensembles import members as members_lib
from ensembles import streaming
from ensembles import targets as targets_lib
from ensembles import train as train_lib
from ensembles import trainer
from ensembles.context import Run
from ensembles.models import multi_member

PyTree = Any
MEMBERS, DATA = members_lib.MEMBER_AXIS, members_lib.DATA_AXIS
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_COLLECTIVE_OP = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")  # an instruction's opcode
_HBM_MESSAGE = re.compile(r"required for [^(]*\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)")


@dataclasses.dataclass(frozen=True)
class Program:
  """One jitted program of a run: ``jitted`` (a `jax.jit` function) and the abstract ``args`` it is
  called with; ``model_flops``: our counter's FLOPs of one call over all devices (None: not
  counted); ``mesh``: the mesh it runs on (its devices share its work)."""

  name: str
  jitted: Callable
  args: tuple
  mesh: jax.sharding.Mesh
  model_flops: float | None = None


def abstract(tree: PyTree, mesh: jax.sharding.Mesh, *axes: str | None) -> PyTree:
  """Shapes and dtypes of ``tree``'s leaves (arrays or `jax.ShapeDtypeStruct`s) laid out as
  `members.sharding`(mesh, *axes): what `members.place` would make of them."""
  sharding = members_lib.sharding(mesh, *axes)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding), tree)


def abstract_state(run: Run, prepare: Callable[[], train_lib.TrainState]) -> train_lib.TrainState:
  """The state ``prepare()`` builds (e.g. `Run.init_members`), abstract, laid out over the run's
  ``members`` axis as the trainer places it."""
  return abstract(jax.eval_shape(prepare), run.mesh, MEMBERS)


def forward_flops(run: Run) -> float:
  """Dense forward FLOPs of one example through the run's network, all its member rows included."""
  f = flops_lib.forward_flops(flops_lib.layer_costs(run.model, run.data.image_shape))
  return f * multi_member.rows_per_example(run.model)


def train_batch(run: Run) -> train_lib.Batch:
  """One step's abstract `train.Batch` [S·M, B, ...] over ``members`` x ``data``."""
  shape = (run.total_members, run.config.training.batch_size)
  images = jax.ShapeDtypeStruct((*shape, *run.data.image_shape), run.data.x_train.dtype)
  return abstract(train_lib.Batch(images, jax.ShapeDtypeStruct(shape, jnp.int32),
                                  jax.ShapeDtypeStruct(shape, jnp.int32)), run.mesh, MEMBERS, DATA)


def eval_images(run: Run, mesh: jax.sharding.Mesh) -> jax.ShapeDtypeStruct:
  """One evaluation batch [eval_batch_size, H, W, C] split over ``mesh``'s ``data`` axis
  (`train.evaluation_batch`)."""
  shape = (run.config.eval_batch_size, *run.data.image_shape)
  return abstract(jax.ShapeDtypeStruct(shape, run.data.x_train.dtype), mesh, DATA)


def scalar(dtype=jnp.int32, mesh: jax.sharding.Mesh | None = None) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((), dtype, sharding=None if mesh is None else members_lib.sharding(mesh))


class Plan:
  """The programs of one run, in the order a method declares them (``Method.programs``)."""

  def __init__(self):
    self.programs: list[Program] = []

  def add(self, name: str, jitted: Callable, args: tuple, mesh: jax.sharding.Mesh,
          model_flops: float | None = None) -> None:
    self.programs.append(Program(name, jitted, tuple(args), mesh, model_flops))

  def training(self, run: Run, state: train_lib.TrainState, label: str = "") -> None:
    """A phase's programs: the members' initialisation, the train program the trainer dispatches
    on this target (`trainer.train_program`) and the validation prediction."""
    prefix = f"{label} " if label else ""
    t = run.config.training
    keys = abstract(jax.ShapeDtypeStruct((run.total_members, 2), jnp.uint32), run.mesh, MEMBERS)
    init = train_lib.make_init(run.model, run.tx, run.data.image_shape, run.mesh)
    self.add(prefix + "init", init, (keys,), run.mesh)
    kind = trainer.train_program(run)
    flops = 3.0 * forward_flops(run) * run.total_members * t.batch_size
    if kind == "batch_step":
      self.add(prefix + "train step (streamed batch)", run.batch_step, (state, train_batch(run)), run.mesh, flops)
    else:
      n = len(run.data.y_train)
      images = abstract(jax.ShapeDtypeStruct((n, *run.data.image_shape), run.data.x_train.dtype), run.mesh)
      labels = abstract(jax.ShapeDtypeStruct((n,), jnp.int32), run.mesh)
      if kind == "train_step":
        idx = abstract(jax.ShapeDtypeStruct((run.total_members, t.batch_size), jnp.int32), run.mesh, MEMBERS, DATA)
        self.add(prefix + "train step", run.train_step, (state, images, labels, idx), run.mesh, flops)
      else:
        order = abstract(jax.ShapeDtypeStruct((run.total_members, run.steps_per_epoch, t.batch_size), jnp.int32),
                         run.mesh, MEMBERS, None, DATA)
        self.add(prefix + "train chunk (per step)", run.train_chunk,
                 (state, images, labels, order, scalar(mesh=run.mesh), scalar(mesh=run.mesh)), run.mesh, flops)
    if len(run.data.y_val):
      self.prediction(run, state, prefix + "validation prediction", run.predict, run.mesh)

  def prediction(self, run: Run, members: Any, name: str, apply: Callable, mesh: jax.sharding.Mesh,
                 passes: int = 1) -> None:
    """``apply(params, model_state, images)`` of stacked ``members`` (a state or {"params",
    "model_state"}; abstract) on one evaluation batch; ``passes`` forward passes per member."""
    params, model_state = (members.params, members.model_state) if hasattr(members, "params") else (
        members["params"], members["model_state"])
    params, model_state = abstract((params, model_state), mesh, MEMBERS)
    m = members_lib.num_members(params)
    flops = forward_flops(run) * m * passes * run.config.eval_batch_size
    self.add(name, apply, (params, model_state, eval_images(run, mesh)), mesh, flops)

  def one_network(self, run: Run, num_members: int, prepare: Callable | None = None, apply: Callable | None = None,
                  passes: int = 1) -> train_lib.TrainState:
    """A phase training ``run``'s networks (``prepare``: its state, default `Run.init_members`),
    then the evaluation of ``num_members`` collected members; returns the abstract state."""
    state = abstract_state(run, prepare or run.init_members)
    self.training(run, state)
    self.ensemble(run, state, num_members, apply, passes=passes)
    return state

  def topology_update(self, run: Run, state: train_lib.TrainState, update: Callable, by_gradient: bool | None) -> None:
    """A sparse method's prune-and-grow (`sparse_common.make_topology_update`): its one compiled
    program, with a batch's gradient where growth may be by gradient."""
    flag = None if by_gradient is None else scalar(jnp.bool_, run.mesh)
    flops = 3.0 * forward_flops(run) * run.total_members * run.config.training.batch_size
    self.add("topology update", update.jitted, (state, train_batch(run), scalar(jnp.float32, run.mesh), flag),
             run.mesh, flops if (by_gradient is None or by_gradient) else None)

  def reweighting(self, run: Run, state: train_lib.TrainState, reweight: Callable) -> None:
    """Boosting's reweighting (`cbnn.make_reweight`) of the [S, N] sample weights from the
    training-set predictions [S, N, K] (those run by the validation prediction program, batch after
    batch)."""
    weights = state.extra["sample_weights"]
    n, k = weights.shape[1], run.data.num_classes
    probs = abstract(jax.ShapeDtypeStruct((run.num_seeds, n, k), jnp.float32), run.mesh)
    labels = abstract(jax.ShapeDtypeStruct((n,), jnp.int32), run.mesh)
    self.add("boosting reweighting", reweight, (weights, probs, labels), run.mesh)

  def ensemble(self, run: Run, state: train_lib.TrainState, num_members: int, apply: Callable | None = None,
               name: str = "ensemble evaluation", passes: int = 1) -> None:
    """The evaluation of the collected ensemble of ``num_members`` members of ``state``'s network
    (per seed: evaluation runs seed by seed), on its own mesh (`Run.ensemble_execution`)."""
    execution = run.ensemble_execution(num_members)
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct((num_members, *x.shape[1:]), x.dtype),
                        {"params": state.params, "model_state": state.model_state})
    self.prediction(run, like, name, apply or run.ensemble_predictor(num_members), execution.mesh, passes)


def plan_for(method: Any, run: Run, options: Any) -> Plan:
  """The method's programs on ``run`` (``Method.programs``; default: one phase, the run itself,
  and the evaluation of its M members)."""
  plan = Plan()
  if method.programs is not None:
    method.programs(run, options, plan)
    return plan
  state = abstract_state(run, run.init_members)
  plan.training(run, state)
  plan.ensemble(run, state, run.num_members)
  return plan


@dataclasses.dataclass
class Result:
  """What the compiler says of one program (bytes per device; FLOPs per device)."""

  name: str
  fits: bool
  memory_bytes: float | None = None
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  code_bytes: int = 0
  device_bytes: float | None = None
  xla_flops: float | None = None
  model_flops: float | None = None
  collectives: int = 0
  lower_s: float = 0.0
  compile_s: float = 0.0
  error: str = ""
  saved: str = ""
  cached: bool = False  # read from the cache (`compile_program`), not compiled by this call

  @property
  def flops_ratio(self) -> float | None:
    if not self.xla_flops or not self.model_flops:
      return None
    return self.xla_flops / self.model_flops

  def as_dict(self) -> dict:
    return {**dataclasses.asdict(self), "flops_ratio": self.flops_ratio}


def _bytes(number: str, unit: str) -> float:
  return float(number) * 1024 ** "BKMGT".index(unit or "B")


def xla_flops(compiled: Any, lowered: Any, platform: str, devices: int) -> float | None:
  """FLOPs per device of a compiled program: its cost analysis. The CUDA plugin has none, and in the
  GPU-optimised module matmuls and convolutions are library calls that XLA's HloCostAnalysis does
  not count; for GPU targets it is XLA's HloCostAnalysis of the lowered program (before partitioning
  and fusion; run by the host's CPU client), divided by the devices."""
  if platform == "gpu":
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
    module = lowered.compiler_ir("hlo").get_hlo_module()
    cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
    return None if not cost or "flops" not in cost else float(cost["flops"]) / devices
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return None if not cost or "flops" not in cost else float(cost["flops"])


def count_collectives(hlo_text: str) -> int:
  """Collective operations in an optimised HLO module's text (async pairs counted once)."""
  return sum(1 for line in hlo_text.splitlines() if _COLLECTIVE_OP.search(line))


def compiler_versions() -> list[str]:
  """jax and the installed TPU and GPU compilers' versions (part of a cached result's key)."""
  versions = [jax.__version__]
  for package in ("libtpu", "jax-cuda12-plugin"):
    try:
      versions.append(importlib.metadata.version(package))
    except importlib.metadata.PackageNotFoundError:
      versions.append("-")
  return versions


def compile_program(program: Program, target: targets_lib.Target, save_dir: str | None = None,
                    cache_dir: str | None = None) -> Result:
  """Lowers and compiles ``program`` for ``target``; its `Result` (``fits`` False with the bytes
  it asked for when the compiler refuses it for lack of memory). With ``cache_dir`` the result is
  kept under a hash of the lowered program (its StableHLO text, shardings included), the target and
  the compiler versions, and read back instead of compiling the same program again."""
  devices = program.mesh.size
  per_device_flops = None if program.model_flops is None else program.model_flops / devices
  result = Result(program.name, True, device_bytes=target.memory_bytes(), model_flops=per_device_flops)
  start = time.perf_counter()
  lowered = program.jitted.lower(*program.args)
  result.lower_s = time.perf_counter() - start
  cache_file = None
  if cache_dir and not save_dir:
    key = hashlib.sha256(json.dumps([lowered.as_text(), target.name, compiler_versions()]).encode()).hexdigest()
    cache_file = os.path.join(cache_dir, f"{key[:24]}.json")
    if os.path.exists(cache_file):
      with open(cache_file) as f:
        cached = json.load(f)
      return dataclasses.replace(Result(**cached), name=program.name, model_flops=per_device_flops, cached=True)
  result = _compiled(lowered, result, target, save_dir, program.name, devices)
  if cache_file:
    os.makedirs(cache_dir, exist_ok=True)
    with open(cache_file + ".tmp", "w") as f:
      json.dump(dataclasses.asdict(result), f)
    os.replace(cache_file + ".tmp", cache_file)
  return result


def _compiled(lowered: Any, result: Result, target: targets_lib.Target, save_dir: str | None, name: str,
              devices: int) -> Result:
  """``result`` filled from compiling ``lowered`` (see `compile_program`)."""
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as err:  # noqa: BLE001  (XLA's RESOURCE_EXHAUSTED carries the sizes)
    result.compile_s = time.perf_counter() - start
    match = _HBM_MESSAGE.search(str(err))
    if "RESOURCE_EXHAUSTED" not in str(err) or match is None:
      raise
    result.fits, result.error = False, str(err).splitlines()[0][:300]
    result.memory_bytes = _bytes(*match.group(1, 2))
    result.device_bytes = _bytes(*match.group(3, 4))
    return result
  result.compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  if memory is not None:
    result.argument_bytes = int(memory.argument_size_in_bytes)
    result.output_bytes = int(memory.output_size_in_bytes)
    result.alias_bytes = int(memory.alias_size_in_bytes)
    result.temp_bytes = int(memory.temp_size_in_bytes)
    result.code_bytes = int(memory.generated_code_size_in_bytes)
    result.memory_bytes = float(result.argument_bytes + result.output_bytes - result.alias_bytes
                                + result.temp_bytes + result.code_bytes)
    if result.device_bytes:
      result.fits = result.memory_bytes <= result.device_bytes
  result.xla_flops = xla_flops(compiled, lowered, target.platform, devices)
  result.collectives = count_collectives(compiled.as_text() or "")
  if save_dir:
    result.saved = save_compiled(compiled, save_dir, name)
  return result


def save_compiled(compiled: Any, directory: str, name: str) -> str:
  """Serialises a compiled program (`jax.experimental.serialize_executable`) to
  directory/<name>.xla; `load_compiled` reads it back on a host of the target."""
  from jax.experimental import serialize_executable  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, re.sub(r"[^\w.-]+", "_", name) + ".xla")
  with open(path, "wb") as f:
    pickle.dump(serialize_executable.serialize(compiled), f)
  return path


def load_compiled(path: str, backend: Any = None) -> Callable:
  """A program saved by `save_compiled`, loaded for this host's devices (the target's: same jax
  and plugin versions): call it with the arguments it was compiled for."""
  from jax.experimental import serialize_executable  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    payload, in_tree, out_tree = pickle.load(f)
  return serialize_executable.deserialize_and_load(payload, in_tree, out_tree, backend=backend)


def check_mesh(run: Run, target: targets_lib.Target) -> None:
  """One clear line when the run's mesh leaves devices of the target idle."""
  used, total = run.mesh.size, target.num_devices
  if used == total:
    return
  shape, m, batch = dict(run.mesh.shape), run.total_members, run.config.training.batch_size
  layouts = [(k, total // k) for k in range(1, total + 1) if total % k == 0 and m % k == 0 and batch % (total // k) == 0]
  fix = (f"e.g. --config.mesh.members={layouts[-1][0]} --config.mesh.data={layouts[-1][1]}" if layouts else
         f"no layout of {total} devices divides {m} members and the batch of {batch}: change num_members or "
         "training.batch_size")
  raise targets_lib.TargetError(
      f"target {target.name} has {total} devices; the run's mesh (mesh.members={shape[MEMBERS]} x mesh.data="
      f"{shape[DATA]}) uses {used}: set mesh.members x mesh.data = {total} with members dividing the {m} members "
      f"and data the batch of {batch} ({fix}).")


def per_device_bytes(tree: PyTree) -> float:
  """Bytes one device holds of an abstract tree laid out by its shardings."""
  total = 0.0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
    total += float(np.prod(shape)) * np.dtype(x.dtype).itemsize
  return total


def fit_advice(run: Run, results: Sequence[Result], state: PyTree | None = None) -> list[str]:
  """Fields that would make the programs that do not fit fit, with what each changes (``state``:
  the train state, abstract, whose per-device size is given)."""
  if all(r.fits for r in results):
    return []
  c, t = run.config, run.config.training
  advice = []
  if state is not None:
    advice.append(f"a smaller model: the members' parameters and optimizer state alone take "
                  f"{per_device_bytes(state) / 2**30:.2f} GiB per device")
  shape = dict(run.mesh.shape)
  if t.batch_size % 2 == 0:
    advice.append(f"--config.training.batch_size={t.batch_size // 2} (per member; activations scale with it)")
  if t.batch_size % (2 * shape[DATA]) == 0 and shape[MEMBERS] > 1:
    advice.append(f"--config.mesh.members={shape[MEMBERS] // 2} --config.mesh.data={shape[DATA] * 2} (each member's batch over more "
                  "devices: fewer members' activations per device, the members' states on more devices)")
  if t.get("compute_dtype", "float32") == "float32":
    advice.append("--config.training.compute_dtype=bfloat16 (activations in half the bytes)")
  if c.model.get("remat") == "none":
    advice.append("--config.model.remat=dots (each block's normalisations and activations recomputed in the "
                  "backward pass: elementwise work only)")
    advice.append("--config.model.remat=blocks (each block's forward pass recomputed: about 1/3 more FLOPs)")
  if not streaming.is_streamed(run.data.x_train):
    size = getattr(run.data.x_train, "nbytes", 0)
    advice.append(f"--config.dataset.input=stream (the in-memory training set, {size / 2**30:.2f} GiB, is replicated on "
                  "every device)")
  return advice


def step_time_at_peak(result: Result, target: targets_lib.Target, compute_dtype: str) -> float | None:
  """ESTIMATE: seconds of one call at the chip's datasheet peak (`hardware.peak_flops`): XLA's
  FLOPs per device / peak. A lower bound: no chip reaches its peak."""
  peak = hardware.peak_flops(target.devices[0], compute_dtype)
  if peak is None or not result.xla_flops:
    return None
  return result.xla_flops / peak


def run_for(config: Any, target: targets_lib.Target, model: Any = None) -> tuple[Run, Any, Any]:
  """(the run of ``config`` on ``target`` with its dataset as shapes, its method, its options):
  the config's named model (or ``model``) wrapped as the method trains it."""
  from ensembles import api  # pylint: disable=g-import-not-at-top  (api imports this module's users)
  from ensembles import context  # pylint: disable=g-import-not-at-top
  from ensembles.methods import get_method  # pylint: disable=g-import-not-at-top
  data = data_lib.abstract_dataset(config.dataset)
  method = get_method(config.method)
  network = api.network_for(config, model if model is not None else api.build_model(config, data))
  run = context.build(config, network, data, None, target=target)
  return run, method, method.read_options(config)


def preflight(config: Any, target: targets_lib.Target, *, model: Any = None, save_dir: str | None = None,
              cache_dir: str | None = None, on_result: Callable[[Run, Result], None] | None = None
              ) -> tuple[Run, list[Result]]:
  """Compiles every program of ``config``'s run for ``target`` (`compile_program`); returns the run
  and one `Result` per program; ``on_result(run, result)`` is called after each."""
  run, method, options = run_for(config, target, model)
  check_mesh(run, target)
  results = []
  for program in plan_for(method, run, options).programs:
    result = compile_program(program, target, save_dir, cache_dir)
    results.append(result)
    if on_result is not None:
      on_result(run, result)
  return run, results


def gib(x: float | None) -> str:
  return "-" if x is None else f"{x / 2**30:.3g}"


def describe(result: Result) -> str:
  """One line of a program's result."""
  if result.error:
    return (f"{result.name}: needs {gib(result.memory_bytes)} of {gib(result.device_bytes)} GiB per device: DOES NOT "
            f"FIT (the compiler refused it); {result.lower_s + result.compile_s:.1f} s")
  ratio = result.flops_ratio
  flops = "-" if result.xla_flops is None else f"{result.xla_flops:.3g}"
  ours = "-" if result.model_flops is None else f"{result.model_flops:.3g}"
  fits = "fits" if result.fits else "DOES NOT FIT"
  return (f"{result.name}: {gib(result.memory_bytes)} of {gib(result.device_bytes)} GiB per device ({fits}; "
          f"argument {gib(result.argument_bytes)}, output {gib(result.output_bytes)}, aliased "
          f"{gib(result.alias_bytes)}, temporary {gib(result.temp_bytes)}, code {gib(result.code_bytes)}); "
          f"XLA FLOPs/device {flops} vs ours {ours}" + ("" if ratio is None else f" ({ratio:.3f}x)") +
          f"; {result.collectives} collectives; compiled in {result.lower_s + result.compile_s:.1f} s" +
          (" (cached)" if result.cached else ""))
