"""Seeds as members (`ensembles.fit_seeds`, `context.Run.seeds`): S seeds trained in one compiled
step equal S runs of one seed each, for every method -- the members' parameters, the ensemble's
weights (CBNN's α), the method's results and the test metrics."""
import json
import os

import jax
import numpy as np
import pytest

import ensembles
from ensembles import api, context, memory
from ensembles.errors import ConfigError
from test_api import EDST_BUDGET, FIELDS, FeatureNet, feature_data

SEEDS = (0, 1)


def _fields(method, **more):
  return {"batch_size": 32, "log_every_steps": 5, **({} if method in EDST_BUDGET else {"epochs": 4}),
          **FIELDS.get(method, {}), **more}


def _assert_same_run(together, alone, key="results", rtol=2e-4, atol=2e-5):
  """Two results of one seed: every number close, every other value equal (the train times and the
  seeds-as-members record aside)."""
  if isinstance(alone, dict):
    skip = {"train_time_s", "seeds_as_members", "resumed_from"}
    assert set(together) - skip == set(alone) - skip, key
    for k in set(alone) - skip:
      _assert_same_run(together[k], alone[k], f"{key}.{k}", rtol, atol)
  elif isinstance(alone, list):
    assert isinstance(together, list) and len(together) == len(alone), key
    for i, (a, b) in enumerate(zip(together, alone)):
      _assert_same_run(a, b, f"{key}[{i}]", rtol, atol)
  elif isinstance(alone, (float, int)) and not isinstance(alone, bool):
    np.testing.assert_allclose(together, alone, rtol=rtol, atol=atol, err_msg=key)
  else:
    assert together == alone, key


@pytest.mark.parametrize("method", sorted(ensembles.METHODS))
def test_seeds_together_equal_seeds_alone(method):
  """Each of the two seeds trained together against its own run: a seed given another's keys,
  masks, weights or members would not match."""
  data = feature_data()
  together = ensembles.fit_seeds(method, FeatureNet(), data, SEEDS, **_fields(method))
  assert len(together) == len(SEEDS)
  for seed, fitted in zip(SEEDS, together):
    alone = ensembles.fit(method, FeatureNet(), data, seed=seed, **_fields(method))
    assert fitted.config.seed == seed and fitted.results["seed"] == seed
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 fitted.ensemble.params, alone.ensemble.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 fitted.ensemble.model_state, alone.ensemble.model_state)
    if alone.ensemble.weights is None:
      assert fitted.ensemble.weights is None
    else:
      np.testing.assert_allclose(fitted.ensemble.weights, alone.ensemble.weights, rtol=1e-4)
    _assert_same_run(fitted.results, alone.results)
    assert fitted.results["seeds_as_members"]["seeds"] == list(SEEDS)
  # the seeds' members differ (each seed its own keys), so the test above can tell them apart
  first, second = (jax.tree.leaves(f.ensemble.params)[0] for f in together)
  assert not np.allclose(first, second)


def test_best_on_validation_tickets_are_chosen_per_seed():
  """EDST's best-on-validation tickets: each seed keeps the state of its own lowest validation NLL."""
  fields = _fields("edst_ensemble", edst={"exploration_epochs": 2, "refinement_epochs": 3, "ticket": "best_val"})
  data = feature_data()
  together = ensembles.fit_seeds("edst_ensemble", FeatureNet(), data, SEEDS, **fields)
  for seed, fitted in zip(SEEDS, together):
    alone = ensembles.fit("edst_ensemble", FeatureNet(), data, seed=seed, **fields)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 fitted.ensemble.params, alone.ensemble.params)
    _assert_same_run(fitted.results, alone.results)
  candidates = [r for r in together[0].log if str(r.get("event", "")).endswith("candidate")]
  assert {r["seed"] for r in candidates} == set(SEEDS)


def test_workdir_holds_each_seeds_run_and_a_rerun_reloads(tmp_path):
  """With a workdir: WORKDIR/seeds trains (its config lists the seeds), WORKDIR/seed_s is seed s's
  run folder (its config has seed s, and its saved ensemble reloads to the same predictions); a
  rerun restores the finished run instead of training again."""
  data = feature_data()
  fields = _fields("cbnn")
  first = ensembles.fit_seeds("cbnn", FeatureNet(), data, SEEDS, str(tmp_path), **fields)
  assert json.load(open(tmp_path / "seeds" / "config.json"))["seed"] == list(SEEDS)
  for seed, fitted in zip(SEEDS, first):
    folder = tmp_path / f"seed_{seed}"
    assert json.load(open(folder / "config.json"))["seed"] == seed
    _, ensemble, meta = api.load_saved(fitted.config, str(folder), model=FeatureNet(), data=ensembles.from_arrays(**data))
    assert meta["weights"] == pytest.approx(fitted.results["cbnn"]["alphas"])
    np.testing.assert_allclose(ensemble.predict(data["x_test"]), fitted.predict(data["x_test"]), rtol=1e-6)
  log = (tmp_path / "seeds" / "metrics.jsonl").read_text()
  assert "train_loss" in log
  again = ensembles.fit_seeds("cbnn", FeatureNet(), data, SEEDS, str(tmp_path), **fields)
  assert [f.results["test"] for f in again] == [f.results["test"] for f in first]
  assert (tmp_path / "seeds" / "metrics.jsonl").read_text() == log  # restored, not trained again


