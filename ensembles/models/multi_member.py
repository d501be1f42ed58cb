"""Networks that hold several ensemble members in one set of weights (BatchEnsemble, MIMO, TreeNet).

The protocol the engine reads (`ensembles.train`): such a network

  * has ``num_members`` = M' > 1, the members it holds;
  * maps inputs x [B, ...] in evaluation mode to logits [B, M', K], one row of K per member;
  * has ``training_batch(key, x, y, w) -> (x', y', w')``: the batch of one training step (augmented,
    normalised x [B, ...], labels y [B], sample weights w [B]) as the network's training input x'
    (its first axis B') with the labels y' [B', M'] and weights w' [B', M'] of its M' outputs.
    The loss is the mean over all B'·M' outputs of w'·CE(logits, y').

The predictor returns each of the M' outputs as a member ([M', B, K]). `MemberNetwork` is the base
of the library's wrappers; `RepeatedBatchNetwork` the base of those whose members all read the
whole batch, repeated M times along the batch axis (BatchEnsemble, TreeNet).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def members_per_network(model: Any) -> int:
  """M': the members one network of ``model`` holds (1 for an ordinary model)."""
  return int(getattr(model, "num_members", 1)) if hasattr(model, "training_batch") else 1


class MemberNetwork(nn.Module):
  """A wrapper of ``inner`` (any Flax model called as ``inner(x, train=...)`` -> logits) holding
  ``num_members`` members; it convolves when ``inner`` does."""

  inner: nn.Module
  num_members: int

  @property
  def has_conv(self):
    return getattr(self.inner, "has_conv", None)


class RepeatedBatchNetwork(MemberNetwork):
  """Members that all train on the whole batch, run as ``inner`` on the batch repeated M times
  (member-major rows [M·B, ...]) under the subclass's Flax method `interceptor`."""

  @nn.nowrap
  def interceptor(self, calls: list) -> Callable:
    """The Flax method interceptor of one forward pass (``calls``: a list it may record into)."""
    raise NotImplementedError

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x [B, ...] -> logits [B, M, K]."""
    m = self.num_members
    tiled = jnp.tile(x, (m,) + (1,) * (x.ndim - 1))
    calls: list = []
    with nn.intercept_methods(self.interceptor(calls)):
      logits = self.inner(tiled, train=train)
    self.check_layers(calls)
    return jnp.moveaxis(logits.reshape(m, x.shape[0], logits.shape[-1]), 0, 1)

  @nn.nowrap
  def check_layers(self, calls: list) -> None:
    """Raises when the forward pass's ``calls`` show the interceptor could not apply as configured."""

  @nn.nowrap
  def training_batch(self, key, x, y, w):
    """Every member trains on the whole batch: x [B, ...] unchanged, y and w [B] -> [B, M]."""
    del key
    shape = (y.shape[0], self.num_members)
    return x, jnp.broadcast_to(y[:, None], shape), jnp.broadcast_to(w[:, None], shape)
