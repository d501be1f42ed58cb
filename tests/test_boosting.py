import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensembles import boosting, data


def _case():
  labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1])
  probs = jax.nn.one_hot(jnp.array([0, 1, 2, 0, 1, 0, 1, 1]), 3) * 0.8 + 0.2 / 3  # wrong: 5, 6
  return probs, labels


def test_samme_textbook_case():
  probs, labels = _case()
  w, alpha, err = boosting.reweight(jnp.ones(8), probs, labels, "samme")
  assert float(err) == pytest.approx(2 / 8)
  assert float(alpha) == pytest.approx(np.log(0.75 / 0.25) + np.log(2))
  wrong = np.array([0, 0, 0, 0, 0, 1, 1, 0], bool)
  raw = np.where(wrong, np.exp(float(alpha)), 1.0)
  np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-6)
  assert float(jnp.mean(w)) == pytest.approx(1.0)
  assert bool((w[wrong] > 1).all()) and bool((w[~wrong] < 1).all())


@pytest.mark.parametrize("rule", boosting.RULES)
def test_shrinkage_scales_the_exponent_not_alpha(rule):
  """ν: w <- w·exp(ν·α·[wrong]) (samme_r: the exponent times ν); the checkpoint's α is unchanged."""
  probs, labels = _case()
  full, alpha, err = boosting.reweight(jnp.ones(8), probs, labels, rule)
  half, alpha_half, err_half = boosting.reweight(jnp.ones(8), probs, labels, rule, shrinkage=0.5)
  assert float(alpha_half) == float(alpha) and float(err_half) == float(err)
  raw = np.asarray(full)  # mean-1 exp(exponent): its square root is exp(exponent / 2), up to the mean
  np.testing.assert_allclose(half, np.sqrt(raw) / np.sqrt(raw).mean(), rtol=1e-5)
  assert not np.allclose(half, full)


def test_samme_with_unequal_weights_by_hand():
  """The error is weighted by the current sample weights: the same two mistakes cost more when they
  fall on heavy examples (weights 3 on the misclassified 5 and 6, 1 elsewhere: err = 6 / 12)."""
  probs, labels = _case()
  start = jnp.array([1.0, 1, 1, 1, 1, 3, 3, 1])
  w, alpha, err = boosting.reweight(start, probs, labels, "samme", eps=1e-3)
  assert float(err) == pytest.approx(6 / 12)
  assert float(alpha) == pytest.approx(np.log(0.5 / 0.5) + np.log(2))
  raw = np.where(np.isin(np.arange(8), [5, 6]), np.asarray(start) * 2.0, np.asarray(start))  # e^alpha = 2
  np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-6)


@pytest.mark.parametrize("rule", ["samme", "samme_r"])
def test_misclassified_gain_weight_and_mean_stays_one(rule):
  probs, labels = _case()
  start = jnp.linspace(0.5, 1.5, 8)
  w, _, _ = boosting.reweight(start, probs, labels, rule)
  ratio = np.asarray(w) / np.asarray(boosting.normalize(start))
  wrong = np.array([0, 0, 0, 0, 0, 1, 1, 0], bool)
  assert ratio[wrong].min() > 1 > ratio[~wrong].max()
  assert float(jnp.mean(w)) == pytest.approx(1.0, rel=1e-6)


def test_alpha_finite_at_zero_error_and_at_chance():
  labels = jnp.array([0, 1, 2, 3])
  perfect = jax.nn.one_hot(labels, 4)
  w, alpha, err = boosting.reweight(jnp.ones(4), perfect, labels, "samme")
  assert float(err) == 0.0 and np.isfinite(float(alpha)) and bool(jnp.all(jnp.isfinite(w)))
  assert float(boosting.samme_alpha(jnp.array(0.9), 4)) > 0  # worse than chance is clipped
  w_r, alpha_r, _ = boosting.reweight(jnp.ones(4), perfect, labels, "samme_r")
  assert bool(jnp.all(jnp.isfinite(w_r))) and float(alpha_r) == 1.0


def test_cap_on_max_over_mean():
  probs, labels = _case()
  w, _, _ = boosting.reweight(jnp.ones(8), probs, labels, "samme", max_ratio=1.5)
  assert float(jnp.max(w) / jnp.mean(w)) <= 1.5 + 1e-5 and float(jnp.mean(w)) == pytest.approx(1.0)


def test_cap_is_exact_where_repeated_clipping_was_not():
  # 20 clip-and-renormalise passes left max/mean at 2.063 here
  w = boosting.cap_ratio(jnp.concatenate([jnp.full(400, 100.0), jnp.ones(600)]), 2.0)
  assert float(jnp.max(w) / jnp.mean(w)) == pytest.approx(2.0, rel=1e-6)
  np.testing.assert_allclose(w[:400], 2.0, rtol=1e-6)  # the clipped group sits exactly at the cap
  np.testing.assert_allclose(w[400:], 1 / 3, rtol=1e-6)  # the rest keep their ratios (mean 1)


@hypothesis.settings(deadline=None, max_examples=60, derandomize=True)
@hypothesis.given(
    hnp.arrays(np.float32, st.integers(2, 50), elements=st.floats(0.015625, 1000.0, width=32)),
    st.floats(1.0, 10.0, width=32))
def test_cap_random_weights(raw, ratio):
  w = np.asarray(boosting.cap_ratio(jnp.asarray(raw), ratio), np.float64)
  mean_one = raw / raw.mean()
  assert w.mean() == pytest.approx(1.0, rel=1e-5)
  if mean_one.max() <= ratio:
    np.testing.assert_allclose(w, mean_one, rtol=1e-5)  # nothing to cap
    return
  assert w.max() == pytest.approx(ratio, rel=1e-4)
  # order is kept and unclipped weights keep their ratios to each other
  assert np.all(np.diff(w[np.argsort(raw, kind="stable")]) >= -1e-5 * ratio)
  free = w < ratio * (1 - 1e-4)
  if free.sum() >= 2:
    np.testing.assert_allclose(w[free] / w[free].max(), raw[free] / raw[free].max(), rtol=1e-4)


def test_vmapped_over_runs_equals_per_run():
  probs, labels = _case()
  weights = jnp.stack([jnp.ones(8), jnp.linspace(0.5, 1.5, 8)])
  batched = jax.vmap(lambda w: boosting.reweight(w, probs, labels, "samme"))(weights)
  for i in range(2):
    single = boosting.reweight(weights[i], probs, labels, "samme")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-6), batched, single)


def test_unknown_rule_is_named():
  probs, labels = _case()
  with pytest.raises(ValueError, match="cbnn.rule must be one of"):
    boosting.reweight(jnp.ones(8), probs, labels, "adaboost_m2")


@pytest.mark.parametrize("ratio", [1.0, 10.0, 100.0])
def test_long_tailed_counts_follow_formula(ratio):
  counts = data.long_tailed_counts(5000, 10, ratio)
  expected = [int(np.floor(5000 * ratio ** (-c / 9) + 1e-9)) for c in range(10)]
  assert counts == expected and counts[0] == 5000 and counts[-1] == int(5000 / ratio)
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(10), 5000).astype(np.int32)
  x = np.arange(len(y))[:, None, None, None].astype(np.uint8)
  _, y_lt = data.long_tailed_subset(x, y, 10, ratio, rng)
  assert np.bincount(y_lt, minlength=10).tolist() == counts


def test_long_tailed_ratio_below_one_is_named():
  with pytest.raises(ValueError, match="dataset.imbalance_ratio must be >= 1"):
    data.long_tailed_counts(100, 10, 0.5)
