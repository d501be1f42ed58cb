import numpy as np
import pytest

from ensembles import metrics

PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
LABELS = np.array([0, 1, 0, 1])


def test_accuracy_nll_brier_by_hand():
  assert metrics.accuracy(PROBS, LABELS) == 0.5
  expected_nll = -(np.log(0.7) + np.log(0.6) + np.log(0.3) + np.log(0.4)) / 4
  assert metrics.nll(PROBS, LABELS) == pytest.approx(expected_nll)
  brier = ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.4**2 + 0.3**2) + (0.7**2 + 0.3**2 + 0.4**2)
           + (0.5**2 + 0.6**2 + 0.1**2)) / 4
  assert metrics.brier(PROBS, LABELS) == pytest.approx(brier)


def test_ece_by_hand():
  # confidences 0.7, 0.6, 0.4, 0.5 fall in 15 bins as floor(c*15) = 10, 9, 6, 7: one example per bin,
  # so ECE = mean |correct - conf| = (0.3 + 0.4 + 0.4 + 0.5) / 4.
  assert metrics.ece(PROBS, LABELS) == pytest.approx((0.3 + 0.4 + 0.4 + 0.5) / 4)
  # with 2 bins: [0, .5) holds 0.4 (wrong); [.5, 1] holds .7 (right), .6 (right), .5 (wrong)
  expected = (1 / 4) * abs(0 - 0.4) + (3 / 4) * abs(2 / 3 - (0.7 + 0.6 + 0.5) / 3)
  assert metrics.ece(PROBS, LABELS, num_bins=2) == pytest.approx(expected)


def test_perfectly_calibrated_and_certain():
  onehot = np.eye(3)[[0, 1, 2]]
  labels = np.array([0, 1, 2])
  assert metrics.ece(onehot, labels) == 0.0
  assert metrics.brier(onehot, labels) == 0.0
  assert metrics.nll(onehot, labels) == pytest.approx(0.0, abs=1e-9)


def test_disagreement_and_kl_by_hand():
  a = np.array([[0.9, 0.1], [0.2, 0.8]])
  b = np.array([[0.4, 0.6], [0.3, 0.7]])
  c = np.array([[0.8, 0.2], [0.6, 0.4]])
  members = np.stack([a, b, c])
  # argmax: a -> [0, 1], b -> [1, 1], c -> [0, 0]; pairs (a,b)=1/2, (a,c)=1/2, (b,c)=1
  assert metrics.disagreement(members) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
  kl = lambda p, q: np.mean(np.sum(p * np.log(p / q), axis=-1))
  pairs = [(a, b), (b, a), (a, c), (c, a), (b, c), (c, b)]
  assert metrics.pairwise_kl(members) == pytest.approx(np.mean([kl(p, q) for p, q in pairs]))
  assert metrics.pairwise_kl(np.stack([a, a])) == pytest.approx(0.0)
  assert metrics.disagreement(np.stack([a, a, a, a])) == 0.0


def test_ensemble_average_and_weights():
  members = np.stack([PROBS, np.roll(PROBS, 1, axis=-1)])
  np.testing.assert_allclose(metrics.ensemble_probs(members), members.mean(0))
  np.testing.assert_allclose(metrics.ensemble_probs(members, [3, 1]), 0.75 * members[0] + 0.25 * members[1])
  with pytest.raises(ValueError, match="non-negative"):
    metrics.ensemble_probs(members, [1, -1])


def test_evaluate_ensemble_structure_and_errors():
  members = np.stack([PROBS, PROBS[::-1], PROBS])
  out = metrics.evaluate_ensemble(members, LABELS)
  assert len(out["members"]) == 3 and set(out["diversity"]) == {"disagreement", "kl"}
  assert out["members"][0] == metrics.predictive_metrics(PROBS, LABELS)
  assert "diversity" not in metrics.evaluate_ensemble(members[:1], LABELS)
  with pytest.raises(ValueError, match="disagreement needs at least 2"):
    metrics.disagreement(members[:1])
  with pytest.raises(ValueError, match=r"\[M, N, K\]"):
    metrics.evaluate_ensemble(PROBS, LABELS)
