"""Multi-host start-up: one process per host joins the JAX runtime's coordinator, then every host
sees all hosts' devices (`jax.devices()`) and the run's mesh spans them.

`initialize` takes the coordinator address (host:port of process 0), the number of processes and
this process's id from its arguments, else from the environment variables ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (read here: jax 0.10's own ``initialize()`` does not
read the last two), else leaves them to JAX's cluster detection (Cloud TPU pods, SLURM, Open MPI,
Kubernetes). Collectives between CPU processes use gloo (`jax_cpu_collectives_implementation`),
so several processes on one machine (127.0.0.1) run the multi-host path for real; accelerators
use their own interconnect. A missing or malformed value is one `DistributedError` line naming it.
"""
from __future__ import annotations

import os
import re

import jax

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}
_ADDRESS = re.compile(r"^\[?[\w.:-]+\]?:\d{1,5}$")


class DistributedError(ValueError):
  """A multi-host start-up value that is missing or malformed (one line naming it)."""


def settings(coordinator_address: str | None = None, num_processes: int | str | None = None,
             process_id: int | str | None = None) -> dict:
  """The three values, each from its argument or else its environment variable; {} when none is
  given anywhere (JAX detects the cluster). Checked: all or none, an address host:port, 1 <= n and
  0 <= id < n."""
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
  values = {k: (v if v not in (None, "") else os.environ.get(ENV[k]) or None) for k, v in given.items()}
  if all(v is None for v in values.values()):
    return {}
  missing = [f"--{k} (or {ENV[k]})" for k, v in values.items() if v is None]
  if missing:
    raise DistributedError(f"--distributed needs all of the coordinator address, process count and process id; "
                           f"missing {', '.join(missing)}.")
  address = str(values["coordinator_address"])
  if not _ADDRESS.match(address):
    raise DistributedError(f"coordinator address must be host:port (process 0's host, a free port), got {address!r}.")
  try:
    n, i = int(values["num_processes"]), int(values["process_id"])
  except ValueError:
    raise DistributedError(f"num_processes and process_id must be integers, got {values['num_processes']!r} and "
                           f"{values['process_id']!r}.") from None
  if n < 1:
    raise DistributedError(f"num_processes must be >= 1, got {n}.")
  if not 0 <= i < n:
    raise DistributedError(f"process_id must be in [0, {n}) for {n} processes, got {i}.")
  return {"coordinator_address": address, "num_processes": n, "process_id": i}


def initialize(coordinator_address: str | None = None, num_processes: int | str | None = None,
               process_id: int | str | None = None, timeout_s: int = 300) -> dict:
  """Joins the JAX runtime (`jax.distributed.initialize`) with `settings`; gloo for CPU
  collectives. Returns the settings used ({} when JAX detected the cluster itself)."""
  values = settings(coordinator_address, num_processes, process_id)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**values, initialization_timeout=timeout_s)
  except (ValueError, RuntimeError) as err:
    if not values:
      raise DistributedError(f"--distributed found no cluster to join ({str(err).splitlines()[0]}); outside Cloud "
                             "TPU and SLURM give --coordinator_address, --num_processes and --process_id (or "
                             "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).") from None
    raise DistributedError(f"could not join the coordinator at {values['coordinator_address']} as process "
                           f"{values['process_id']} of {values['num_processes']}: {str(err).splitlines()[0]}") from None
  return values
