"""One entry point for every method:

  python -m experiments.train --config experiments/configs/NAME.py [--config.field=value ...] --workdir DIR

Trains, evaluates, prints the results table and writes results.json / results.md, metrics.jsonl and
Orbax checkpoints into DIR. Rerunning with the same DIR resumes from the newest checkpoint.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from ensembles import compilation_cache
from ensembles import config as config_lib
from ensembles import distributed
from ensembles import files
from ensembles import trainer
from ensembles.errors import WorkdirInUseError
from experiments import cli
from experiments import report
from experiments.runner import run

_CONFIG = flags.DEFINE_string("config", "experiments/configs/default.py",
                              "Config file; override fields with --config.BLOCK.FIELD=VALUE (experiments/cli.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results.")
_DISTRIBUTED = flags.DEFINE_boolean(
    "distributed", False, "Multi-host: join the JAX runtime's coordinator first (ensembles/distributed.py). Cloud TPU "
    "pods and SLURM are detected; elsewhere give the three flags below (or JAX_COORDINATOR_ADDRESS, "
    "JAX_NUM_PROCESSES, JAX_PROCESS_ID).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "--distributed: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--distributed: the number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "--distributed: this process's index, 0 .. num_processes-1.")


_OVERRIDES: list[tuple[str, str]] = []


def parse_flags(argv):
  """absl's flags without the --config.FIELD overrides (kept for `cli.apply_overrides`); a mistake
  is one line on stderr and exit status 2."""
  rest, overrides = cli.split_overrides(argv)
  _OVERRIDES[:] = overrides
  try:
    return flags.FLAGS(rest)
  except flags.Error as err:
    _fail(str(err).splitlines()[0])


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; fields are set as --config.BLOCK.FIELD=VALUE.")
  if not _WORKDIR.value:
    _fail("--workdir is required.")
  if files.exists(_WORKDIR.value) and not files.is_dir(_WORKDIR.value):
    _fail(f"--workdir {_WORKDIR.value!r} is a file; give a folder (new, or a run to resume).")
  try:
    config = cli.apply_overrides(cli.load_config_file(_CONFIG.value), _OVERRIDES)
  except cli.CliError as err:
    _fail(str(err))
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file operation at INFO
  compilation_cache.enable(config.get("compilation_cache_dir", ""))  # a rerun compiles nothing
  if _DISTRIBUTED.value:
    try:
      distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except distributed.DistributedError as err:
      _fail(str(err))
  elif any(flag.value is not None for flag in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)):
    _fail("--coordinator_address, --num_processes and --process_id need --distributed.")
  try:
    results = run(config, _WORKDIR.value)
  except trainer.Preempted as err:
    print(f"preempted: {err}", file=sys.stderr)
    sys.exit(143)  # 128 + SIGTERM, as if the signal had ended the process
  except (config_lib.ConfigError, ValueError, FileNotFoundError, FloatingPointError, WorkdirInUseError) as err:
    _fail(str(err))
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:  # one report across hosts
    print(report.run_table(results))
    print(f"Wrote {os.path.join(_WORKDIR.value, 'results.md')} and results.json.")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
