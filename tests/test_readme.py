"""The README's Python example runs as written."""
import os
import re

from conftest import requires_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_block(marker: str, namespace: dict | None = None) -> dict:
  """Executes the one README Python block containing ``marker`` (in ``namespace``: a previous
  block's); returns its namespace."""
  text = open(os.path.join(ROOT, "README.md")).read()
  blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if marker in b]
  assert len(blocks) == 1, f"README has {len(blocks)} Python blocks with {marker!r}"
  namespace = {} if namespace is None else namespace
  exec(compile(blocks[0], "README.md", "exec"), namespace)  # pylint: disable=exec-used
  return namespace


@requires_fashion_mnist
def test_readme_python_example_runs():
  namespace = _run_block("keys = jax.random.split(jax.random.PRNGKey(1), 4)")
  probs = namespace["probs"]
  assert probs.shape == (4, 10000, 10)
  assert (probs.argmax(-1) == namespace["ds"].y_test).mean() > 0.7


def test_readme_sparse_example_runs():
  namespace = _run_block("tx = sparse.masked(inner)")
  params, opt_state, plan = namespace["params"], namespace["opt_state"], namespace["plan"]
  import jax
  flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_flatten_with_path(opt_state.masks)[0]}
  assert namespace["topology"].tx.inner is namespace["inner"]
  for name, count in plan.counts.items():
    assert int(flat[name].sum()) == count
  for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(opt_state.masks)):
    assert bool((p[~m] == 0).all())


@requires_fashion_mnist
def test_readme_api_overview_runs():
  namespace = _run_block("subnetworks.partition_masks")
  assert namespace["probs"].shape == (3, 500, 10)
  assert set(namespace["scores"]) == {"ensemble", "members", "diversity"}
  assert namespace["noisy"].shape == (100, 28, 28, 1)
  assert namespace["report"]["corruption"]["num_examples"] == 100
  plan, kept = namespace["plan"], namespace["kept"]
  for layer, count in plan.counts.items():  # prune and grow kept every layer's exact count
    assert round(kept[layer] * plan.sizes[layer]) == count
  masks = namespace["child_masks"]
  import jax
  kernels = [m for path, m in jax.tree_util.tree_flatten_with_path(masks)[0] if "kernel" in jax.tree_util.keystr(path)]
  assert kernels and all(bool((m.sum(0) == 1).all()) for m in kernels)  # every kernel weight in exactly one child
  assert float(namespace["w"].mean()) == __import__("pytest").approx(1.0, rel=1e-5)
  f_dense = namespace["f_dense"]  # 1,000 sparse steps, 10 of them with a dense weight gradient
  assert namespace["train_flops"] == __import__("pytest").approx(128 * (1000 * 3 * 0.2 * f_dense + 10 * 0.8 * f_dense))


def test_readme_fit_example_runs():
  """The README's `ensembles.fit` block: DST, EDST and CBNN on its own model and 20-feature arrays."""
  namespace = _run_block("ensembles.fit(")
  y_test = namespace["data"]["y_test"]
  assert namespace["probs"].shape == (200, 3)
  assert (namespace["probs"].argmax(1) == y_test).mean() > 0.8
  assert namespace["accuracy"] == __import__("pytest").approx((namespace["probs"].argmax(1) == y_test).mean())
  assert namespace["edst"].results["train_steps"] == 5 * 20 and namespace["edst"].results["num_members"] == 3
  assert len(namespace["alphas"]) == 3 and all(a > 0 for a in namespace["alphas"])


def test_readme_fit_seeds_example_runs():
  """The README's `ensembles.fit_seeds` block, after the `ensembles.fit` block it builds on: seed 0
  of the two seeds trained together is the block's CBNN run of seed 0."""
  namespace = _run_block("ensembles.fit_seeds(", _run_block("ensembles.fit("))
  runs, cbnn = namespace["runs"], namespace["cbnn"]
  assert [r.results["seed"] for r in runs] == [0, 1]
  assert runs[0].results["test"]["ensemble"]["nll"] == __import__("pytest").approx(
      cbnn.results["test"]["ensemble"]["nll"], rel=1e-4)
  assert runs[0].ensemble.weights == __import__("pytest").approx(cbnn.ensemble.weights, rel=1e-4)
