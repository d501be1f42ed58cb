"""The member axis: stacking, slicing and executing a per-member function for M members.

Every per-member quantity is a pytree whose leaves carry a leading axis of size M. A method writes
its step for one member; `member_map` lifts it to all members inside one compiled computation.

Execution modes (``member_map(fn, mode)``):
  * ``vmap``: `jax.vmap` -- one batched computation. Best on GPU/TPU and for matmul-only models.
  * ``loop``: the member function is traced once per member and the results are stacked, all in the
    same jitted program. On XLA:CPU a vmapped `conv` lowers to a grouped convolution that runs
    several times slower than M ordinary convolutions, so convolutional models loop there.
  * ``map``: `jax.lax.map` over members (one traced body, sequential loop at run time).
  * ``sharded``: the member axis is split over all devices with `jax.shard_map` (mesh axis
    ``members``); each device runs its M / n_devices members with the single-device rule below.
  * ``auto``: ``sharded`` when there are several devices and they divide M; otherwise ``vmap``,
    except on CPU for models with convolutions, where ``loop`` is used
    (measured in `benchmarks/member_throughput.py`, see README "Performance").
All modes compute the same function; tests check they agree.

Scale-out (`make_mesh`): a device mesh (``members`` x ``data``) on which the train step's arrays are
laid out (state split over members, each member's batch split over data) and XLA's SPMD partitioner
runs the same jitted step over all devices and hosts. With a ``data`` axis > 1 members execute by
``vmap`` (``sharded`` shards members only).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ensembles import targets

PyTree = Any

EXECUTION_MODES = ("auto", "vmap", "loop", "map", "sharded")
MEMBER_AXIS = "members"
DATA_AXIS = "data"


def stack(trees: Sequence[PyTree]) -> PyTree:
  """[tree_1, ..., tree_M] -> one tree with leaves of shape [M, ...]."""
  if not trees:
    raise ValueError("stack() needs at least one tree.")
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: PyTree) -> list[PyTree]:
  """Inverse of `stack`: a tree with leaves [M, ...] -> a list of M trees."""
  return [member(tree, i) for i in range(num_members(tree))]


def member(tree: PyTree, i: int) -> PyTree:
  """The i-th member of a stacked tree."""
  return jax.tree.map(lambda x: x[i], tree)


def num_members(tree: PyTree) -> int:
  """Size M of the leading member axis (all leaves must agree)."""
  sizes = {x.shape[0] for x in jax.tree.leaves(tree)}
  if len(sizes) != 1:
    raise ValueError(f"Leaves disagree on the member axis size: {sorted(sizes)}.")
  return sizes.pop()


def single_device_execution(has_conv: bool, backend: str | None = None, num_members: int | None = None) -> str:
  """The measured-best mode on one device: ``loop`` for conv models on CPU, else ``vmap``
  (benchmarks/member_throughput.py; README "Performance"). ``num_members`` is not used by the rule:
  for MLPs on CPU the ranking of vmap and loop at M = 2 flipped between runs."""
  del num_members
  backend = backend or jax.default_backend()
  return "loop" if (backend == "cpu" and has_conv) else "vmap"


def resolve_execution(mode: str, has_conv: bool, backend: str | None = None, num_members: int = 1,
                      num_devices: int | None = None, data_parallel: int = 1) -> str:
  """Turns ``auto`` into a concrete mode (see module docstring); checks ``sharded`` is possible.
  ``num_devices``: devices along the member axis (default: all); ``data_parallel``: the mesh's
  data axis (> 1 rules out ``sharded`` and makes ``auto`` pick ``vmap``)."""
  if mode not in EXECUTION_MODES:
    raise ValueError(f"member_execution must be one of {EXECUTION_MODES}, got {mode!r}.")
  if data_parallel > 1:
    if mode == "sharded":
      raise ValueError(f"member_execution='sharded' splits members only; with mesh.data={data_parallel} use "
                       "'auto' or 'vmap' (XLA partitions the vmapped step over members and data).")
    return "vmap" if mode == "auto" else mode
  num_devices = num_devices or jax.device_count()
  if mode == "sharded" and num_members % num_devices:
    raise ValueError(f"member_execution='sharded' needs num_members ({num_members}) divisible by the "
                     f"{num_devices} devices; change num_members or use another member_execution.")
  if mode != "auto":
    return mode
  if num_devices > 1 and num_members % num_devices == 0:
    return "sharded"
  return single_device_execution(has_conv, backend, num_members)


def make_mesh(members: int = 0, data: int = 1, devices=None, num_members: int | None = None) -> jax.sharding.Mesh:
  """A 2-D device mesh with axes (``members``, ``data``) over the first members·data of ``devices``
  (default: all devices, across hosts). ``members`` = 0 takes all devices // data, or with
  ``num_members`` = M the largest count <= devices // data that divides M.

  Members are split over the ``members`` axis; each member's batch is split over the ``data`` axis
  (data-parallel replicas of the member). The mesh axes are Auto: XLA's SPMD partitioner inserts
  the cross-device reductions (gradients and BatchNorm statistics over ``data``; nothing is ever
  reduced over ``members``, which is a vmapped axis).
  """
  devices = list(jax.devices() if devices is None else devices)
  if not (isinstance(data, int) and data >= 1):
    raise ValueError(f"mesh.data must be an integer >= 1, got {data!r}.")
  if not (isinstance(members, int) and members >= 0):
    raise ValueError(f"mesh.members must be an integer >= 0 (0 = all devices / mesh.data), got {members!r}.")
  if not members:
    room = max(len(devices) // data, 1)
    members = max(k for k in range(1, room + 1) if num_members is None or num_members % k == 0)
  if members * data > len(devices):
    raise ValueError(f"A mesh of mesh.members={members} x mesh.data={data} needs {members * data} devices; "
                     f"{len(devices)} are available.")
  return jax.sharding.Mesh(np.array(devices[: members * data]).reshape(members, data), (MEMBER_AXIS, DATA_AXIS))


def member_mesh(devices=None) -> jax.sharding.Mesh:
  """All ``devices`` (default: all) on the ``members`` axis (``data`` axis of size 1)."""
  return make_mesh(0, 1, devices)


def check_layout(mesh: jax.sharding.Mesh, num_members: int, batch_size: int | None = None,
                 eval_batch_size: int | None = None) -> None:
  """Clear errors when M or the batch sizes do not divide over the mesh (we do not pad: a padded
  member would train on nothing and change the step's cost silently)."""
  k, d = mesh.shape[MEMBER_AXIS], mesh.shape[DATA_AXIS]
  if num_members % k:
    raise ValueError(f"num_members ({num_members}) must be divisible by mesh.members ({k}); choose M as a "
                     f"multiple of {k} or set mesh.members to a divisor of {num_members}.")
  if batch_size is not None and batch_size % d:
    raise ValueError(f"training.batch_size ({batch_size}, per member) must be divisible by mesh.data ({d}).")
  if eval_batch_size is not None and eval_batch_size % d:
    raise ValueError(f"eval_batch_size ({eval_batch_size}) must be divisible by mesh.data ({d}).")


def is_distributed(mesh: jax.sharding.Mesh | None) -> bool:
  """True when ``mesh`` spans more than one device (arrays get shardings, XLA partitions the step)."""
  return mesh is not None and mesh.size > 1


def synchronous_steps(mesh: jax.sharding.Mesh | None) -> bool:
  """True on a multi-device CPU mesh, where the trainer waits for each step before dispatching the
  next. XLA:CPU runs the collectives of all its devices on one shared thread pool (as many threads
  as cores); with more devices than cores, several queued steps can block every thread in a
  rendezvous that the remaining devices never reach (measured: a deadlock after a few steps with 4
  forced host devices on 2 cores and the full Fashion-MNIST training set). Accelerators keep
  asynchronous dispatch."""
  return is_distributed(mesh) and mesh.devices.flat[0].platform == "cpu"


def to_host(tree: PyTree) -> PyTree:
  """Numpy copies of ``tree``'s leaves; arrays spread over several hosts are gathered first
  (`multihost_utils.process_allgather`), so every process reads the whole value."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(one, tree)


def sharding(mesh: jax.sharding.Mesh, *axes: str | None) -> jax.sharding.NamedSharding:
  """NamedSharding over ``mesh`` splitting leading dimensions by ``axes`` (none: replicated)."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*axes))


def constrain(tree: PyTree, mesh: jax.sharding.Mesh | None, *axes: str | None) -> PyTree:
  """Inside jit: every leaf laid out as `sharding`(mesh, *axes); identity without a distributed mesh."""
  if not is_distributed(mesh):
    return tree
  return jax.lax.with_sharding_constraint(tree, sharding(mesh, *axes))


def place(tree: PyTree, mesh: jax.sharding.Mesh | None, *axes: str | None) -> PyTree:
  """Arrays (host, one device, or global with another layout) laid out as `sharding`(mesh, *axes);
  leaves already laid out so are kept. Host arrays become global arrays of which each process builds
  only its own devices' shards (`jax.make_array_from_callback`: per-host input, also across hosts).
  Without a distributed mesh: `jax.device_put`."""
  if not is_distributed(mesh):
    return jax.device_put(tree)
  target = sharding(mesh, *axes)

  def one(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(target, x.ndim):
      return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, target)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, target, lambda index: x[index])

  return jax.tree.map(one, tree)


