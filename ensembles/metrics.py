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


def combine_probs(member_probs: np.ndarray, weights: Sequence[float] | None = None, combine: str = "mean") -> np.ndarray:
  """The ensemble's prediction [N, K]: weighted ``mean`` of probabilities or weighted ``vote``."""
  if combine not in COMBINE_RULES:
    raise ValueError(f"combine must be one of {COMBINE_RULES}, got {combine!r}.")
  return ensemble_probs(member_probs, weights) if combine == "mean" else vote_probs(member_probs, weights)


def evaluate_ensemble(member_probs: np.ndarray, labels: np.ndarray,
                      weights: Sequence[float] | None = None, combine: str = "mean") -> dict:
  """Ensemble metrics (with per-class accuracy), each member's metrics and diversity (M >= 2).

  ``combine``: ``mean`` of (weighted) probabilities, or weighted ``vote`` of the members' argmax
  (its NLL uses the vote fractions as probabilities, floored at 1e-12).
  Returns {"ensemble": {..., "per_class_accuracy", "reliability"}, "members": [{..., "top_class",
  "top_class_share"}] * M,
  "diversity": {"disagreement", "kl"}}.
  """
  member_probs = np.asarray(member_probs, np.float64)
  if member_probs.ndim != 3 or member_probs.shape[1] != len(labels) or 0 in member_probs.shape:
    raise ValueError(f"member_probs must be [M, N, K] with N = {len(labels)} labels and M, N, K >= 1, got "
                     f"{member_probs.shape}.")
  ens = combine_probs(member_probs, weights, combine)
  out = {
      "ensemble": {**predictive_metrics(ens, labels), "per_class_accuracy": per_class_accuracy(ens, labels),
                   "reliability": reliability_bins(ens, labels)},
      "members": [{**predictive_metrics(p, labels), **top_class(p)} for p in member_probs],
  }
  if len(member_probs) >= 2:
    out["diversity"] = {"disagreement": disagreement(member_probs), "kl": pairwise_kl(member_probs)}
  return out


def top_class(probs: np.ndarray) -> dict:
  """The class most of probs [N, K]'s argmax predictions fall in, and their share of N (1.0: one
  class predicted for every example; `health` flags such collapse)."""
  share = np.bincount(np.asarray(probs).argmax(-1), minlength=probs.shape[-1]) / probs.shape[0]
  return {"top_class": int(share.argmax()), "top_class_share": float(share.max())}


def reliability_bins(probs: np.ndarray, labels: np.ndarray, num_bins: int = ECE_BINS) -> dict[str, list]:
  """Per confidence bin (the bins of `ece`): example count, mean confidence and accuracy (None when
  empty) -- the data of a reliability diagram. ece = Σ_b count_b |accuracy_b − confidence_b| / N."""
  p = np.asarray(probs, np.float64)
  conf = p.max(axis=-1)
  correct = (p.argmax(axis=-1) == labels).astype(np.float64)
  bins = np.minimum((conf * num_bins).astype(np.int64), num_bins - 1)
  count = np.bincount(bins, minlength=num_bins)
  sum_conf = np.bincount(bins, weights=conf, minlength=num_bins)
  sum_acc = np.bincount(bins, weights=correct, minlength=num_bins)
  mean = lambda s: [float(v / n) if n else None for v, n in zip(s, count)]
  return {"count": count.tolist(), "confidence": mean(sum_conf), "accuracy": mean(sum_acc)}


# ---------------------------------------------------------------------------------------------------
# Out-of-distribution detection. Convention: out-of-distribution (OoD) examples are the positive
# class and every score is an *uncertainty* (higher = more likely OoD).

OOD_SCORES = ("msp", "entropy", "mutual_information")


def entropy(probs: np.ndarray) -> np.ndarray:
  """H(p) = −Σ_k p_k log p_k in nats, over the last axis."""
  p = np.asarray(probs, np.float64)
  return -np.sum(p * np.log(np.maximum(p, _TINY)), axis=-1)


