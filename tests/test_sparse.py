"""Sparse machinery: densities, exact masks, prune-and-grow, the masked optimizer."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ensembles import members, sparse
from ensembles.models import build_model

SHAPES = {"conv1": (3, 3, 3, 16), "conv2": (3, 3, 16, 32), "fc": (512, 10)}


def _params():
  model = build_model("lenet", 10, {"features": (8, 16), "hidden": (32,), "kernel_size": 3})
  return model.init(jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 1)))["params"]


def test_erk_formula_and_exact_total():
  densities = sparse.layer_densities(SHAPES, 0.2, "erk")
  raw = {k: sum(s) / math.prod(s) for k, s in SHAPES.items()}
  eps = {k: densities[k] / raw[k] for k in SHAPES if densities[k] < 1}
  assert len(set(np.round(list(eps.values()), 10))) == 1  # one ε for every non-dense layer
  total = sum(densities[k] * math.prod(s) for k, s in SHAPES.items())
  assert total == pytest.approx(0.2 * sum(math.prod(s) for s in SHAPES.values()))
  counts = sparse.layer_counts(SHAPES, densities)
  assert sum(counts.values()) == round(0.2 * sum(math.prod(s) for s in SHAPES.values()))


def test_erk_makes_small_layers_dense_and_resolves():
  shapes = {"tiny": (3, 3, 1, 2), "big": (3, 3, 64, 64)}
  densities = sparse.layer_densities(shapes, 0.5, "erk")
  assert densities["tiny"] == 1.0 and densities["big"] < 1.0
  n = {k: math.prod(s) for k, s in shapes.items()}
  assert densities["big"] * n["big"] + n["tiny"] == pytest.approx(0.5 * sum(n.values()))


def test_counts_stay_exact_when_the_one_weight_floor_bites():
  shapes = {"a": (2, 2), "b": (2, 2), "big": (100, 100)}
  counts = sparse.layer_counts(shapes, {"a": 0.01, "b": 0.01, "big": 0.01})
  assert counts["a"] == counts["b"] == 1 and sum(counts.values()) == round(0.01 * 10008)


def test_uniform_densities():
  assert sparse.layer_densities(SHAPES, 0.3, "uniform") == {k: 0.3 for k in SHAPES}


def test_plan_and_masks_have_exact_counts():
  params = _params()
  plan = sparse.make_plan(params, 0.8, "erk")
  masks = sparse.init_masks(jax.random.PRNGKey(1), params, plan)
  assert jax.tree.structure(masks) == jax.tree.structure(params)
  flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_flatten_with_path(masks)[0]}
  for name, count in plan.counts.items():
    assert int(flat[name].sum()) == count
  for name, m in flat.items():
    if name not in plan.counts:
      assert bool(m.all())  # biases and dense layers: all True, never None
  kept = sum(int(flat[k].sum()) for k in plan.sizes)
  assert kept == round(0.2 * sum(plan.sizes.values()))
  assert plan.density == pytest.approx(0.2, abs=1 / sum(plan.sizes.values()))
  # the plan is keyed like the params tree: a kept count and a size for every leaf
  assert jax.tree.structure(plan.kept) == jax.tree.structure(params) == jax.tree.structure(plan.size)
  for (path, kept), size, leaf in zip(jax.tree_util.tree_flatten_with_path(plan.kept)[0], jax.tree.leaves(plan.size),
                                      jax.tree.leaves(params)):
    name = jax.tree_util.keystr(path)
    assert size == leaf.size and kept == plan.counts.get(name, size)


def test_magnitude_init_keeps_largest():
  params = _params()
  plan = sparse.make_plan(params, 0.5, "uniform")
  masks = sparse.init_masks(jax.random.PRNGKey(0), params, plan, "magnitude")
  w, m = params["Dense_0"]["kernel"], masks["Dense_0"]["kernel"]
  assert float(jnp.abs(w)[m].min()) >= float(jnp.abs(w)[~m].max())


def test_members_get_different_masks():
  params = _params()
  plan = sparse.make_plan(params, 0.8, "erk")
  masks = jax.vmap(lambda k: sparse.init_masks(k, params, plan))(jax.random.split(jax.random.PRNGKey(0), 3))
  kernel = masks["Conv_1"]["kernel"]
  assert not np.array_equal(kernel[0], kernel[1]) and not np.array_equal(kernel[1], kernel[2])
  assert len({int(k.sum()) for k in kernel}) == 1


@pytest.mark.parametrize("growth", ["random", "gradient"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_prune_and_grow_keeps_count_and_does_not_regrow_pruned(growth, fraction):
  key = jax.random.PRNGKey(0)
  w = jax.random.normal(key, (20, 30))
  mask = sparse._top_k_mask(jax.random.uniform(jax.random.PRNGKey(1), w.shape), 150)
  w = jnp.where(mask, w, 0.0)
  grad = jax.random.normal(jax.random.PRNGKey(2), w.shape)
  new_w, new_mask, grown = jax.jit(sparse.prune_and_grow_layer, static_argnums=(5, 6))(
      jax.random.PRNGKey(3), w, mask, grad, fraction, growth, False)
  k = round(fraction * 150)
  assert int(new_mask.sum()) == 150
  pruned = mask & ~new_mask
  assert int(pruned.sum()) == k and int(grown.sum()) == k
  assert not bool((grown & mask).any())  # grown only where inactive before: nothing just pruned
  # pruned are the k smallest active magnitudes
  active = np.abs(np.asarray(w))[np.asarray(mask)]
  assert float(jnp.abs(w)[pruned].max()) <= np.sort(active)[k - 1] + 1e-7
  assert bool((new_w[grown] == 0).all()) and bool((new_w[~new_mask] == 0).all())
  np.testing.assert_array_equal(new_w[new_mask & ~grown], w[new_mask & ~grown])


def test_rigl_grows_largest_gradients():
  w = jnp.array([[1.0, 2.0, 0.0], [0.0, 3.0, 0.0]])
  mask = w != 0
  grad = jnp.array([[9.0, 9.0, 0.5], [4.0, 9.0, 7.0]])  # inactive: (0,2)=0.5, (1,0)=4, (1,2)=7
  new_w, new_mask, grown = sparse.prune_and_grow_layer(jax.random.PRNGKey(0), w, mask, grad, 2 / 3, "gradient")
  # k = 2: prune |w| = 1, 2; grow the two largest inactive gradients: (1,2) and (1,0)
  np.testing.assert_array_equal(grown, [[False, False, False], [True, False, True]])
  np.testing.assert_array_equal(new_mask, [[False, False, False], [True, True, True]])
  np.testing.assert_array_equal(new_w, [[0, 0, 0], [0, 3, 0]])


def test_nearly_dense_layer_takes_rest_from_pruned():
  # 5 active of 6: one inactive position, k = round(0.6 * 5) = 3 -> 2 regrow from the just-pruned
  w = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0, 0.0])
  mask = w != 0
  _, new_mask, grown = sparse.prune_and_grow_layer(jax.random.PRNGKey(0), w, mask, None, 0.6)
  assert int(new_mask.sum()) == 5 and bool(grown[5]) and int(grown.sum()) == 3


def test_masked_optimizer_keeps_pruned_weights_zero():
  params = _params()
  plan = sparse.make_plan(params, 0.9, "erk")
  inner = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9, nesterov=True))
  tx = sparse.masked(inner)
  params, state = sparse.init_sparse(jax.random.PRNGKey(0), params, sparse.masked(inner), plan)
  # inject momentum at masked positions: the wrapper must still keep them at zero
  state = state._replace(inner_state=jax.tree.map(lambda x: x + 1.0 if x.dtype == jnp.float32 else x,
                                                  state.inner_state))

  @jax.jit
  def step(params, state, key):
    grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for t in range(50):
    params, state = step(params, state, jax.random.PRNGKey(t))
  for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(state.masks)):
    assert bool((p[~m] == 0).all())
  assert any(bool((p[m] != 0).any()) for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(state.masks)))


def test_update_topology_resets_moments_of_grown_and_pruned():
  params = _params()
  plan = sparse.make_plan(params, 0.8, "uniform")
  inner = optax.sgd(0.1, momentum=0.9)
  params, state = sparse.init_sparse(jax.random.PRNGKey(0), params, sparse.masked(inner), plan)
  state = state._replace(inner_state=jax.tree.map(lambda x: jnp.ones_like(x), state.inner_state))
  grads = jax.tree.map(lambda p: jnp.ones_like(p), params)
  new_params, new_state = sparse.update_topology(jax.random.PRNGKey(1), params, state, grads, 0.5,
                                                sparse.Topology(plan, sparse.masked(inner)))
  old_m, new_m = state.masks["Conv_1"]["kernel"], new_state.masks["Conv_1"]["kernel"]
  trace = new_state.inner_state[0].trace["Conv_1"]["kernel"]
  grown = new_m & ~old_m
  assert int(grown.sum()) > 0 and bool((trace[grown] == 0).all()) and bool((trace[~new_m] == 0).all())
  assert bool((trace[new_m & old_m] == 1).all())
  assert bool((new_params["Conv_1"]["kernel"][grown] == 0).all())
  # dense leaves (biases) untouched
  np.testing.assert_array_equal(new_params["Conv_1"]["bias"], params["Conv_1"]["bias"])


def test_vmapped_topology_update_equals_per_member():
  params = _params()
  plan = sparse.make_plan(params, 0.8, "erk")
  inner = optax.sgd(0.1, momentum=0.9)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  stacked = jax.vmap(lambda k: sparse.init_sparse(k, params, sparse.masked(inner), plan))(keys)
  fn = lambda k, p, s: sparse.update_topology(k, p, s, None, 0.3, sparse.Topology(plan, sparse.masked(inner)))
  out = jax.vmap(fn)(keys, *stacked)
  for i in range(3):
    single = fn(keys[i], *members.member(stacked, i))
    jax.tree.map(np.testing.assert_array_equal, members.member(out, i), single)


def test_growth_either_is_the_flagged_rule_in_one_compiled_update():
  """EDST's regular (gradient, p = 0.5) and global (random, q = 0.8) updates through one jitted
  update with ``growth='either'`` and the larger bound equal the two separate updates exactly."""
  params = _params()
  plan = sparse.make_plan(params, 0.8, "erk")
  tx = sparse.masked(optax.sgd(0.1, momentum=0.9))
  params, state = sparse.init_sparse(jax.random.PRNGKey(0), params, tx, plan)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(3), p.shape), params)
  either = sparse.Topology(plan, tx, growth="either", max_drop_fraction=0.8)
  one = jax.jit(lambda p, s, f, g: sparse.update_topology(jax.random.PRNGKey(1), p, s, grads, f, either, g))
  for fraction, rule in ((0.5, "gradient"), (0.8, "random")):
    separate = sparse.update_topology(jax.random.PRNGKey(1), params, state, grads, fraction,
                                      sparse.Topology(plan, tx, growth=rule, max_drop_fraction=fraction))
    jax.tree.map(np.testing.assert_array_equal, one(params, state, fraction, rule == "gradient"), separate)
  assert one._cache_size() == 1
  with pytest.raises(ValueError, match="growth='either' needs by_gradient"):
    sparse.update_topology(jax.random.PRNGKey(1), params, state, grads, 0.5, either)


def test_drop_fraction_schedules():
  cos = sparse.drop_fraction_schedule(0.5, "cosine", end_step=100, minimum=0.1)
  assert float(cos(0)) == pytest.approx(0.5) and float(cos(50)) == pytest.approx(0.3)
  assert float(cos(100)) == pytest.approx(0.1) and float(cos(200)) == pytest.approx(0.1)
  assert float(sparse.drop_fraction_schedule(0.3, "constant")(77)) == pytest.approx(0.3)


@pytest.mark.parametrize("call,message", [
    (lambda: sparse.make_plan(_params(), 1.0), r"sparse.sparsity must be in \[0, 1\)"),
    (lambda: sparse.make_plan(_params(), -0.1), r"sparse.sparsity must be in \[0, 1\)"),
    (lambda: sparse.make_plan(_params(), 0.5, "snip"), "sparse.density_rule must be one of"),
    (lambda: sparse.drop_fraction_schedule(0.0), r"sparse.drop_fraction must be in \(0, 1\)"),
    (lambda: sparse.drop_fraction_schedule(1.0), r"sparse.drop_fraction must be in \(0, 1\)"),
    (lambda: sparse.drop_fraction_schedule(0.5, "linear"), "sparse.drop_schedule must be"),
    (lambda: sparse.prune_and_grow_layer(jax.random.PRNGKey(0), jnp.ones(4), jnp.ones(4, bool), None, 0.5,
                                         "hebbian"), "sparse.growth must be one of"),
    (lambda: sparse.init_masks(jax.random.PRNGKey(0), _params(), sparse.make_plan(_params(), 0.5), "snip"),
     "sparse.init_rule must be one of"),
    (lambda: sparse.make_plan({"bias": jnp.ones(3)}, 0.5), "no prunable leaves"),
])
def test_bad_input_is_named(call, message):
  with pytest.raises(ValueError, match=message):
    call()


@pytest.mark.parametrize("seed", range(4))
def test_select_top_equals_a_stable_sort(seed):
  """The sort-free selection picks exactly what a stable descending sort would (ties: lower index)."""
  rng = np.random.default_rng(seed)
  n = 3000
  score = np.round(rng.normal(size=n), 1 if seed % 2 else 4).astype(np.float32)  # many ties when rounded
  score[rng.random(n) < 0.05] = 0.0
  score[rng.random(n) < 0.05] = -0.0  # the two zeros compare equal: they tie, lower index first
  eligible = rng.random(n) < 0.4
  for k in (0, 1, 7, 300, int(eligible.sum()), int(eligible.sum()) + 10):
    order = np.argsort(-np.where(eligible, score, -np.inf), kind="stable")
    expected = np.zeros(n, bool)
    expected[order[:min(k, int(eligible.sum()))]] = True
    got = np.asarray(sparse._select_top(jnp.asarray(score), jnp.asarray(eligible), jnp.int32(k), n))
    np.testing.assert_array_equal(got, expected)
    capped = np.asarray(sparse._select_top(jnp.asarray(-score), jnp.asarray(eligible), jnp.int32(k), 5))
    assert capped.sum() == min(k, 5, int(eligible.sum())) and not (capped & ~eligible).any()
