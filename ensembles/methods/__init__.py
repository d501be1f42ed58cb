"""Method registry: every method is a registered `base.Method` value (its recipe, options and
checks). Adding a method means adding one file that calls `register`, and importing it here."""
from __future__ import annotations

from ensembles.methods.base import METHODS, Method, Trained, get_method, register  # noqa: F401
# each module registers its method on import (this order is the registry's order)
from ensembles.methods import (single, deep_ensemble, dst_ensemble, edst_ensemble,  # noqa: F401,E402,I001
                               static_sparse_ensemble, subnetwork_ensemble, mc_dropout, snapshot_ensemble, cbnn,
                               fge, swa, snapshot_boosting, batch_ensemble, mimo, treenet, boosted_edst)
