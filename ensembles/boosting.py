"""Boosting-style sample reweighting between checkpoints (CBNN, DESIGN.md §3.5).

The CBNN paper's exact formulas are not available to us; these are the multi-class AdaBoost rules
of Zhu et al. (2009), our documented choice. Per-example weights w [N] have mean 1; a checkpoint's
predictions on the training set update them and give the checkpoint's weight α:

  samme:   err = Σ w·[wrong] / Σ w,  err clipped into [ε, 1 − 1/K − ε],
           α = log((1 − err) / err) + log(K − 1),  w ← w · exp(ν · α · [wrong]);
  samme_r: w ← w · exp(−ν · (K − 1)/K · Σ_k y_k log p_k),  y_k = 1 for the label, −1/(K − 1) otherwise,
           α = 1 (the probabilities already carry the confidence).
ν in (0, 1] is the shrinkage of the update (AdaBoost's learning rate; 1 = the plain rule); the
checkpoint's own weight α is not shrunk.
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


def cap_ratio(weights: jax.Array, max_ratio: float) -> jax.Array:
  """Mean-1 weights whose max / mean is exactly ``max_ratio`` when it was larger (unchanged otherwise).

  Water-filling: the result is min(w, c) / mean(min(w, c)) with the clip level c solving
  c = r · mean(min(w, c)). With w sorted ascending and j weights below c, mean(min(w, c)) =
  (S_j + (N − j)·c) / N (S_j the sum of the j smallest), so c = r·S_j / (N − r·(N − j)).
  g(c) = N·c − r·Σ min(w, c) is negative just above 0 and increasing past its minimum, so the root
  lies between the last sorted weight with g < 0 and the first with g >= 0. weights [N] > 0, r >= 1.
  """
  w = normalize(weights)
  n = w.shape[0]
  ws = jnp.sort(w)
  below = jnp.concatenate([jnp.zeros(1, w.dtype), jnp.cumsum(ws)[:-1]])  # S_j, j = index in ws
  j = jnp.arange(n)
  g = n * ws - max_ratio * (below + (n - j) * ws)
  first = jnp.argmax(g >= 0)  # first sorted weight at or above the clip level
  denominator = n - max_ratio * (n - first)  # <= 0 only when every weight is clipped (r = 1): all equal
  c = jnp.where(denominator > 0, max_ratio * below[first] / jnp.where(denominator > 0, denominator, 1.0), ws[0])
  capped = normalize(jnp.minimum(w, c))
  return jnp.where(jnp.max(w) > max_ratio, capped, w)


def samme_alpha(error: jax.Array, num_classes: int, eps: float = 1e-6) -> jax.Array:
  """α = log((1 − err)/err) + log(K − 1), with err clipped into [eps, 1 − 1/K − eps] so α is finite
  and positive (a checkpoint no better than chance would get α <= 0)."""
  err = jnp.clip(error, eps, 1.0 - 1.0 / num_classes - eps)
  return jnp.log((1.0 - err) / err) + jnp.log(num_classes - 1.0)


def reweight(weights: jax.Array, probs: jax.Array, labels: jax.Array, rule: str = "samme", eps: float = 1e-6,
             max_ratio: float | None = None, shrinkage: float = 1.0) -> tuple[jax.Array, jax.Array, jax.Array]:
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
    new = w * jnp.exp(shrinkage * alpha * wrong)
  else:
    logp = jnp.log(jnp.clip(probs, eps, 1.0))
    y = jnp.where(jax.nn.one_hot(labels, k) > 0, 1.0, -1.0 / (k - 1))
    new = w * jnp.exp(-shrinkage * (k - 1.0) / k * jnp.sum(y * logp, axis=-1))
    alpha = jnp.ones((), w.dtype)
  new = normalize(new)
  if max_ratio is not None:
    new = cap_ratio(new, max_ratio)
  return new, alpha, error
