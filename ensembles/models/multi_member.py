"""Networks that hold several ensemble members in one set of weights (BatchEnsemble, MIMO).

The protocol the engine reads (`ensembles.train`): such a network

  * has ``num_members`` = M' > 1, the members it holds;
  * maps inputs x [B, ...] in evaluation mode to logits [B, M', K], one row of K per member;
  * has ``training_batch(key, x, y, w) -> (x', y', w')``: the batch of one training step (augmented,
    normalised x [B, ...], labels y [B], sample weights w [B]) as the network's training input x'
    (its first axis B') with the labels y' [B', M'] and weights w' [B', M'] of its M' outputs.
    The loss is the mean over all B'·M' outputs of w'·CE(logits, y').

The predictor returns each of the M' outputs as a member ([M', B, K]).
"""
from __future__ import annotations

from typing import Any


def members_per_network(model: Any) -> int:
  """M': the members one network of ``model`` holds (1 for an ordinary model)."""
  return int(getattr(model, "num_members", 1)) if hasattr(model, "training_batch") else 1
