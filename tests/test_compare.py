"""The comparison runner: every (run, seed) trained once, then reloaded; the report end to end."""
import json
import os

import pytest

from ensembles import data as data_lib
from experiments import compare
from conftest import make_dataset

TINY = {"dataset.train_subset": 0, "training.epochs": 1, "training.batch_size": 32, "model.hidden": (16,),
        "log_every_steps": 2, "checkpoint_every_steps": 100, "eval_batch_size": 16,
        "evaluation.ood_datasets": ("digits",), "evaluation.ood_examples": 50,
        "evaluation.corruptions": ("contrast", "pixelate"), "evaluation.corruption_severities": (1, 5),
        "evaluation.corruption_examples": 16, "evaluation.plots": False}


def test_comparison_trains_once_and_reports(tmp_path, monkeypatch):
  dataset = make_dataset(n_train=64, n_val=16, n_test=32, shape=(28, 28, 1))
  monkeypatch.setattr(data_lib, "load_dataset", lambda _: dataset)
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
  # the whole report: three tables and the plots
  text = compare.report_text(comparison, again, "python -m experiments.compare ...")
  assert "## OoD detection" in text and "| digits AUROC (entropy) |" in text
  assert "## Corruption robustness" in text and "2 corruption types x severities [1, 5], 16 test images" in text
  assert "| dst | 2 | 2 | " in text.split("## Corruption robustness")[1]
  paths = compare.comparison_plots(again, str(tmp_path))
  assert sorted(os.path.basename(p) for p in paths) == ["corruption.png", "metrics_vs_flops.png", "reliability.png"]
  assert all(os.path.getsize(p) > 10_000 for p in paths)


def test_seeds_as_members_equal_seeds_one_after_another(tmp_path, monkeypatch):
  """The default (a run's seeds trained together as members, in LABEL/seeds_0_1) and
  ``seeds_as_members: False`` report the same numbers; a finished group is only reloaded."""
  dataset = make_dataset(n_train=64, n_val=16, n_test=32, shape=(28, 28, 1))
  monkeypatch.setattr(data_lib, "load_dataset", lambda _: dataset)
  runs = [("cbnn", "experiments/configs/cbnn.py", {**TINY, "training.epochs": 2, "num_members": 2})]
  together = compare.run_comparison({"seeds": [0, 1], "runs": runs}, str(tmp_path / "together"))
  alone = compare.run_comparison({"seeds": [0, 1], "runs": runs, "seeds_as_members": False}, str(tmp_path / "alone"))
  assert os.path.isdir(tmp_path / "together" / "cbnn" / "seeds_0_1" / "checkpoints")
  assert not os.path.exists(tmp_path / "alone" / "cbnn" / "seeds_0_1")
  for t, a in zip(together, alone):
    assert t["seed"] == a["seed"] and t["seeds_as_members"]["seeds"] == [0, 1] and "seeds_as_members" not in a
    for split in ("test", "val"):
      for key in ("accuracy", "nll", "ece", "brier"):
        assert t[split]["ensemble"][key] == pytest.approx(a[split]["ensemble"][key], rel=1e-4, abs=1e-6)
    assert t["cbnn"]["alphas"] == pytest.approx(a["cbnn"]["alphas"], rel=1e-4)
    assert t["ood"]["digits"]["entropy"]["auroc"] == pytest.approx(a["ood"]["digits"]["entropy"]["auroc"], abs=1e-4)
    assert t["flops"] == a["flops"]
  mtime = os.path.getmtime(tmp_path / "together" / "cbnn" / "seed_1" / "results.json")
  compare.run_comparison({"seeds": [0, 1], "runs": runs}, str(tmp_path / "together"))
  assert os.path.getmtime(tmp_path / "together" / "cbnn" / "seed_1" / "results.json") == mtime


def test_comparison_evaluates_old_results_from_the_saved_ensemble(tmp_path, monkeypatch):
  dataset = make_dataset(n_train=64, n_val=16, n_test=32, shape=(28, 28, 1))
  monkeypatch.setattr(data_lib, "load_dataset", lambda _: dataset)
  comparison = {"seeds": [0], "runs": [("single", "experiments/configs/single.py", TINY)]}
  first = compare.run_comparison(comparison, str(tmp_path))
  path = tmp_path / "single" / "seed_0" / "results.json"
  old = json.load(open(path))
  del old["ood"], old["corruption"]  # as written before the evaluation suite existed
  json.dump(old, open(path, "w"))
  log = (tmp_path / "single" / "seed_0" / "metrics.jsonl").read_text()
  again = compare.run_comparison(comparison, str(tmp_path))
  assert (tmp_path / "single" / "seed_0" / "metrics.jsonl").read_text() == log  # not retrained
  assert again[0]["ood"]["digits"]["entropy"] == first[0]["ood"]["digits"]["entropy"]
  assert again[0]["corruption"]["mean"] == first[0]["corruption"]["mean"]
  assert "ood" in json.load(open(path))


def test_unknown_override_is_named():
  import pytest
  with pytest.raises(ValueError, match="has no field 'training.lrr'"):
    compare.make_config("experiments/configs/single.py", {"training.lrr": 0.1}, 0)