def member_map(fn: Callable[..., PyTree], mode: str, *, has_conv: bool = False,
               mesh: jax.sharding.Mesh | None = None, num_shared: int = 0) -> Callable[..., PyTree]:
  """Lifts ``fn`` (written for one member) to stacked arguments with a leading member axis.

  The first positional arguments are stacked trees with the same M; the last ``num_shared`` are
  shared by all members (e.g. the training set) and passed to every member unchanged. Outputs are
  stacked. ``mode`` is a concrete mode (use `resolve_execution` for ``auto``). For ``sharded``,
  ``mesh`` (default: all devices) must have a ``members`` axis, shared arguments are replicated on
  it, and ``has_conv`` picks the per-device mode.
  """

  def split(args):
    cut = len(args) - num_shared
    return args[:cut], args[cut:]

  if mode == "vmap":
    return lambda *args: jax.vmap(fn, in_axes=(0,) * (len(args) - num_shared) + (None,) * num_shared)(*args)
  if mode == "map":

    def mapped(*args):
      stacked, shared = split(args)
      return jax.lax.map(lambda a: fn(*a, *shared), stacked)

    return mapped
  if mode == "loop":

    def looped(*args):
      stacked, shared = split(args)
      return stack([fn(*member(stacked, i), *shared) for i in range(num_members(stacked))])

    return looped
  if mode == "sharded":
    mesh = mesh or member_mesh()
    inner = member_map(fn, single_device_execution(has_conv, mesh.devices.flat[0].platform), num_shared=num_shared)
    spec, replicated = jax.sharding.PartitionSpec(MEMBER_AXIS), jax.sharding.PartitionSpec()

    def sharded(*args):
      # shared arguments enter as explicit replicated inputs: closed over, they would carry the
      # outer (Auto) mesh into the shard_map body and fail there
      in_specs = (spec,) * (len(args) - num_shared) + (replicated,) * num_shared
      return jax.shard_map(inner, mesh=mesh, in_specs=in_specs, out_specs=spec, check_vma=False)(*args)

    return sharded
  raise ValueError(f"member_map needs a concrete mode from {EXECUTION_MODES[1:]}, got {mode!r}.")


