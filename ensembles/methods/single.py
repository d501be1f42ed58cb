"""Single dense model: the reference every ensemble is compared with (same schedule, one member)."""
from __future__ import annotations

from typing import Any

from ensembles.errors import ConfigError
from ensembles.methods import deep_ensemble


def validate(config: Any) -> None:
  if config.num_members != 1:
    raise ConfigError(f"config.num_members must be 1 for method 'single', got {config.num_members}; "
                     "use method 'deep_ensemble' for several members.")


def train_and_evaluate(config: Any, workdir: str) -> dict:
  return deep_ensemble.train_and_evaluate(config, workdir)
