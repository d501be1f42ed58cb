"""A trained ensemble as one value: stacked members, the function that runs them, and how their
predictions combine.

``params`` / ``model_state`` have a leading member axis [M, ...]. ``apply(params, model_state, x)``
is a jitted predictor giving member probabilities [M', B, K] for a batch x [B, ...] (M' = M, or
M·T for MC dropout's T passes per member). ``weights`` (e.g. CBNN's α) and ``combine`` (``mean`` or
``vote``) turn member probabilities into the ensemble's (`metrics.combine_probs`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import chex
import numpy as np

from ensembles import members as members_lib
from ensembles import metrics as metrics_lib
from ensembles import train as train_lib


@dataclasses.dataclass(frozen=True)
class Ensemble:
  params: Any
  model_state: Any
  apply: Callable
  input_shape: tuple[int, ...]  # one example's shape, e.g. (28, 28, 1) or (20,)
  weights: Sequence[float] | None = None
  combine: str = "mean"
  batch_size: int = 1000
  mesh: Any = None  # the members' device mesh: evaluation batches are split over its ``data`` axis

  @property
  def num_members(self) -> int:
    """M: the stacked members (MC dropout's passes are not counted here)."""
    return members_lib.num_members(self.params)

  def member_probs(self, x: np.ndarray) -> np.ndarray:
    """Member probabilities [M', N, K] of inputs x [N, ...] (in batches of ``batch_size``; a
    `streaming.ImageView` is read batch by batch)."""
    x = x if hasattr(x, "read") else np.asarray(x)
    chex.assert_shape(x, (None, *self.input_shape))
    return train_lib.predict_probs(self.apply, self, x, self.batch_size, self.mesh)

  def predict(self, x: np.ndarray) -> np.ndarray:
    """The ensemble's probabilities [N, K] of inputs x [N, ...]: the weighted mean (or vote) of
    `member_probs`."""
    return metrics_lib.combine_probs(self.member_probs(x), self.weights, self.combine)
