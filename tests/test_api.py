"""The public entry `ensembles.fit`: every registered method on a model defined here (not one of
`ensembles.models`) and on plain numpy feature arrays that are not images (20 features, 3 classes),
in memory and with a workdir; and every method through the CLI on a Fashion-MNIST subset."""
import json
import os
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import numpy as np
import pytest

import ensembles
from ensembles import metrics, trainer
from ensembles.errors import ConfigError
from conftest import requires_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FeatureNet(nn.Module):
  """A user's own model: two dense layers and dropout on 20 features (``num_classes`` outputs, the
  field method 'mimo' sets to M·K)."""

  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Dense(24)(x))
    x = nn.Dropout(0.2, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


class NoDropoutNet(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))


def feature_data(seed=0):
  """Three Gaussian classes in 20 dimensions (float features, not images), with val and test splits."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(3, 20)) * 0.9
  def split(n):
    y = rng.integers(0, 3, n)
    return (centers[y] + rng.normal(size=(n, 20))).astype(np.float32), y
  (x_train, y_train), (x_val, y_val), (x_test, y_test) = split(480), split(96), split(160)
  return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val, "x_test": x_test,
          "y_test": y_test, "num_classes": 3}


# Small budgets per method (the method's own defaults otherwise); EDST's epochs follow from its phases.
FIELDS = {
    "edst_ensemble": {"edst": {"exploration_epochs": 2, "refinement_epochs": 2}, "update_every": 5},
    "boosted_edst": {"edst": {"exploration_epochs": 2, "refinement_epochs": 2}, "update_every": 5},
    "dst_ensemble": {"epochs": 6, "update_every": 5},
    # FeatureNet has two layers: keeping input and output whole (the default) would leave none to split
    "subnetwork_ensemble": {"subnetwork": {"share_input_output": False}},
}
EDST_BUDGET = ("edst_ensemble", "boosted_edst")  # epochs follow from the phases
EXPECTED_MEMBERS = {"single": 1, "deep_ensemble": 4, "mc_dropout": 10, "swa": 1, "batch_ensemble": 4}


def _fit(method, workdir=None, **fields):
  fields = {"batch_size": 32, "log_every_steps": 5, **({} if method in EDST_BUDGET else {"epochs": 6}),
            **FIELDS.get(method, {}), **fields}
  return ensembles.fit(method, FeatureNet(), feature_data(), workdir, **fields)


@pytest.mark.parametrize("method", sorted(ensembles.METHODS))
def test_every_method_on_own_model_and_feature_arrays(method, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # in memory: nothing may be written
  data = feature_data()
  result = _fit(method)
  assert os.listdir(tmp_path) == []
  r = result.results
  assert r["method"] == method and r["model"] == "FeatureNet" and r["dataset"] == "arrays"
  assert r["num_members"] == EXPECTED_MEMBERS.get(method, 3)
  assert r["flops"]["train_flops"] > 0 and r["train_steps"] > 0
  assert r["test"]["ensemble"]["accuracy"] > 0.8  # chance is 1/3; the classes are well separated
  assert "val" in r and "ood" not in r and "corruption" not in r  # not images: no OoD or corruption sets
  probs = result.predict(data["x_test"])
  assert probs.shape == (160, 3)
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
  member_probs = result.ensemble.member_probs(data["x_test"])
  assert member_probs.shape == (r["num_members"], 160, 3)
  np.testing.assert_allclose(probs, metrics.combine_probs(member_probs, result.ensemble.weights,
                                                          result.ensemble.combine))
  assert r["test"]["ensemble"]["accuracy"] == pytest.approx((probs.argmax(1) == data["y_test"]).mean())
  assert any("train_loss" in record for record in result.log)  # the in-memory log


# Methods whose hooks fall inside a dispatch: topology updates, tickets, snapshots, boosting, averaging.
# The others (no hooks) are the trainer's own chunking (tests/test_trainer.py); they run with `make test-slow`.
HOOKED = ("boosted_edst", "cbnn", "dst_ensemble", "edst_ensemble", "fge", "snapshot_boosting", "snapshot_ensemble",
          "subnetwork_ensemble", "swa")


@pytest.mark.parametrize("method", [m if m in HOOKED else pytest.param(m, marks=pytest.mark.slow)
                                    for m in sorted(ensembles.METHODS)])
def test_steps_in_chunks_equal_one_step_per_call(method):
  """The default dispatch (every step up to the next log, hook or epoch end in one compiled call)
  trains exactly the ensemble of one step per call, for every method's hooks (topology updates,
  tickets, snapshots, boosting)."""
  fields = {"log_every_steps": 7, **({} if method in EDST_BUDGET else {"epochs": 5}),
            **({"update_every": 4} if method in ("dst_ensemble", *EDST_BUDGET) else {})}
  # 15 steps per epoch: hooks (updates every 4 steps, segment ends at 25, 50) fall between logs and epoch ends
  chunked, stepped = _fit(method, **fields), _fit(method, steps_per_dispatch=1, **fields)
  jax.tree.map(np.testing.assert_array_equal, chunked.ensemble.params, stepped.ensemble.params)
  assert chunked.results["test"] == stepped.results["test"]
  untimed = lambda log: [{k: v for k, v in r.items() if k not in trainer.THROUGHPUT_FIELDS} for r in log
                         if "train_loss" in r]
  assert untimed(chunked.log) == untimed(stepped.log)


@pytest.mark.parametrize("method", ["cbnn", "edst_ensemble", "subnetwork_ensemble"])
def test_workdir_run_equals_in_memory_run_and_resumes(method, tmp_path):
  """With a workdir: the same numbers as in memory; a rerun restores the finished checkpoint and the
  collected members from disk and reports the same results again."""
  in_memory = _fit(method).results
  on_disk = _fit(method, str(tmp_path)).results
  again = _fit(method, str(tmp_path)).results
  for r in (on_disk, again):
    assert r["test"] == in_memory["test"] and r["val"] == in_memory["val"]
  assert os.path.isdir(tmp_path / "ensemble")
  metrics_log = [json.loads(line) for line in open(tmp_path / ("children" if method == "subnetwork_ensemble" else ".")
                                                   / "metrics.jsonl")]
  assert any("train_loss" in record for record in metrics_log)
  with pytest.raises(ValueError, match="holds a run with a different config"):
    _fit(method, str(tmp_path), seed=1)


def test_fields_are_checked_by_name():
  data = feature_data()
  with pytest.raises(ConfigError, match="config.sparse.sparsity must be in"):
    ensembles.fit("dst_ensemble", FeatureNet(), data, sparsity=1.5)
  with pytest.raises(ConfigError, match="'learning_rate' is not a config field"):
    ensembles.fit("single", FeatureNet(), data, learning_rate=0.1)
  with pytest.raises(ConfigError, match=r"'drop_schedule' is in several blocks \['edst', 'sparse'\]; pass it in a block dict"):
    ensembles.fit("edst_ensemble", FeatureNet(), data, drop_schedule="global")
  with pytest.raises(ConfigError, match="config.training.nonsense is not a field"):
    ensembles.fit("single", FeatureNet(), data, training={"nonsense": 1})
  with pytest.raises(ConfigError, match="config.num_members must be 1 for method 'single'"):
    ensembles.fit("single", FeatureNet(), data, num_members=2)
  with pytest.raises(ConfigError, match="config.method must be one of"):
    ensembles.fit("bagging", FeatureNet(), data)


def test_fields_that_do_not_apply_are_refused():
  """The data and model are passed in: dataset fields (subsets, splits) and model fields are refused,
  as are plots (the CLI's)."""
  data = feature_data()
  with pytest.raises(ConfigError, match="config.dataset does not apply"):
    ensembles.fit("single", FeatureNet(), data, dataset={"train_subset": 100})
  with pytest.raises(ConfigError, match="'train_subset' is not a config field"):
    ensembles.fit("single", FeatureNet(), data, train_subset=100)
  with pytest.raises(ConfigError, match="config.evaluation.plots does not apply"):
    ensembles.fit("single", FeatureNet(), data, evaluation={"plots": True})


def test_another_model_or_data_in_the_same_workdir_is_refused(tmp_path):
  _fit("single", str(tmp_path), epochs=1)
  other = feature_data(seed=1)
  with pytest.raises(ValueError, match="holds a run with a different config"):
    ensembles.fit("single", FeatureNet(), other, str(tmp_path), epochs=1, batch_size=32, log_every_steps=5)
  with pytest.raises(ValueError, match="holds a run with a different config"):
    ensembles.fit("single", NoDropoutNet(), feature_data(), str(tmp_path), epochs=1, batch_size=32, log_every_steps=5)


def test_a_method_value_trains_without_registration_by_hand():
  """A method written as a value (here: the deep ensemble's recipe under a new name) is registered
  by `fit` itself."""
  from ensembles.methods import Method, deep_ensemble
  method = Method("my_deep_ensemble", deep_ensemble.train, defaults={"num_members": 2})
  result = ensembles.fit(method, FeatureNet(), feature_data(), epochs=2, batch_size=32)
  assert result.results["method"] == "my_deep_ensemble" and result.results["num_members"] == 2
  assert "my_deep_ensemble" in ensembles.METHODS
  ensembles.METHODS.pop("my_deep_ensemble")  # keep the registry as the other tests expect it


def test_in_memory_phases_are_marked_in_the_log():
  log = _fit("subnetwork_ensemble").log
  phases = {record.get("phase") for record in log}
  assert phases == {"parent", "children"}


def test_data_and_model_mistakes_are_named():
  data = feature_data()
  with pytest.raises(ValueError, match=r"x_test must be \[N, 20\]"):
    ensembles.fit("single", FeatureNet(), {**data, "x_test": data["x_test"][:, :5]})
  with pytest.raises(ValueError, match=r"y_val: labels must lie in \[0, num_classes=3\)"):
    ensembles.fit("single", FeatureNet(), {**data, "y_val": data["y_val"] + 1})
  with pytest.raises(ValueError, match="y_train must hold integer class labels"):
    ensembles.fit("single", FeatureNet(), {**data, "y_train": data["y_train"].astype(np.float32)})
  with pytest.raises(ValueError, match="x_val and y_val .* must be given together"):
    ensembles.fit("single", FeatureNet(), {**data, "y_val": None})
  with pytest.raises(TypeError, match="model must be a flax.linen Module"):
    ensembles.fit("single", lambda x: x, data)
  with pytest.raises(ConfigError, match="method 'mc_dropout' needs a model with dropout"):
    ensembles.fit("mc_dropout", NoDropoutNet(), data, epochs=1)


def test_predict_checks_the_input_shape():
  result = _fit("single", epochs=1)
  with pytest.raises(AssertionError):  # chex: the examples' shape must be the training inputs'
    result.predict(np.zeros((4, 19), np.float32))
  chex.assert_shape(result.predict(np.zeros((4, 20), np.float32)), (4, 3))


def test_optional_splits_and_a_library_dataset(tmp_path):
  """Only a training set: no validation or test metrics, but a working predictor."""
  data = feature_data()
  result = ensembles.fit("deep_ensemble", FeatureNet(), {"x_train": data["x_train"], "y_train": data["y_train"]},
                         epochs=2, num_members=2)
  assert "test" not in result.results and "val" not in result.results
  assert result.predict(data["x_test"]).shape == (160, 3)


# The shipped configs with a method block of their own run through the CLI by default; the others
# (single, deep_ensemble, snapshot_ensemble: the deep ensemble's CLI runs in test_cli.py)
# with `make test-slow`.
CLI_DEFAULT = ("batch_ensemble", "cbnn", "dst_ensemble", "edst_ensemble", "fge", "mc_dropout", "mimo",
               "snapshot_boosting", "static_sparse_ensemble", "subnetwork_ensemble", "swa", "treenet")


@requires_fashion_mnist
@pytest.mark.parametrize("method", [m if m in CLI_DEFAULT else pytest.param(m, marks=pytest.mark.slow)
                                    for m in sorted(ensembles.METHODS)])
def test_every_method_through_the_cli_on_fashion_mnist(method, tmp_path):
  epochs = {"edst_ensemble": ["--config.edst.exploration_epochs=3", "--config.edst.refinement_epochs=1",
                              "--config.training.epochs=6", "--config.sparse.update_every=4"],
            "dst_ensemble": ["--config.training.epochs=3", "--config.sparse.update_every=4"],
            "boosted_edst": ["--config.edst.exploration_epochs=3", "--config.edst.refinement_epochs=1",
                             "--config.training.epochs=6", "--config.sparse.update_every=4"],
            "fge": ["--config.training.epochs=3", "--config.fge.pretrain_fraction=0.5"],
            # M = 3 members need room: 128 hidden units (the later flag wins), 6 epochs
            "mimo": ["--config.training.epochs=6", "--config.model.hidden=(128,)"],
            # the default keeps the input and output layers whole: a hidden layer between them to partition
            "subnetwork_ensemble": ["--config.training.epochs=6", "--config.model.hidden=(32, 32)"]}
  flags = epochs.get(method, ["--config.training.epochs=3"])
  out = subprocess.run(
      [sys.executable, "-m", "experiments.train", f"--config=experiments/configs/{method}.py",
       f"--workdir={tmp_path}", "--config.dataset.train_subset=512", "--config.dataset.test_subset=200",
       "--config.dataset.val_size=200", "--config.model.hidden=(32,)", "--config.evaluation.ood_examples=100",
       "--config.evaluation.corruptions=('contrast',)", "--config.evaluation.corruption_examples=50",
       "--config.evaluation.plots=False", *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  results = json.load(open(tmp_path / "results.json"))
  assert results["method"] == method and results["dataset"] == "fashion_mnist"
  assert results["test"]["ensemble"]["accuracy"] > 0.6
  assert "ood" in results and "corruption" in results
