"""Targets: the device set a run is built for, as one value.

A `Target` carries what the run's choices depend on: the platform (``cpu``, ``gpu``, ``tpu``),
the devices (this process's ``jax.devices()``, all hosts' after `jax.distributed.initialize`, or a
topology's compile-only devices), each device's memory and its peak FLOP/s. `context.build` takes
one (default: `local`), and every backend-dependent choice below it reads the target, never the
host's backend: the device mesh, the member execution mode, `layers.Conv(impl="auto")` (through
`platform_scope`, which `members.Execution.map` sets while a step is traced), the memory a step may
use (`memory.seeds_fit`) and the logged MFU.

Named targets (`TARGETS`, `named`) are compile-only device sets for pre-flight
(`ensembles.preflight`): TPU slices from libtpu's topology descriptions (the arguments per slice are
the ones MaxText's ``accelerator_to_spec_map.py`` lists) and GPU hosts from the CUDA plugin with a
description of the card. Nothing can run on them; programs are lowered and compiled, and XLA's
memory and cost analyses read.

Memory per device: for TPUs what XLA's compiler reports as available (libtpu 0.0.42.1: the figure
in its RESOURCE_EXHAUSTED message, measured 2026-12-07); for GPUs the share of the card's memory
that JAX's allocator takes by default (75%; XLA_PYTHON_CLIENT_MEM_FRACTION changes it), because a
GPU compilation does not fail when a program exceeds the card.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib.util
import os
from typing import Any, Sequence

import jax

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class TopologySpec:
  """How to build a named target's compile-only devices. TPU: libtpu's ``topology`` name (e.g.
  ``v5e:4x4``), ``chip_config`` (``default``, or ``megacore`` where one device is a chip's two
  cores), chips per host and wrap-around links; GPU: ``gpus`` per host and ``hosts``, with the card
  (``card``, a key of `GPU_CARDS`). ``hbm_gib``: usable memory per device."""

  platform: str
  hbm_gib: float
  topology: str = ""
  chip_config: str = "default"
  chips_per_host: tuple[int, int, int] = (2, 2, 1)
  wrap: tuple[bool, bool, bool] = (False, False, False)
  card: str = ""
  gpus: int = 0
  hosts: int = 1


def _tpu(topology: str, hbm_gib: float, chip_config: str = "default", wrap=(False, False, False)) -> TopologySpec:
  chips_per_host = (1, 1, 1) if topology.endswith(":1x1") else (2, 2, 1)
  return TopologySpec("tpu", hbm_gib, topology, chip_config, chips_per_host, tuple(wrap))


# The cards' descriptions the CUDA plugin compiles for (a stream_executor GpuTargetConfigProto):
# the values of XLA's own specs (xla/backends/gpu/target_config/specs: h100_sxm, a100_sxm_80).
_GPU_LIMITS = dict(threads_per_block_limit=1024, threads_per_warp=32, shared_memory_per_block=49152,
                   threads_per_core_limit=2048, block_dim_limit_x=2147483647, block_dim_limit_y=65535,
                   block_dim_limit_z=65535, thread_dim_limit_x=1024, thread_dim_limit_y=1024, thread_dim_limit_z=64,
                   registers_per_core_limit=65536, registers_per_block_limit=65536)
GPU_CARDS: dict[str, dict] = {
    "h100": dict(name="NVIDIA H100 80GB HBM3", capability="major: 9 feature_extension: ACCELERATED_FEATURES",
                 core_count=132, fpus_per_core=128, shared_memory_per_core=233472, shared_memory_per_block_optin=232448,
                 memory_bandwidth=3352320000000, l2_cache_size=52428800, clock_rate_ghz=1.98,
                 device_memory_size=84942979072),
    "a100": dict(name="NVIDIA A100-SXM4-80GB", capability="major: 8 minor: 0", core_count=108, fpus_per_core=64,
                 shared_memory_per_core=167936, shared_memory_per_block_optin=166912, memory_bandwidth=2039040000000,
                 l2_cache_size=41943040, clock_rate_ghz=1.41, device_memory_size=85100068864),
}
GPU_MEMORY_FRACTION = 0.75  # of a card's memory that JAX's allocator takes by default (XLA_PYTHON_CLIENT_MEM_FRACTION)


def _gpu(card: str, gpus: int) -> TopologySpec:
  return TopologySpec("gpu", GPU_MEMORY_FRACTION * GPU_CARDS[card]["device_memory_size"] / GiB, card=card, gpus=gpus)


V5E, V4, V5P, V6E = 15.75, 30.75, 95.74, 31.25  # GiB usable per device (XLA's figure, see the module docstring)

# name -> spec: the TPU slice names of Cloud TPU (chips), and GPU hosts as <card>x<gpus>
TARGETS: dict[str, TopologySpec] = {
    "v5e-1": _tpu("v5e:1x1", V5E), "v5e-4": _tpu("v5e:2x2", V5E), "v5e-8": _tpu("v5e:2x4", V5E),
    "v5e-16": _tpu("v5e:4x4", V5E), "v5e-32": _tpu("v5e:4x8", V5E), "v5e-64": _tpu("v5e:8x8", V5E),
    "v5e-256": _tpu("v5e:16x16", V5E, wrap=(True, True, False)),
    "v4-8": _tpu("v4:2x2x1", V4, "megacore"), "v4-16": _tpu("v4:2x2x2", V4, "megacore"),
    "v4-32": _tpu("v4:2x2x4", V4, "megacore"), "v4-64": _tpu("v4:2x4x4", V4, "megacore"),
    "v4-128": _tpu("v4:4x4x4", V4, "megacore", (True, True, True)),
    "v5p-8": _tpu("v5:2x2x1", V5P, "megacore"), "v5p-16": _tpu("v5:2x2x2", V5P, "megacore"),
    "v5p-32": _tpu("v5:2x2x4", V5P, "megacore"), "v5p-128": _tpu("v5:4x4x4", V5P, "megacore", (True, True, True)),
    "v6e-1": _tpu("v6e:1x1", V6E), "v6e-4": _tpu("v6e:2x2", V6E), "v6e-8": _tpu("v6e:2x4", V6E),
    "v6e-16": _tpu("v6e:4x4", V6E), "v6e-256": _tpu("v6e:16x16", V6E, wrap=(True, True, False)),
    "h100x1": _gpu("h100", 1), "h100x8": _gpu("h100", 8), "a100x1": _gpu("a100", 1), "a100x8": _gpu("a100", 8),
}

INSTALL = {"tpu": 'pip install -e ".[tpu]"  (libtpu for this jax version)',
           "gpu": 'pip install -e ".[cuda12]"  (the CUDA plugin for this jax version)'}


class TargetError(ValueError):
  """A target that cannot be built: unknown name, missing compiler plugin, devices that do not fit
  the mesh. The message is one line naming the fix."""


@dataclasses.dataclass(frozen=True)
class Target:
  """The devices a run is built for. ``compile_only``: programs can be compiled for them, not run
  (a named pre-flight target); ``hbm_bytes``: memory per device (None: ask the device)."""

  name: str
  platform: str
  devices: tuple
  compile_only: bool = False
  hbm_bytes: int | None = None

  @property
  def device_kind(self) -> str:
    return getattr(self.devices[0], "device_kind", self.platform)

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  @property
  def num_hosts(self) -> int:
    return len({getattr(d, "process_index", 0) for d in self.devices})

  def memory_bytes(self) -> int | None:
    """Memory of one device in bytes (`hardware.memory_bytes` for devices one can ask)."""
    if self.hbm_bytes is not None:
      return self.hbm_bytes
    from ensembles import hardware  # pylint: disable=g-import-not-at-top
    return hardware.memory_bytes(self.devices[0])

  def describe(self) -> str:
    hosts = f", {self.num_hosts} hosts" if self.num_hosts > 1 else ""
    memory = self.memory_bytes()
    hbm = f", {memory / GiB:.2f} GiB per device" if memory else ""
    return f"{self.name}: {self.num_devices} x {self.device_kind}{hosts}{hbm}" + (" (compile-only)" if self.compile_only else "")


def local() -> Target:
  """The devices of this run: ``jax.devices()`` (every host's, after `jax.distributed.initialize`)."""
  devices = tuple(jax.devices())
  return Target(f"{devices[0].platform}x{len(devices)}", devices[0].platform, devices)


def named(name: str) -> Target:
  """The compile-only devices of target ``name`` (a key of `TARGETS`); `TargetError` with one line
  for an unknown name or a missing compiler plugin."""
  if name not in TARGETS:
    raise TargetError(f"unknown target {name!r}; known: {', '.join(TARGETS)}.")
  spec = TARGETS[name]
  devices = _tpu_devices(spec) if spec.platform == "tpu" else _gpu_devices(spec)
  return Target(name, spec.platform, tuple(devices), compile_only=True, hbm_bytes=int(spec.hbm_gib * GiB))


def _importable(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # its parent package is missing
    return False


def _tpu_devices(spec: TopologySpec) -> Sequence[Any]:
  if not _importable("libtpu"):
    raise TargetError(f"compiling for a TPU target needs libtpu, which is not installed: {INSTALL['tpu']}.")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # libtpu takes a machine-wide lock file unless told otherwise; compile-only devices use no TPU, so
  # several pre-flights (and tests) may run at once
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  return topologies.get_topology_desc(platform="tpu", topology_name=spec.topology, chip_config_name=spec.chip_config,
                                      chips_per_host_bounds=spec.chips_per_host, num_slices=1, wrap=spec.wrap).devices


def gpu_target_config(card: str) -> str:
  """The text-format GpuTargetConfigProto of ``card`` (a key of `GPU_CARDS`)."""
  spec = GPU_CARDS[card]
  numbers = {k: v for k, v in spec.items() if k not in ("name", "capability")}
  fields = " ".join(f"{k}: {v}" for k, v in {**_GPU_LIMITS, **numbers}.items())
  return (f"gpu_device_info {{ {fields} cuda_compute_capability {{ {spec['capability']} }} }} "
          f'platform_name: "CUDA" dnn_version_info {{ major: 9 minor: 8 }} device_description_str: "{spec["name"]}"')


def _gpu_devices(spec: TopologySpec) -> Sequence[Any]:
  if not _importable("jax_plugins.xla_cuda12"):
    raise TargetError(f"compiling for a GPU target needs the CUDA plugin, which is not installed: {INSTALL['gpu']}.")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return topologies.get_topology_desc("", platform="cuda", target_config=gpu_target_config(spec.card),
                                        topology=f"1x{spec.hosts}x{spec.gpus}").devices
  except NotImplementedError:
    raise TargetError("the CUDA plugin did not register (on a machine without a GPU it does only when JAX starts "
                      "with JAX_PLATFORMS=cpu, as experiments.preflight does).") from None


_PLATFORM = contextvars.ContextVar("ensembles_target_platform", default=None)


@contextlib.contextmanager
def platform_scope(platform: str | None):
  """Within the block, `current_platform` is ``platform`` (the target's): set by
  `members.Execution.map` while a member function is traced, so a layer's backend-dependent choice
  (`layers.resolve_conv_impl`) is the target's, not the host's."""
  token = _PLATFORM.set(platform)
  try:
    yield
  finally:
    _PLATFORM.reset(token)


def current_platform() -> str:
  """The platform being compiled for: the enclosing `platform_scope`'s, else the host's default
  backend (code outside a run, e.g. a user's own loop)."""
  return _PLATFORM.get() or jax.default_backend()


def platform_of(devices: Sequence[Any]) -> str:
  """The platform of a device list (all must share it)."""
  platforms = {d.platform for d in devices}
  if len(platforms) != 1:
    raise TargetError(f"a target's devices must share one platform, got {sorted(platforms)}.")
  return platforms.pop()
