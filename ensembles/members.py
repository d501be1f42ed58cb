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
    except on CPU for models with convolutions, where ``loop`` is used (measured in
    `benchmarks/member_throughput.py`, see README "Performance").
All modes compute the same function; tests check they agree.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

EXECUTION_MODES = ("auto", "vmap", "loop", "map", "sharded")
MEMBER_AXIS = "members"


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


def single_device_execution(has_conv: bool, backend: str | None = None) -> str:
  """The measured-best mode on one device: ``loop`` for conv models on CPU, else ``vmap``."""
  backend = backend or jax.default_backend()
  return "loop" if (backend == "cpu" and has_conv) else "vmap"


def resolve_execution(mode: str, has_conv: bool, backend: str | None = None, num_members: int = 1,
                      num_devices: int | None = None) -> str:
  """Turns ``auto`` into a concrete mode (see module docstring); checks ``sharded`` is possible."""
  if mode not in EXECUTION_MODES:
    raise ValueError(f"member_execution must be one of {EXECUTION_MODES}, got {mode!r}.")
  num_devices = num_devices or jax.device_count()
  if mode == "sharded" and num_members % num_devices:
    raise ValueError(f"member_execution='sharded' needs num_members ({num_members}) divisible by the "
                     f"{num_devices} devices; change num_members or use another member_execution.")
  if mode != "auto":
    return mode
  if num_devices > 1 and num_members % num_devices == 0:
    return "sharded"
  return single_device_execution(has_conv, backend)


def member_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over ``devices`` (default: all) with the axis ``members``."""
  devices = np.array(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(devices, (MEMBER_AXIS,))


def member_map(fn: Callable[..., PyTree], mode: str, *, has_conv: bool = False,
               mesh: jax.sharding.Mesh | None = None) -> Callable[..., PyTree]:
  """Lifts ``fn`` (written for one member) to stacked arguments with a leading member axis.

  All positional arguments must be stacked trees with the same M; outputs are stacked.
  ``mode`` is a concrete mode (use `resolve_execution` for ``auto``). For ``sharded``, ``mesh``
  (default: all devices) must have a ``members`` axis, and ``has_conv`` picks the per-device mode.
  """
  if mode == "vmap":
    return jax.vmap(fn)
  if mode == "map":
    return lambda *args: jax.lax.map(lambda a: fn(*a), args)
  if mode == "loop":

    def looped(*args):
      m = num_members(args)
      return stack([fn(*member(args, i)) for i in range(m)])

    return looped
  if mode == "sharded":
    mesh = mesh or member_mesh()
    inner = member_map(fn, single_device_execution(has_conv, mesh.devices.flat[0].platform))
    spec = jax.sharding.PartitionSpec(MEMBER_AXIS)
    return jax.shard_map(inner, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
  raise ValueError(f"member_map needs a concrete mode from {EXECUTION_MODES[1:]}, got {mode!r}.")
