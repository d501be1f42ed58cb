"""Boosting-style sample reweighting between checkpoints (CBNN, DESIGN.md §3.5).

The CBNN paper's exact formulas are not available to us; these are the multi-class AdaBoost rules
of Zhu et al. (2009), our documented choice. Per-example weights w [N] have mean 1; a checkpoint's
predictions on the training set update them and give the checkpoint's weight α:

  samme:   err = Σ w·[wrong] / Σ w,  err clipped into [ε, 1 − 1/K − ε],
           α = log((1 − err) / err) + log(K − 1),  w ← w · exp(α · [wrong]);
  samme_r: w ← w · exp(−(K − 1)/K · Σ_k y_k log p_k),  y_k = 1 for the label, −1/(K − 1) otherwise,
           α = 1 (the probabilities already carry the confidence).
Then w is renormalised to mean 1, and optionally capped so that max(w) / mean(w) <= max_ratio.
All functions are pure jnp and vmappable (e.g. over several boosted runs).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

RULES = ("samme", "samme_r")


def normalize(weights: jax.Array) -> jax.Array:
  """w / mean(w): weights [N] with mean 1."""
  return weights / jnp.mean(weights)


def cap_ratio(weights: jax.Array, max_ratio: float, iterations: int = 20) -> jax.Array:
  """Mean-1 weights whose max / mean is at most ``max_ratio`` (clip at max_ratio · mean and
  renormalise, repeated; converges because clipping only lowers the largest weights)."""
  def body(_, w):
    return normalize(jnp.minimum(w, max_ratio))

  return jax.lax.fori_loop(0, iterations, body, normalize(weights))


def samme_alpha(error: jax.Array, num_classes: int, eps: float = 1e-6) -> jax.Array:
  """α = log((1 − err)/err) + log(K − 1), with err clipped into [eps, 1 − 1/K − eps] so α is finite
  and positive (a checkpoint no better than chance would get α <= 0)."""
  err = jnp.clip(error, eps, 1.0 - 1.0 / num_classes - eps)
  return jnp.log((1.0 - err) / err) + jnp.log(num_classes - 1.0)


def reweight(weights: jax.Array, probs: jax.Array, labels: jax.Array, rule: str = "samme", eps: float = 1e-6,
             max_ratio: float | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One boosting update from a checkpoint's training-set predictions.

  weights [N] (any positive scale), probs [N, K], labels [N] int -> (new weights [N] with mean 1,
  α scalar, weighted error scalar of the argmax predictions).
  """
  if rule not in RULES:
    raise ValueError(f"cbnn.rule must be one of {RULES}, got {rule!r}.")
  k = probs.shape[-1]
  w = normalize(weights)
  wrong = (jnp.argmax(probs, axis=-1) != labels).astype(w.dtype)
  error = jnp.sum(w * wrong) / jnp.sum(w)
  if rule == "samme":
    alpha = samme_alpha(error, k, eps)
    new = w * jnp.exp(alpha * wrong)
  else:
    logp = jnp.log(jnp.clip(probs, eps, 1.0))
    y = jnp.where(jax.nn.one_hot(labels, k) > 0, 1.0, -1.0 / (k - 1))
    new = w * jnp.exp(-(k - 1.0) / k * jnp.sum(y * logp, axis=-1))
    alpha = jnp.ones((), w.dtype)
  new = normalize(new)
  if max_ratio is not None:
    new = cap_ratio(new, max_ratio)
  return new, alpha, error
