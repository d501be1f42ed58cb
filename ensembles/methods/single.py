"""Single dense model: the reference every ensemble is compared with (the deep ensemble's recipe
with one member)."""
from __future__ import annotations

from ensembles.errors import require
from ensembles.methods import deep_ensemble
from ensembles.methods.base import Method, register


def check(config, options) -> None:
  require(config.num_members == 1, "num_members",
          "1 for method 'single' (use method 'deep_ensemble' for several members)", config.num_members)


METHOD = register(Method("single", deep_ensemble.train, defaults={"num_members": 1}, check=check, trains_seeds=True))
