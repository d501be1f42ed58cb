"""Networks that hold several ensemble members in one set of weights (BatchEnsemble, MIMO, TreeNet).

The protocol the engine reads (`ensembles.train`): such a network

  * has ``num_members`` = M' > 1, the members it holds;
  * maps inputs x [B, ...] in evaluation mode to logits [B, M', K], one row of K per member;
  * has ``training_batch(key, x, y, w) -> (x', y', w')``: the batch of one training step (augmented,
    normalised x [B, ...], labels y [B], sample weights w [B]) as the network's training input x'
    (its first axis B') with the labels y' [B', M'] and weights w' [B', M'] of its M' outputs.
    The loss is the mean over all B'·M' outputs of w'·CE(logits, y'), times M' when the network's
    ``member_loss`` is ``"sum"`` (the members' losses summed: each member's own weights get the
    gradient they would get trained alone);
  * may say how many rows of its layers one example costs (``rows_per_example``: M for the batch
    repeated M times), for the logged model-FLOPs utilisation.

The predictor returns each of the M' outputs as a member ([M', B, K]). `MemberNetwork` is the base
of the library's wrappers; `RepeatedBatchNetwork` the base of those whose members all read the
whole batch, repeated M times along the batch axis (BatchEnsemble, TreeNet).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def is_member_network(model: Any) -> bool:
  """Whether ``model`` holds its members in one network (follows the protocol above)."""
  return hasattr(model, "training_batch")


def loss_scale(model: Any) -> float:
  """The factor on the mean cross-entropy: M' for a ``member_loss = "sum"`` network, else 1."""
  return float(model.num_members) if is_member_network(model) and model.member_loss == "sum" else 1.0


def rows_per_example(model: Any) -> float:
  """Rows of the network's layers that one training example costs (1 for an ordinary model)."""
  return float(getattr(model, "rows_per_example", 1)) if is_member_network(model) else 1.0


class MemberNetwork(nn.Module):
  """A wrapper of ``inner`` (any Flax model called as ``inner(x, train=...)`` -> logits) holding
  ``num_members`` members; it convolves when ``inner`` does."""

  inner: nn.Module
  num_members: int

  member_loss = "mean"  # or "sum": see the module docstring

  @property
  def has_conv(self):
    return getattr(self.inner, "has_conv", None)


class RepeatedBatchNetwork(MemberNetwork):
  """Members that all train on the whole batch, run as ``inner`` on the batch repeated M times
  (member-major rows [M·B, ...]) under the subclass's Flax method `interceptor`."""

  @property
  def rows_per_example(self) -> int:
    return self.num_members

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
