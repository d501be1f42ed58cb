"""ensembles: efficient deep ensembles in JAX.

Every per-member quantity is a pytree with a leading member axis [M, ...]; methods are pure
per-member functions lifted to all members with `ensembles.members.member_map` and jitted.

  import ensembles
  result = ensembles.fit("dst_ensemble", my_flax_model, {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt})
  result.predict(xt)   # [N, K]
"""
__version__ = "0.1.0"

from ensembles.api import Fitted, fit, run_config  # noqa: E402,F401
from ensembles.data import Dataset, from_arrays, load_dataset  # noqa: E402,F401
from ensembles.methods import METHODS  # noqa: E402,F401
