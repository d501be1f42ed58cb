"""One entry point for every method:

  python -m experiments.train --config experiments/configs/NAME.py [--config.field=value ...] --workdir DIR

Trains, evaluates, prints the results table and writes results.json / results.md, metrics.jsonl and
Orbax checkpoints into DIR. Rerunning with the same DIR resumes from the newest checkpoint.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ensembles import config as config_lib
from ensembles import trainer
from experiments import report
from experiments.runner import run

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results.")
_DISTRIBUTED = flags.DEFINE_boolean(
    "distributed", False, "Multi-host: call jax.distributed.initialize() first (TPU pods and SLURM are "
    "detected automatically; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required.")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file operation at INFO
  if _DISTRIBUTED.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()
  try:
    results = run(_CONFIG.value, _WORKDIR.value)
  except trainer.Preempted as err:
    print(f"preempted: {err}", file=sys.stderr)
    sys.exit(143)  # 128 + SIGTERM, as if the signal had ended the process
  except (config_lib.ConfigError, ValueError, FileNotFoundError, FloatingPointError) as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  print(report.run_table(results))
  print(f"Wrote {os.path.join(_WORKDIR.value, 'results.md')} and results.json.")


if __name__ == "__main__":
  app.run(main)
