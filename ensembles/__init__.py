"""ensembles: efficient deep ensembles in JAX.

Every per-member quantity is a pytree with a leading member axis [M, ...]; methods are pure
per-member functions lifted to all members with `ensembles.members.member_map` and jitted.

  import ensembles
  result = ensembles.fit("dst_ensemble", my_flax_model, {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt})
  result.predict(xt)   # [N, K]

The top-level names (`fit`, `fit_seeds`, `run_config`, `Fitted`, `METHODS`, `Dataset`, `from_arrays`,
`load_dataset`) are imported on first use, so importing one submodule (e.g. the pure-numpy
`ensembles.metrics`) does not start JAX.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {"fit": "ensembles.api", "fit_seeds": "ensembles.api", "run_config": "ensembles.api", "Fitted": "ensembles.api",
         "METHODS": "ensembles.methods", "Dataset": "ensembles.data", "from_arrays": "ensembles.data",
         "load_dataset": "ensembles.data"}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'ensembles' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
