"""Calibration and diversity metrics (uncertainty-baselines conventions, DESIGN.md section 4).

All functions take probabilities (not logits): ``probs`` [N, K] for one predictor and
``member_probs`` [M, N, K] for an ensemble; labels are int [N]. Computed in float64 numpy on the
host so that results do not depend on the accelerator's precision.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

ECE_BINS = 15
_TINY = 1e-12  # floor on probabilities inside logarithms


def ensemble_probs(member_probs: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
  """Ensemble prediction p̄ = Σ_m w_m p_m / Σ_m w_m; uniform weights by default. [M,N,K] -> [N,K]."""
  member_probs = np.asarray(member_probs, np.float64)
  if weights is None:
    return member_probs.mean(axis=0)
  w = np.asarray(weights, np.float64)
  if w.shape != member_probs.shape[:1] or np.any(w < 0) or w.sum() <= 0:
    raise ValueError(f"weights must be {member_probs.shape[0]} non-negative numbers with a positive sum, got {w}.")
  return np.tensordot(w / w.sum(), member_probs, axes=1)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of examples whose argmax class equals the label."""
  return float(np.mean(np.argmax(probs, axis=-1) == labels))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
  """Negative log-likelihood in nats: -mean_n log p(y_n | x_n)."""
  p = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
  return float(-np.mean(np.log(np.maximum(p, _TINY))))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
  """Brier score: mean_n Σ_k (p_nk - onehot(y_n)_k)^2."""
  p = np.asarray(probs, np.float64)
  onehot = np.eye(p.shape[-1])[labels]
  return float(np.mean(np.sum((p - onehot) ** 2, axis=-1)))


def ece(probs: np.ndarray, labels: np.ndarray, num_bins: int = ECE_BINS) -> float:
  """Expected calibration error: Σ_b (n_b / N) |acc_b - conf_b| over equal-width confidence bins.

  Confidence c = max_k p_k falls into bin b = min(floor(c * num_bins), num_bins - 1), i.e. bins
  [0, 1/B), [1/B, 2/B), ..., [(B-1)/B, 1].
  """
  p = np.asarray(probs, np.float64)
  conf = p.max(axis=-1)
  correct = (p.argmax(axis=-1) == labels).astype(np.float64)
  bins = np.minimum((conf * num_bins).astype(np.int64), num_bins - 1)
  sum_conf = np.bincount(bins, weights=conf, minlength=num_bins)
  sum_acc = np.bincount(bins, weights=correct, minlength=num_bins)
  return float(np.sum(np.abs(sum_acc - sum_conf)) / len(labels))


def disagreement(member_probs: np.ndarray) -> float:
  """Mean over member pairs i < j of the fraction of examples whose argmax classes differ."""
  preds = np.argmax(member_probs, axis=-1)
  pairs = list(itertools.combinations(range(len(preds)), 2))
  if not pairs:
    raise ValueError("disagreement needs at least 2 members.")
  return float(np.mean([np.mean(preds[i] != preds[j]) for i, j in pairs]))


def pairwise_kl(member_probs: np.ndarray) -> float:
  """Mean over ordered member pairs i != j of mean_n KL(p_i(x_n) || p_j(x_n)), in nats."""
  logp = np.log(np.maximum(np.asarray(member_probs, np.float64), _TINY))
  p = np.exp(logp)
  pairs = list(itertools.permutations(range(len(p)), 2))
  if not pairs:
    raise ValueError("pairwise_kl needs at least 2 members.")
  return float(np.mean([np.mean(np.sum(p[i] * (logp[i] - logp[j]), axis=-1)) for i, j in pairs]))


def predictive_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """accuracy, nll, ece, brier of one predictor."""
  return {"accuracy": accuracy(probs, labels), "nll": nll(probs, labels),
          "ece": ece(probs, labels), "brier": brier(probs, labels)}


def per_class_accuracy(probs: np.ndarray, labels: np.ndarray) -> list[float]:
  """Accuracy on the examples of each class k = 0..K-1 (NaN for a class without examples)."""
  correct = np.argmax(probs, axis=-1) == labels
  k = probs.shape[-1]
  return [float(correct[labels == c].mean()) if np.any(labels == c) else float("nan") for c in range(k)]


def vote_probs(member_probs: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
  """Weighted vote: the (weighted) fraction of members whose argmax is each class. [M,N,K] -> [N,K]."""
  member_probs = np.asarray(member_probs)
  votes = np.eye(member_probs.shape[-1])[np.argmax(member_probs, axis=-1)]
  return ensemble_probs(votes, weights)


COMBINE_RULES = ("mean", "vote")


def evaluate_ensemble(member_probs: np.ndarray, labels: np.ndarray,
                      weights: Sequence[float] | None = None, combine: str = "mean") -> dict:
  """Ensemble metrics (with per-class accuracy), each member's metrics and diversity (M >= 2).

  ``combine``: ``mean`` of (weighted) probabilities, or weighted ``vote`` of the members' argmax
  (its NLL uses the vote fractions as probabilities, floored at 1e-12).
  Returns {"ensemble": {...}, "members": [{...}] * M, "diversity": {"disagreement", "kl"}}.
  """
  member_probs = np.asarray(member_probs, np.float64)
  if member_probs.ndim != 3 or member_probs.shape[1] != len(labels):
    raise ValueError(f"member_probs must be [M, N, K] with N = {len(labels)}, got {member_probs.shape}.")
  if combine not in COMBINE_RULES:
    raise ValueError(f"combine must be one of {COMBINE_RULES}, got {combine!r}.")
  ens = ensemble_probs(member_probs, weights) if combine == "mean" else vote_probs(member_probs, weights)
  out = {
      "ensemble": {**predictive_metrics(ens, labels), "per_class_accuracy": per_class_accuracy(ens, labels)},
      "members": [predictive_metrics(p, labels) for p in member_probs],
  }
  if len(member_probs) >= 2:
    out["diversity"] = {"disagreement": disagreement(member_probs), "kl": pairwise_kl(member_probs)}
  return out
