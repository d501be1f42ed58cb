"""OoD detection metrics against hand-computed cases, a reference implementation, and the scores."""
import numpy as np
import pytest
from sklearn import metrics as skm

from ensembles import metrics


def test_perfect_scores():
  s_in, s_out = np.array([0.0, 0.1, 0.2]), np.array([0.8, 0.9])
  assert metrics.auroc(s_in, s_out) == 1.0
  assert metrics.aupr(s_in, s_out) == 1.0
  assert metrics.fpr_at_tpr(s_in, s_out) == 0.0


def test_inverted_scores():
  s_in, s_out = np.array([0.8, 0.9, 1.0]), np.array([0.0, 0.1])
  assert metrics.auroc(s_in, s_out) == 0.0
  assert metrics.fpr_at_tpr(s_in, s_out) == 1.0  # every in-distribution example scores above both OoD ones
  # ranking 1.0 N, 0.9 N, 0.8 N, 0.1 P (precision 1/4, recall 1/2), 0.0 P (precision 2/5, recall 1)
  assert metrics.aupr(s_in, s_out) == pytest.approx(0.5 * 1 / 4 + 0.5 * 2 / 5)


def test_uninformative_scores():
  s_in, s_out = np.full(30, 0.3), np.full(10, 0.3)  # every score tied
  assert metrics.auroc(s_in, s_out) == 0.5
  assert metrics.aupr(s_in, s_out) == pytest.approx(10 / 40)  # the fraction of positives
  assert metrics.fpr_at_tpr(s_in, s_out) == 1.0
  rng = np.random.default_rng(0)  # random scores from one distribution
  s_in, s_out = rng.random(20000), rng.random(20000)
  assert metrics.auroc(s_in, s_out) == pytest.approx(0.5, abs=0.01)
  assert metrics.aupr(s_in, s_out) == pytest.approx(0.5, abs=0.01)
  assert metrics.fpr_at_tpr(s_in, s_out) == pytest.approx(0.95, abs=0.01)


def test_small_case_with_a_tie_by_hand():
  s_in, s_out = np.array([0.1, 0.4, 0.35]), np.array([0.8, 0.35])
  # pairs (out > in): 0.8 beats all 3; 0.35 beats 0.1, loses to 0.4, ties 0.35 (counts 1/2)
  assert metrics.auroc(s_in, s_out) == pytest.approx(4.5 / 6)
  # thresholds 0.8 (P 1, R 1/2), 0.4 (R unchanged), 0.35 (P 2/4, R 1)
  assert metrics.aupr(s_in, s_out) == pytest.approx(0.5 * 1 + 0.5 * 0.5)
  # detecting 95% of 2 OoD examples needs threshold 0.35; in-distribution 0.4 and 0.35 pass it
  assert metrics.fpr_at_tpr(s_in, s_out) == pytest.approx(2 / 3)


@pytest.mark.parametrize("rounding", [None, 1])
def test_matches_scikit_learn(rounding):
  rng = np.random.default_rng(1)
  s_in, s_out = rng.normal(size=500), rng.normal(0.8, size=300)
  if rounding is not None:  # many ties
    s_in, s_out = np.round(s_in, rounding), np.round(s_out, rounding)
  y, s = np.r_[np.zeros(500), np.ones(300)], np.r_[s_in, s_out]
  assert metrics.auroc(s_in, s_out) == pytest.approx(skm.roc_auc_score(y, s))
  assert metrics.aupr(s_in, s_out) == pytest.approx(skm.average_precision_score(y, s))
  fpr, tpr, _ = skm.roc_curve(y, s)
  assert metrics.fpr_at_tpr(s_in, s_out) == pytest.approx(fpr[np.searchsorted(tpr, 0.95)])


def test_scores():
  k = 4
  uniform = np.full((2, 3, k), 1 / k)
  s = metrics.ood_scores(uniform)
  np.testing.assert_allclose(s["entropy"], np.log(k))
  np.testing.assert_allclose(s["msp"], 1 - 1 / k)
  np.testing.assert_allclose(s["mutual_information"], 0.0, atol=1e-12)  # members agree
  confident_disagreeing = np.stack([np.eye(k)[[0, 1, 2]], np.eye(k)[[1, 2, 3]]]) * 0.97 + 0.01
  mi = metrics.ood_scores(confident_disagreeing)["mutual_information"]
  assert np.all(mi > 0.5)  # high when members disagree
  assert "mutual_information" not in metrics.ood_scores(uniform[:1])  # needs M >= 2


def test_ood_detection_separates_confident_from_uncertain():
  rng = np.random.default_rng(0)
  confident = np.broadcast_to(np.eye(5)[rng.integers(0, 5, 50)] * 0.9 + 0.02, (3, 50, 5))
  uncertain = np.full((3, 40, 5), 0.2)
  out = metrics.ood_detection(confident, uncertain)
  assert out["msp"]["auroc"] == 1.0 and out["entropy"]["fpr95"] == 0.0
  # the members agree on both sets, so the mutual information is ~0 everywhere: it carries no signal here
  for probs in (confident, uncertain):
    np.testing.assert_allclose(metrics.ood_scores(probs)["mutual_information"], 0.0, atol=1e-12)


def test_errors():
  with pytest.raises(ValueError, match="need in- and out-of-distribution scores"):
    metrics.auroc(np.array([]), np.array([1.0]))
  with pytest.raises(ValueError, match="finite"):
    metrics.aupr(np.array([np.nan]), np.array([1.0]))
  with pytest.raises(ValueError, match="tpr must be in"):
    metrics.fpr_at_tpr(np.array([0.0]), np.array([1.0]), tpr=0.0)


def test_reliability_bins_reproduce_ece():
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(5), 200)
  labels = rng.integers(0, 5, 200)
  bins = metrics.reliability_bins(probs, labels)
  assert sum(bins["count"]) == 200
  gap = sum(n * abs(a - c) for n, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"]) if n)
  assert gap / 200 == pytest.approx(metrics.ece(probs, labels))
  assert all((n == 0) == (a is None) for n, a in zip(bins["count"], bins["accuracy"]))
