"""The comparison runner: every (run, seed) trained once, then reloaded; mean ± std table."""
import os

from ensembles.methods import common
from experiments import compare
from conftest import make_dataset

TINY = {"dataset.train_subset": 0, "training.epochs": 1, "training.batch_size": 32, "model.hidden": (16,),
        "log_every_steps": 2, "checkpoint_every_steps": 100, "eval_batch_size": 16}


def test_comparison_trains_once_and_reports(tmp_path, monkeypatch):
  dataset = make_dataset(n_train=64, n_val=16, n_test=32)
  monkeypatch.setattr(common.data_lib, "load_dataset", lambda _: dataset)
  comparison = {"seeds": [0, 1], "runs": [
      ("single", "experiments/configs/single.py", TINY),
      ("dst", "experiments/configs/dst_ensemble.py", {**TINY, "num_members": 2, "sparse.update_every": 1})]}
  results = compare.run_comparison(comparison, str(tmp_path))
  assert [r["label"] for r in results] == ["single", "single", "dst", "dst"]
  assert results[0]["seed"] == 0 and results[1]["seed"] == 1
  assert results[0]["test"]["ensemble"] != results[1]["test"]["ensemble"]  # seeds differ
  table = compare.summary_table(results)
  assert "| single | 1 | 2 |" in table and "| dst | 2 | 2 |" in table and " ± " in table
  mtime = os.path.getmtime(tmp_path / "dst" / "seed_1" / "results.json")
  again = compare.run_comparison(comparison, str(tmp_path))  # reloaded, not retrained
  assert os.path.getmtime(tmp_path / "dst" / "seed_1" / "results.json") == mtime
  assert compare.summary_table(again) == table


def test_unknown_override_is_named():
  import pytest
  with pytest.raises(ValueError, match="has no field 'training.lrr'"):
    compare.make_config("experiments/configs/single.py", {"training.lrr": 0.1}, 0)
