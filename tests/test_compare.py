"""The comparison runner: every (run, seed) trained once, then reloaded; the report end to end."""
import glob
import json
import os

import pytest

from ensembles import config as config_lib
from ensembles import data as data_lib
from ensembles.methods import METHODS
from experiments import compare
from conftest import make_dataset

TINY = {"dataset.train_subset": 0, "training.epochs": 2,  # 2: members above chance (health)
        "training.batch_size": 32, "model.hidden": (16,),
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
  # a finished run is not reused under a changed config (its old numbers would show under the label);
  # evaluation fields may differ (a run lacking an evaluation is evaluated, not retrained)
  changed = {**comparison, "runs": [("single", "experiments/configs/single.py", {**TINY, "training.lr": 0.123})]}
  with pytest.raises(ValueError, match=r"run 'single', seed 0: .* another config \(fields training.lr\)"):
    compare.run_comparison(changed, str(tmp_path))
  # the whole report: three tables and the plots
  text = compare.report_text(comparison, again, "python -m experiments.compare ...")
  assert "## OoD detection" in text and "| digits AUROC (entropy) |" in text
  assert "## Corruption robustness" in text and "2 corruption types x severities [1, 5], 16 test images" in text
  assert "| dst | 2 | 2 | " in text.split("## Corruption robustness")[1]
  # written where the comparison says (report_dir), beside the runs it shares a workdir with
  assert compare.write_report({**comparison, "report_dir": "family"}, again, str(tmp_path), "cmd") == \
      compare.report_text(comparison, again, "cmd")
  written = sorted(os.listdir(tmp_path / "family"))
  assert written == ["corruption.png", "metrics_vs_flops.png", "reliability.png", "report.json", "report.md"]
  assert all(os.path.getsize(tmp_path / "family" / name) > 10_000 for name in written if name.endswith(".png"))
  assert json.load(open(tmp_path / "family" / "report.json")) == again
  assert not (tmp_path / "report.md").exists()
  # an ablation row without OoD or corruption evaluation is in the summary, not in those two tables
  quick = [{k: v for k, v in r.items() if k not in ("ood", "corruption")} | {"label": "quick"} for r in again[:2]]
  text = compare.report_text(comparison, again + quick, "cmd")
  head, ood = text.split("## OoD detection")
  assert "| quick | 1 | 2 |" in head and "| quick |" not in ood and "| dst | 2 | 2 |" in ood.split("## Corruption")[1]


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


def test_a_model_name_override_replaces_the_model_block():
  """As on the command line: the new model's own fields, at their defaults unless overridden; the
  MLP's ``hidden`` (or a method's dropout rate) does not carry over."""
  config = compare.make_config("experiments/configs/mc_dropout.py",
                               {"model.name": "lenet", "model.features": (6, 16)}, 3)
  assert config.model.name == "lenet" and config.model.features == (6, 16)
  assert config.model.hidden == (128,) and config.model.dropout_rate == 0.0 and config.seed == 3
  with pytest.raises(ValueError, match="model.name must be one of"):
    compare.make_config("experiments/configs/single.py", {"model.name": "lenet7"}, 0)


CNN_SETUP = "experiments/comparisons/cnn_fashion_mnist.py"  # the CNN study's shared setup, not a comparison
SHIPPED = sorted(p for p in glob.glob("experiments/comparisons/*_fashion_mnist.py") if p != CNN_SETUP)
CNN_STUDY = [p for p in SHIPPED if os.path.basename(p).startswith("cnn_")]


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_every_shipped_comparison_builds_valid_configs(path):
  comparison = compare.load_module(path).get_comparison()
  labels = [label for label, _, _ in comparison["runs"]]
  assert len(set(labels)) == len(labels) and len(comparison["seeds"]) == 3
  for label, config_file, overrides in comparison["runs"]:
    config_lib.validate(compare.make_config(config_file, overrides, comparison["seeds"][0]))


def test_the_cnn_study_shares_runs_only_where_their_configs_agree():
  """The CNN study's three comparisons train into one workdir and a finished LABEL/seed_S is only
  reloaded, so one label must mean one config across them; and every registered method is in it."""
  assert len(CNN_STUDY) == 3
  seen = {}
  for path in CNN_STUDY:
    comparison = compare.load_module(path).get_comparison()
    assert comparison["report_dir"] and comparison["seeds"] == [0, 1, 2]
    for label, config_file, overrides in comparison["runs"]:
      config = compare.make_config(config_file, overrides, 0).to_dict()
      assert seen.setdefault(label, config) == config, label
      assert config["model"]["name"] == "lenet" and config["augment"]["crop_padding"] == 2
      assert config["augment"]["flip"] and config["dataset"]["train_subset"] == 27_500
      assert config["evaluation"]["corruption_examples"] == 1000
  assert {c["method"] for c in seen.values()} == set(METHODS)
  lt = {c["method"] for label, c in seen.items() if label.endswith("_lt100")}
  assert lt == {"single", "cbnn", "snapshot_ensemble", "snapshot_boosting", "fge", "swa", "boosted_edst"}
  assert all(c["dataset"]["imbalance_ratio"] == (100.0 if label.endswith("_lt100") else 1.0)
             for label, c in seen.items())
  # the one-epoch warm-up both multi-member networks need on this CNN, and the CBNN weight-cap ablation
  assert all(seen[label]["training"]["warmup_epochs"] == 1.0 for label in ("treenet", "batch_ensemble"))
  assert seen["cbnn"]["cbnn"]["max_weight_ratio"] == seen["cbnn_lt100"]["cbnn"]["max_weight_ratio"] == 2.0
  assert seen["cbnn_nocap"]["cbnn"]["max_weight_ratio"] == seen["cbnn_nocap_lt100"]["cbnn"]["max_weight_ratio"] == 0
