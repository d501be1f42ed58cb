"""Boosted EDST: EDST's tickets with CBNN's reweighting between them."""
import jax
import numpy as np
import pytest

import ensembles
from ensembles.errors import ConfigError
from ensembles.models import MLP

EDST = {"edst": {"exploration_epochs": 2, "refinement_epochs": 1}, "update_every": 4, "sparsity": 0.8}


def _data():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 255, (256, 6, 6, 1)).astype(np.uint8)
  y = (x.reshape(256, -1).mean(1) > 127).astype(np.int32) + 2 * (x[:, 0, 0, 0] > 127)
  return {"x_train": x, "y_train": y, "x_test": x[:64], "y_test": y[:64]}


def test_first_ticket_is_edsts_later_ones_are_reweighted_and_alpha_weighted():
  data = _data()
  fit = lambda method: ensembles.fit(method, MLP(4, hidden=(32,)), data, batch_size=32, **EDST)
  boosted, edst = fit("boosted_edst"), fit("edst_ensemble")
  member = lambda result, k: jax.tree.map(lambda v: np.asarray(v)[k], result.ensemble.params)
  # uniform weights until the first ticket: the same ticket, bit for bit
  jax.tree.map(np.testing.assert_array_equal, member(boosted, 0), member(edst, 0))
  for k in (1, 2):  # trained on reweighted samples after it
    assert not np.allclose(member(boosted, k)["Dense_0"]["kernel"], member(edst, k)["Dense_0"]["kernel"])
  alphas = boosted.results["boosting"]["alphas"]
  assert len(alphas) == 3 and all(a > 0 for a in alphas) and boosted.ensemble.weights == tuple(alphas)
  # the sparse structure is EDST's: the same density, and tickets that differ
  assert boosted.results["sparsity"]["ticket_nonzero_density"] == pytest.approx(
      edst.results["sparsity"]["ticket_nonzero_density"])
  # FLOPs: EDST's plus one training-set pass per ticket at the network's density
  fb, fe = boosted.results["flops"], edst.results["flops"]
  f_sparse = fe["inference_flops"] / 3
  assert fb["train_flops"] == pytest.approx(fe["train_flops"] + 3 * 256 * f_sparse, rel=1e-9)


def test_best_validation_tickets_are_refused_with_the_reason():
  with pytest.raises(ConfigError, match="config.edst.ticket must be 'final' for method 'boosted_edst'"):
    ensembles.fit("boosted_edst", MLP(4), _data(), batch_size=32, edst={**EDST["edst"], "ticket": "best_val"})
