"""Static sparse ensemble: M members with fixed random ERK masks (the DST recipe without topology
updates); the baseline that shows what prune-and-grow adds."""
from __future__ import annotations

from ensembles.methods import dst_ensemble, sparse_common

validate = sparse_common.validate
train_and_evaluate = dst_ensemble.train_and_evaluate
