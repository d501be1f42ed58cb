"""The library's error types, in one module that imports nothing else of the library (so any
module can raise them without an import cycle), and the small checks that raise `ConfigError`.

Every message names what is wrong and what is allowed (a config field as ``config.<dotted field>``),
or, for missing data, how to get it.
"""
from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
  """A config field has a value that is not allowed."""


class DataNotFoundError(FileNotFoundError):
  """The requested dataset is not available locally; the message says how to get it."""


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss; the last good checkpoint is left untouched."""


class UnhealthyRunError(FloatingPointError):
  """A health check (`ensembles.health`) flagged the run under training.on_unhealthy='stop'; the
  last good checkpoint is left untouched."""


class Preempted(RuntimeError):
  """SIGTERM arrived during training; the state of the last finished step was checkpointed."""


class WorkdirInUseError(RuntimeError):
  """Another live run holds the workdir (`ensembles.workdir_lock`)."""


class CorruptCheckpointError(ValueError):
  """A checkpoint's contents do not match the fingerprint saved with it."""


def is_int(x: Any) -> bool:
  """An int (not a bool)."""
  return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
  """A finite int or float (not a bool)."""
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def require(ok: bool, field: str, allowed: str, value: Any) -> None:
  """Raises ``ConfigError("config.<field> must be <allowed>, got <value>.")`` unless ``ok``."""
  if not ok:
    raise ConfigError(f"config.{field} must be {allowed}, got {value!r}.")
