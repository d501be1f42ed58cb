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
  assert out["members"][0] == {**metrics.predictive_metrics(PROBS, LABELS), **metrics.top_class(PROBS)}
  assert "diversity" not in metrics.evaluate_ensemble(members[:1], LABELS)
  with pytest.raises(ValueError, match="disagreement needs at least 2"):
    metrics.disagreement(members[:1])
  with pytest.raises(ValueError, match=r"\[M, N, K\]"):
    metrics.evaluate_ensemble(PROBS, LABELS)


def test_accuracy_and_per_class_accuracy_by_hand():
  labels = np.array([0, 1, 2, 1])  # argmax of PROBS: 0, 1, 2, 0 -> right, right, right, wrong
  assert metrics.accuracy(PROBS, labels) == 0.75
  per_class = metrics.per_class_accuracy(PROBS, labels)
  assert per_class == [1.0, 0.5, 1.0]
  per_class = metrics.per_class_accuracy(PROBS, np.array([0, 1, 1, 1]))  # class 2 has no example
  assert per_class[:2] == [1.0, pytest.approx(1 / 3)] and np.isnan(per_class[2])  # class 1: right, wrong, wrong


def test_weighted_mean_and_weighted_vote_by_hand():
  a = np.array([[0.6, 0.4, 0.0], [0.1, 0.2, 0.7]])
  b = np.array([[0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
  c = np.array([[0.1, 0.8, 0.1], [0.5, 0.4, 0.1]])
  members, w = np.stack([a, b, c]), np.array([3.0, 1.0, 1.0])
  np.testing.assert_allclose(metrics.combine_probs(members, w, "mean"), (3 * a + b + c) / 5)
  # votes: example 0: a -> 0, b -> 1, c -> 1; example 1: a -> 2, b -> 2, c -> 0
  expected = np.array([[3 / 5, 2 / 5, 0.0], [1 / 5, 0.0, 4 / 5]])
  np.testing.assert_allclose(metrics.combine_probs(members, w, "vote"), expected)
  np.testing.assert_allclose(metrics.combine_probs(members, None, "vote"), [[1 / 3, 2 / 3, 0], [1 / 3, 0, 2 / 3]])
  with pytest.raises(ValueError, match="combine must be one of"):
    metrics.combine_probs(members, w, "median")
  for bad in ([1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0]):
    with pytest.raises(ValueError, match="weights must be 3 non-negative numbers with a positive sum"):
      metrics.ensemble_probs(members, bad)
  np.testing.assert_allclose(metrics.ensemble_probs(members, [0.0, 1.0, 0.0]), b)  # a zero weight is allowed


def test_weighted_ood_scores_by_hand():
  a = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
  b = np.array([[0.1, 0.9], [0.5, 0.5], [0.6, 0.4]])
  h = lambda p: -np.sum(p * np.log(p), axis=-1)
  s = metrics.ood_scores(np.stack([a, b]), [3.0, 1.0])
  mean = 0.75 * a + 0.25 * b
  np.testing.assert_allclose(s["msp"], 1 - mean.max(1))
  np.testing.assert_allclose(s["entropy"], h(mean))
  np.testing.assert_allclose(s["mutual_information"], h(mean) - (0.75 * h(a) + 0.25 * h(b)))
  assert metrics.fpr_at_tpr(np.array([0.1, 0.2, 0.5]), np.array([0.3, 0.6]), tpr=1.0) == pytest.approx(1 / 3)


def test_pairwise_kl_on_several_examples_and_classes():
  rng = np.random.default_rng(0)
  p = rng.dirichlet(np.ones(5), size=(2, 3))  # M = 2 members, N = 3 examples, K = 5 classes
  kl = lambda x, y: np.mean(np.sum(x * np.log(x / y), axis=1))
  assert metrics.pairwise_kl(p) == pytest.approx((kl(p[0], p[1]) + kl(p[1], p[0])) / 2)


def test_evaluate_ensemble_weighted_by_hand():
  other = np.roll(PROBS, 1, axis=-1)  # argmax 1, 2, 0, 1
  out = metrics.evaluate_ensemble(np.stack([PROBS, other]), LABELS, weights=[3.0, 1.0])
  mean = 0.75 * PROBS + 0.25 * other
  correct = mean.argmax(1) == LABELS
  assert set(out["ensemble"]) == {"accuracy", "nll", "ece", "brier", "per_class_accuracy", "reliability"}
  assert out["ensemble"]["accuracy"] == pytest.approx(correct.mean())
  assert out["ensemble"]["nll"] == pytest.approx(-np.mean(np.log(mean[np.arange(4), LABELS])))
  assert out["ensemble"]["per_class_accuracy"] == [correct[LABELS == 0].mean(), correct[LABELS == 1].mean(),
                                                   pytest.approx(np.nan, nan_ok=True)]
  assert out["diversity"]["disagreement"] == pytest.approx(np.mean(PROBS.argmax(1) != other.argmax(1)))
  # reliability bins: each example's confidence in bin floor(15 c), with its count, confidence and accuracy
  rel, conf = out["ensemble"]["reliability"], mean.max(1)
  bins = np.floor(conf * 15).astype(int)
  assert sum(rel["count"]) == 4 and len(rel["count"]) == 15
  for b in set(bins.tolist()):
    assert rel["count"][b] == np.sum(bins == b)
    assert rel["confidence"][b] == pytest.approx(conf[bins == b].mean())
    assert rel["accuracy"][b] == pytest.approx(correct[bins == b].mean())
  assert all(rel["confidence"][b] is None for b in range(15) if b not in bins)


def test_weighted_ood_detection_uses_the_weights_on_both_sets():
  rng = np.random.default_rng(3)
  p_in, p_out = rng.dirichlet(np.ones(3), (2, 40)), rng.dirichlet(np.ones(3), (2, 30))
  w = [5.0, 1.0]
  out = metrics.ood_detection(p_in, p_out, w)
  for score in ("msp", "entropy", "mutual_information"):
    s_in, s_out = metrics.ood_scores(p_in, w)[score], metrics.ood_scores(p_out, w)[score]
    assert out[score] == {"auroc": metrics.auroc(s_in, s_out), "aupr": metrics.aupr(s_in, s_out),
                          "fpr95": metrics.fpr_at_tpr(s_in, s_out, 0.95)}
  assert out["msp"]["auroc"] != metrics.ood_detection(p_in, p_out)["msp"]["auroc"]
