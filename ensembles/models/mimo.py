"""MIMO (Havasi et al., ICLR 2021) around any Flax model: one network with M inputs and M outputs.

`MIMO(inner, M, K)` feeds ``inner`` the M member inputs stacked along the channel axis
([B, ..., C] each -> [B, ..., M·C]: the first layer reads all M images) and reads ``inner``'s
M·K logits as M heads of K classes ([B, M, K]); ``inner`` must be built with M·K outputs
(`network`). In training each member gets its own examples (`mimo_rows`); at inference every member
gets the same image, so one forward pass gives M predictions.

Options (`mimo_rows`): ``input_repetition`` ρ, the fraction of rows whose M inputs are one image
(the paper's input repetition); ``batch_repetitions`` r, the batch repeated r times before the
members' shuffles (the paper's batch repetition; each step then runs r·B rows). The loss is the sum
of the M members' losses, averaged over the rows (as the MIMO code we read does).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ensembles.models import multi_member


def mimo_rows(key: jax.Array, batch_size: int, num_members: int, input_repetition: float = 0.0,
              batch_repetitions: int = 1) -> jax.Array:
  """Example indices [r·B, M] of one MIMO training step: row i gives member m example idx[i, m].

  The batch's indices repeated r times are shuffled once (the main order); in the first
  n_ind = round((1 − ρ)·r·B) rows each member's column is its own shuffle of the main order's first
  n_ind entries, and in the other rows every member takes the main order's example (input
  repetition). So each column holds every example of the batch r times."""
  n = batch_size * batch_repetitions
  main_key, *member_keys = jax.random.split(key, num_members + 1)
  main = jax.random.permutation(main_key, jnp.tile(jnp.arange(batch_size), batch_repetitions))
  independent = int(round((1.0 - input_repetition) * n))
  columns = [jnp.concatenate([jax.random.permutation(k, main[:independent]), main[independent:]])
             for k in member_keys]
  return jnp.stack(columns, axis=1).astype(jnp.int32)


class MIMO(multi_member.MemberNetwork):
  """``inner`` (built with num_members·num_classes outputs) as a MIMO network of ``num_members``.

  Evaluation: x [B, ...] -> logits [B, M, K], every member on the same image. Training
  (``train=True``): x [B', M, ...] member inputs from `training_batch` -> [B', M, K]."""

  num_classes: int = 0  # K (the inner model gives M·K)
  input_repetition: float = 0.0
  batch_repetitions: int = 1

  member_loss = "sum"  # as the MIMO code we read: members' losses summed, averaged over the rows

  @property
  def rows_per_example(self) -> int:
    return self.batch_repetitions

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    m = self.num_members
    if not train:
      x = jnp.broadcast_to(x[:, None], (x.shape[0], m, *x.shape[1:]))
    elif x.shape[1] != m:
      raise ValueError(f"MIMO in training takes member inputs [B, {m}, ...] (from training_batch); got {x.shape}.")
    stacked = jnp.moveaxis(x, 1, -2)  # [B, ..., M, C]
    logits = self.inner(stacked.reshape(*stacked.shape[:-2], m * x.shape[-1]), train=train)
    if logits.shape[-1] != m * self.num_classes:
      raise ValueError(f"MIMO's inner model gives {logits.shape[-1]} outputs; it must give num_members · num_classes "
                       f"= {m * self.num_classes} (build it with num_classes={m * self.num_classes}).")
    return logits.reshape(x.shape[0], m, self.num_classes)

  @nn.nowrap
  def training_batch(self, key, x, y, w):
    """x [B, ...], y [B], w [B] -> member inputs [r·B, M, ...] and labels, weights [r·B, M]."""
    idx = mimo_rows(key, y.shape[0], self.num_members, self.input_repetition, self.batch_repetitions)
    return x[idx], y[idx], w[idx]


def network(model: nn.Module, num_members: int, input_repetition: float = 0.0, batch_repetitions: int = 1) -> MIMO:
  """``model`` (with a ``num_classes`` field, as the library's models) as a MIMO network: a copy
  built with num_members · num_classes outputs inside `MIMO`."""
  k = getattr(model, "num_classes", None)
  if not isinstance(k, int):
    raise ValueError(f"method 'mimo' builds the model with num_members x num_classes outputs, so the model needs an "
                     f"integer num_classes field; {type(model).__name__} has none (add a num_classes field that "
                     "sets its last layer's outputs).")
  return MIMO(model.clone(num_classes=num_members * k), num_members, k, input_repetition, batch_repetitions)