def ood_scores(member_probs: np.ndarray, weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
  """Uncertainty scores [N] from member probabilities [M, N, K] (higher = more likely OoD):

  msp: 1 − max_k p̄_k (one minus the ensemble's maximum softmax probability);
  entropy: H(p̄), the predictive entropy of the ensemble p̄ = Σ_m w_m p_m;
  mutual_information: H(p̄) − Σ_m w_m H(p_m) >= 0, the members' disagreement (only for M >= 2).
  """
  member_probs = np.asarray(member_probs, np.float64)
  mean = ensemble_probs(member_probs, weights)
  out = {"msp": 1.0 - mean.max(axis=-1), "entropy": entropy(mean)}
  if len(member_probs) >= 2:
    w = np.full(len(member_probs), 1.0 / len(member_probs)) if weights is None else (
        np.asarray(weights, np.float64) / np.sum(weights))
    out["mutual_information"] = np.maximum(out["entropy"] - np.tensordot(w, entropy(member_probs), axes=1), 0.0)
  return out


def _check_scores(in_scores: np.ndarray, out_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  in_scores, out_scores = np.asarray(in_scores, np.float64).ravel(), np.asarray(out_scores, np.float64).ravel()
  if not (len(in_scores) and len(out_scores)):
    raise ValueError(f"OoD metrics need in- and out-of-distribution scores, got {len(in_scores)} and "
                     f"{len(out_scores)} examples.")
  if not (np.all(np.isfinite(in_scores)) and np.all(np.isfinite(out_scores))):
    raise ValueError("OoD scores must be finite.")
  return in_scores, out_scores


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
  """Area under the ROC curve with OoD as positives: P(s_out > s_in) + ½ P(s_out = s_in)
  (the Mann–Whitney statistic, ties counted half). 1 = perfect, 0.5 = chance, 0 = inverted."""
  in_scores, out_scores = _check_scores(in_scores, out_scores)
  both = np.concatenate([in_scores, out_scores])
  order = np.argsort(both, kind="mergesort")
  sorted_scores = both[order]
  # 1-based ranks, averaged over each run [s, e) of equal scores: (s + 1 + e) / 2
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  ends = np.r_[starts[1:], len(both)]
  ranks = np.empty(len(both))
  ranks[order] = np.repeat(0.5 * (starts + 1 + ends), ends - starts)
  n_in, n_out = len(in_scores), len(out_scores)
  rank_sum_out = ranks[n_in:].sum()
  return float((rank_sum_out - n_out * (n_out + 1) / 2) / (n_in * n_out))


def aupr(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
  """Area under the precision-recall curve with OoD as positives, as average precision:
  Σ_t (R_t − R_{t−1}) P_t over the distinct score thresholds t taken from high to low."""
  in_scores, out_scores = _check_scores(in_scores, out_scores)
  scores = np.concatenate([in_scores, out_scores])
  positive = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
  order = np.argsort(-scores, kind="mergesort")
  scores, positive = scores[order], positive[order]
  last_of_threshold = np.r_[scores[1:] != scores[:-1], True]
  tp = np.cumsum(positive)[last_of_threshold]
  predicted = (np.arange(1, len(scores) + 1))[last_of_threshold]
  precision = tp / predicted
  recall = tp / len(out_scores)
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
  """False-positive rate at the smallest threshold t detecting at least ``tpr`` of the OoD examples
  (s >= t flags OoD): the fraction of in-distribution examples with s >= t. 0 = perfect."""
  in_scores, out_scores = _check_scores(in_scores, out_scores)
  if not 0 < tpr <= 1:
    raise ValueError(f"tpr must be in (0, 1], got {tpr}.")
  k = int(np.ceil(tpr * len(out_scores)))  # OoD examples that must be flagged
  threshold = np.sort(out_scores)[::-1][k - 1]
  return float(np.mean(in_scores >= threshold))


def ood_detection(in_member_probs: np.ndarray, out_member_probs: np.ndarray,
                  weights: Sequence[float] | None = None) -> dict[str, dict[str, float]]:
  """AUROC, AUPR (OoD positive) and FPR at 95% TPR for each score of `ood_scores`.

  in_member_probs [M, N_in, K] and out_member_probs [M, N_out, K] are the same members' predictions
  on the in-distribution test set and on the OoD set. Returns {score: {auroc, aupr, fpr95}}.
  """
  s_in, s_out = ood_scores(in_member_probs, weights), ood_scores(out_member_probs, weights)
  return {name: {"auroc": auroc(s_in[name], s_out[name]), "aupr": aupr(s_in[name], s_out[name]),
                 "fpr95": fpr_at_tpr(s_in[name], s_out[name], 0.95)} for name in s_in}