def test_mistakes_are_named():
  data = feature_data()
  with pytest.raises(ConfigError, match="`seeds` argument"):
    ensembles.fit_seeds("single", FeatureNet(), data, SEEDS, seed=3)
  with pytest.raises(ValueError, match="seeds must be distinct"):
    ensembles.fit_seeds("single", FeatureNet(), data, (1, 1), epochs=1)
  own = ensembles.methods.Method("my_single_seed_method", ensembles.methods.deep_ensemble.train,
                                 defaults={"num_members": 1})
  try:
    with pytest.raises(ConfigError, match="does not train seeds as members"):
      ensembles.fit_seeds(own, FeatureNet(), data, SEEDS, epochs=1)
  finally:
    ensembles.METHODS.pop("my_single_seed_method", None)


def test_memory_estimate_counts_state_activations_and_data_by_hand():
  """`memory.step_bytes` of an MLP 20 -> 24 -> 3 (FeatureNet) for 2 seeds x 3 members, batch 32, SGD
  with momentum: state = params + momentum (+ step, rng, schedule count), activations = rows x
  outputs x 4 x 3, and the training set."""
  data = ensembles.from_arrays(**feature_data())
  cfg, dataset = api.user_config("deep_ensemble", FeatureNet(), data, None, {"num_members": 3, "batch_size": 32})
  run = context.build(cfg, FeatureNet(), dataset, None, seeds=SEEDS)
  params = 20 * 24 + 24 + 24 * 3 + 3
  state = 6 * (2 * params * 4 + 4 + 2 * 4 + 4)  # params, momentum (float32); step; rng (2 x uint32); lr schedule count
  activations = 6 * 32 * (24 + 3) * 4 * 3
  assert memory.step_bytes(run) == pytest.approx(2 * state + activations + data.x_train.nbytes)


def test_seeds_that_do_not_fit_train_one_after_another(tmp_path, monkeypatch):
  """Where the estimate exceeds the device's memory, the comparison's seeds train one after another
  (no group folder; the results carry no seeds-as-members record)."""
  from conftest import make_dataset
  from ensembles import data as data_lib, hardware
  from experiments import compare
  from test_compare import TINY
  dataset = make_dataset(n_train=64, n_val=16, n_test=32, shape=(28, 28, 1))
  monkeypatch.setattr(data_lib, "load_dataset", lambda _: dataset)
  monkeypatch.setattr(hardware, "memory_bytes", lambda device: 1000)
  sized = []
  seeds_fit = memory.seeds_fit
  monkeypatch.setattr(memory, "seeds_fit", lambda run: sized.append(run) or seeds_fit(run))
  runs = [("cbnn", "experiments/configs/cbnn.py", {**TINY, "training.epochs": 2, "num_members": 2})]
  results = compare.run_comparison({"seeds": list(SEEDS), "runs": runs}, str(tmp_path))
  assert not os.path.exists(tmp_path / "cbnn" / "seeds_0_1")
  assert [r["seed"] for r in results] == list(SEEDS) and not any("seeds_as_members" in r for r in results)
  # what was sized: CBNN's one network per seed, not its M checkpoints
  assert [(r.num_seeds, r.num_members) for r in sized] == [(2, 1)]


def test_a_seed_missing_a_collected_member_is_named():
  """Loading refuses a collection where a seed lacks an item (it would shift members between seeds)."""
  data = ensembles.from_arrays(**feature_data())
  cfg, dataset = api.user_config("snapshot_ensemble", FeatureNet(), data, None, {"batch_size": 32})
  run = context.build(cfg, FeatureNet(), dataset, None, seeds=SEEDS, num_members=1)
  state = run.init_members()
  snapshots = run.collection("members", {10: 0, 20: 1})
  snapshots.save(state, 0, {"step": 10})
  snapshots.save_seed(state, 1, 0, {"step": 20})  # seed 1 never saves item 1
  with pytest.raises(ValueError, match="Seed 1 collected 1 of the run's 2 members"):
    snapshots.load(state)
  snapshots.save_seed(state, 1, 1, {"step": 20})
  members, metas = snapshots.load(state)
  assert len(metas) == 4 and [m["step"] for m in metas] == [10, 20, 10, 20]
  np.testing.assert_array_equal(jax.tree.leaves(members["params"])[0][2], jax.tree.leaves(state.params)[0][1])
