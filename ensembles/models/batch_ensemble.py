"""BatchEnsemble (Wen, Tran & Ba, ICLR 2020) around any Flax model: shared weights, per-member
rank-1 fast weights on every dense and convolutional layer, all members in one forward pass.

`BatchEnsemble(inner, M)` repeats the input batch M times (member-major rows [M·B, ...]) and runs
``inner`` under a Flax method interceptor (`rank1_layers`) that turns each call of `nn.Dense`,
`nn.Conv` or `layers.Conv` into its BatchEnsemble form: the layer's input is read as
[M, B, ..., C_in] and member m computes

    y_m = ((x_m ∘ r_m) W + b) ∘ s_m        (= x_m (W ∘ r_m s_mᵀ) + b ∘ s_m)

with fast weights r_m [C_in] (``batch_ensemble_in`` [M, C_in]) and s_m [C_out]
(``batch_ensemble_out`` [M, C_out]) stored in the layer's own scope beside its kernel and bias.
So no model is copied or edited: the shipped models and a user's own ones work as they are.
Layers without weights (activations, pooling, dropout, reshapes) act on the M·B rows unchanged.

Ours, where the paper or its code differ or are not known to us:
  * the bias: member m's bias is b ∘ s_m (the layer's own bias, scaled), not an independent bias
    per member, so the parameter count is the shared network's plus M·(C_in + C_out) per layer;
  * BatchNorm is shared: it normalises over all M·B rows (training) and keeps one set of statistics;
  * the loss is the mean over the M·B rows (``member_loss = "mean"``, as the BatchEnsemble code we
    read averages over the repeated batch), so a member's fast weights get 1/M of its gradient;
  * fast weights start from N(1, σ²), σ = ``fast_init_std`` = 0.5 (``fast_init="normal"``, the
    default we read in the uncertainty-baselines CIFAR code), at ±1 with probability ½ each
    (``"random_sign"``), or at 1 (``"ones"``: every member is then exactly the shared network).
Layers the interceptor does not know (e.g. `nn.DenseGeneral`, `nn.Einsum`) stay shared.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ensembles.models import layers, multi_member

FAST_INITS = ("normal", "random_sign", "ones")
RANK1_LAYER_TYPES = (nn.Dense, nn.Conv, layers.Conv)


def random_sign(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
  """Entries +1 or −1, each with probability ½."""
  return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(dtype)


def fast_initializer(name: str, std: float = 0.5):
  """The fast weights' initializer: N(1, std²), ±1, or 1."""
  if name not in FAST_INITS:
    raise ValueError(f"batch_ensemble.fast_init must be one of {FAST_INITS}, got {name!r}.")
  if name == "normal":
    return lambda key, shape, dtype=jnp.float32: (1.0 + std * jax.random.normal(key, shape)).astype(dtype)
  return random_sign if name == "random_sign" else nn.initializers.ones


def _per_member(v: jax.Array, ndim: int) -> jax.Array:
  """v [M, C] shaped to broadcast against [M, B, ..., C] of ``ndim`` dimensions."""
  return v.reshape(v.shape[0], *([1] * (ndim - 2)), v.shape[-1])


def rank1_layers(num_members: int, fast_init: str, fast_init_std: float, next_fun, args, kwargs, context):
  """Flax method interceptor: a dense or conv layer called on rows [M·B, ..., C_in] computes each
  member's y_m = ((x_m ∘ r_m) W + b) ∘ s_m; other calls run unchanged."""
  module = context.module
  if context.method_name != "__call__" or not isinstance(module, RANK1_LAYER_TYPES):
    return next_fun(*args, **kwargs)
  x, m = args[0], num_members
  if x.shape[0] % m:
    raise ValueError(f"BatchEnsemble: layer {'/'.join(module.scope.path)} got {x.shape[0]} rows, not a multiple "
                     f"of the {m} members (the wrapper repeats the batch; call the layer through it).")
  init = fast_initializer(fast_init, fast_init_std)
  r = module.param("batch_ensemble_in", init, (m, x.shape[-1]), jnp.float32)
  xm = x.reshape(m, -1, *x.shape[1:])
  y = next_fun((xm * _per_member(r, xm.ndim).astype(x.dtype)).reshape(x.shape), *args[1:], **kwargs)
  s = module.param("batch_ensemble_out", init, (m, y.shape[-1]), jnp.float32)
  ym = y.reshape(m, -1, *y.shape[1:])
  return (ym * _per_member(s, ym.ndim).astype(y.dtype)).reshape(y.shape)


class BatchEnsemble(multi_member.RepeatedBatchNetwork):
  """``inner`` (any Flax model called as ``inner(x, train=...)`` -> logits [B, K]) as a
  BatchEnsemble of ``num_members`` members: inputs [B, ...] -> logits [B, M, K].

  Parameters: ``inner``'s own (shared) under ``params/inner``, with each dense and conv layer's
  fast weights ``batch_ensemble_in`` [M, C_in] and ``batch_ensemble_out`` [M, C_out] beside its
  kernel. Training: every member sees the whole batch (`training_batch`)."""

  fast_init: str = "normal"
  fast_init_std: float = 0.5

  @nn.nowrap
  def interceptor(self, calls: list):
    return functools.partial(rank1_layers, self.num_members, self.fast_init, self.fast_init_std)


def fast_weight_count(params: Any) -> int:
  """Fast-weight entries in a (one-network) params tree."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return int(sum(v.size for p, v in leaves if "batch_ensemble_" in jax.tree_util.keystr(p)))