@dataclasses.dataclass(frozen=True)
class Execution:
  """How the members of a run execute, carried as one value to every jitted function of the run
  (train step, prediction, topology updates), so none can use another mode or mesh.

  mode: a concrete mode (`resolve_execution`); mesh: the run's device mesh (None: one device);
  has_conv: the model has convolutions (picks the per-device mode of ``sharded``).
  """

  mode: str
  mesh: jax.sharding.Mesh | None = None
  has_conv: bool = False

  def __post_init__(self):
    if self.mode not in EXECUTION_MODES[1:]:
      raise ValueError(f"Execution needs a concrete mode from {EXECUTION_MODES[1:]}, got {self.mode!r}.")

  @property
  def platform(self) -> str:
    """The platform the members run on: the mesh's devices' (the host's default without a mesh)."""
    return self.mesh.devices.flat[0].platform if self.mesh is not None else jax.default_backend()

  def map(self, fn: Callable[..., PyTree], num_shared: int = 0) -> Callable[..., PyTree]:
    """`member_map` of ``fn`` with this execution's mode, mesh and conv flag; ``fn`` is traced in
    the mesh's `targets.platform_scope` (so e.g. `layers.Conv(impl="auto")` lowers as the target's
    platform wants, also when compiling for a TPU from a CPU host)."""
    platform = self.platform

    def on_target(*args):
      with targets.platform_scope(platform):
        return fn(*args)

    return member_map(on_target, self.mode, has_conv=self.has_conv, mesh=self.mesh, num_shared=num_shared)



def has_convolutions(model: Any, input_shape: tuple[int, ...] | None = None) -> bool:
  """Whether ``model`` convolves (this picks the member execution on CPU): its ``has_conv``
  attribute where it declares one; otherwise read from its traced initialisation on one example
  of ``input_shape`` (a ``conv_general_dilated`` anywhere in the jaxpr), so a user's own Flax model
  needs no flag. False when neither is available."""
  declared = getattr(model, "has_conv", None)
  if declared is not None or input_shape is None:
    return bool(declared)
  init = lambda x: model.init(jax.random.PRNGKey(0), x, train=False)
  return "conv_general_dilated" in str(jax.make_jaxpr(init)(jnp.zeros((1, *input_shape), jnp.float32)))


def as_execution(execution: "str | Execution", model: Any = None) -> Execution:
  """``execution`` as an `Execution` (a concrete mode name gets no mesh and ``model``'s conv flag)."""
  if isinstance(execution, Execution):
    return execution
  return Execution(execution, None, has_convolutions(model))
