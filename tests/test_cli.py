"""The entry point end to end, as a user runs it."""
import json
import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from ensembles.methods import METHODS
from experiments import runner
from conftest import requires_fashion_mnist, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ["--config.dataset.train_subset=512", "--config.dataset.test_subset=200",
              "--config.dataset.val_size=200", "--config.training.epochs=2", "--config.num_members=3",
              "--config.model.hidden=(32,)", "--config.log_every_steps=4", "--config.checkpoint_every_steps=8"]


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)


@requires_fashion_mnist
def test_cli_trains_reports_and_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  args = ["--config", "experiments/configs/deep_ensemble.py", "--workdir", workdir, *TINY_FLAGS]
  first = _cli(*args)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "| **ensemble** |" in first.stdout and "member 2" in first.stdout
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["num_members"] == 3 and results["train_steps"] == 2 * (512 // 128)
  assert 0.3 < results["test"]["ensemble"]["accuracy"] <= 1.0
  assert len(results["test"]["members"]) == 3 and "disagreement" in results["test"]["diversity"]
  assert open(os.path.join(workdir, "results.md")).read().startswith("### deep_ensemble")
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert any("val_accuracy" in r for r in records) and any("train_loss" in r for r in records)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "8"))
  second = _cli(*args)
  assert second.returncode == 0 and "Resuming from step 8/8" in second.stderr
  # a different config in the same workdir is refused instead of mixing runs
  third = _cli(*args, "--config.training.lr=0.2")
  assert third.returncode == 2 and "different config" in third.stderr


@pytest.mark.parametrize("flag,message", [
    ("--config.training.lr=-1", "config.training.lr must be a number > 0"),
    ("--config.method=bagging", f"config.method must be one of {sorted(METHODS)}"),
    ("--config.model.name=vgg", "config.model.name must be one of ['efficientnet_b0', 'imagenet_resnet', 'lenet', 'lenet5', 'lenet5_caffe', 'lenet_300_100', "
     "'mlp', 'resnet', 'wide_resnet']"),
    ("--config.dataset.name=imagenet", "config.dataset.name must be one of"),
    ("--config.num_members=0", "config.num_members must be an integer >= 1"),
])
def test_cli_rejects_bad_config(tmp_path, flag, message):
  out = _cli("--config", "experiments/configs/default.py", "--workdir", str(tmp_path), flag)
  assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]


def test_run_on_tfds_mock_data(tmp_path):
  cfg = tiny_config(**{"dataset.name": "mnist", "dataset.val_size": 20, "dataset.train_subset": 0,
                       "dataset.test_subset": 0, "training.epochs": 1})
  with tfds.testing.mock_data(num_examples=84):
    results = runner.run(cfg, str(tmp_path))
  assert results["dataset"] == "mnist" and results["train_steps"] == 2
  assert os.path.exists(tmp_path / "results.md")


def _one_line_error(out, *needles):
  """Exit status 2, no traceback, and the error as the last line of stderr naming every needle."""
  lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
  assert out.returncode == 2, out.stderr[-2000:]
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  assert lines and lines[-1].startswith("error: "), out.stderr[-2000:]
  for needle in needles:
    assert needle in lines[-1], (needle, lines[-1])


@pytest.mark.parametrize("args,needles", [
    (["--config", "experiments/configs/missing.py"], ["no config file 'experiments/configs/missing.py'",
                                                      "deep_ensemble.py"]),
    (["--config.training.lrr=0.1"], ["no field 'lrr' in config.training", "valid fields: batch_size",
                                     "did you mean 'lr'?"]),
    (["--config.model.features=(6,16)"], ["no field 'features' in config.model", "valid fields: dropout_rate, hidden, name"]),
    (["--config.num_members=two"], ["config.num_members must be an int like its default (4), got 'two'"]),
    (["--config.dataset.data_dir=/nonexistent"], ["dataset.data_dir '/nonexistent' does not exist",
                                                  "train-images-idx3-ubyte.gz"]),
])
def test_cli_mistakes_are_one_line_before_any_work(tmp_path, args, needles):
  out = _cli("--workdir", str(tmp_path / "run"), *args)
  _one_line_error(out, *needles)
  assert not (tmp_path / "run").exists()  # nothing was started


def test_missing_config_lists_the_shipped_ones_from_any_folder(tmp_path, monkeypatch):
  from experiments import cli  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)  # the shipped configs are found beside the package, not in the working folder
  with pytest.raises(cli.CliError, match=r"the shipped ones are /.*/experiments/configs/\{[^}]*cbnn.py, deep_ensemble.py"):
    cli.load_config_file("missing.py")


def test_cli_workdir_that_is_a_file(tmp_path):
  (tmp_path / "file").write_text("x")
  _one_line_error(_cli("--workdir", str(tmp_path / "file")), "is a file")


def test_cli_data_dir_without_the_files(tmp_path):
  (tmp_path / "empty").mkdir()
  _one_line_error(_cli("--workdir", str(tmp_path / "run"), f"--config.dataset.data_dir={tmp_path / 'empty'}"),
                  f"dataset.data_dir '{tmp_path / 'empty'}' holds neither", "t10k-labels-idx1-ubyte.gz")


def test_cli_unprepared_tfds_training_set_is_reported_first(tmp_path):
  # cifar10 would also need the CIFAR-10-C sets of the default evaluation: the training set comes first
  out = _cli("--workdir", str(tmp_path / "run"), "--config.dataset.name=cifar10",
             f"--config.dataset.data_dir={tmp_path}")
  _one_line_error(out, "has not prepared 'cifar10'", "tfds build cifar10", "dataset.download=True")


@requires_fashion_mnist
def test_cli_sets_fields_of_another_model(tmp_path):
  workdir = tmp_path / "run"
  out = _cli("--workdir", str(workdir), "--config.model.name=lenet", "--config.model.features=(6,16)",
             "--config.model.hidden=(12,)", "--config.model.kernel_size=3", "--config.dataset.train_subset=256",
             "--config.dataset.test_subset=100", "--config.dataset.val_size=100", "--config.training.epochs=1",
             "--config.num_members=2", "--config.evaluation.ood_datasets=()", "--config.evaluation.corruptions=()",
             "--config.evaluation.plots=False")
  assert out.returncode == 0, out.stderr[-3000:]
  config = json.load(open(workdir / "config.json"))
  assert config["model"] == {"name": "lenet", "features": [6, 16], "hidden": [12], "kernel_size": 3,
                             "dropout_rate": 0.0, "padding": "SAME", "conv_impl": "auto"}
  results = json.load(open(workdir / "results.json"))
  assert results["params_per_member"] == (3 * 3 * 1 * 6 + 6) + (3 * 3 * 6 * 16 + 16) + (7 * 7 * 16 * 12 + 12) + (12 * 10 + 10)


@requires_fashion_mnist
def test_cli_compilation_cache_is_written_reused_and_can_be_turned_off(tmp_path):
  """The CLI caches every compiled program in compilation_cache_dir; a rerun of the same command
  adds nothing (it compiled nothing new); ENSEMBLES_COMPILATION_CACHE=off writes none."""
  flags = [*TINY_FLAGS, "--config.evaluation.corruptions=()", "--config.evaluation.ood_datasets=()"]
  env = {k: v for k, v in os.environ.items() if k != "ENSEMBLES_COMPILATION_CACHE"}

  def run(workdir, cache, env):
    return subprocess.run([sys.executable, "-m", "experiments.train", "--workdir", str(workdir), *flags,
                           f"--config.compilation_cache_dir={cache}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)

  cache = tmp_path / "cache"
  assert run(tmp_path / "a", cache, env).returncode == 0
  cached = sorted(os.listdir(cache))
  assert len(cached) >= 5 and any(name.startswith("jit_train_chunk") for name in cached)  # the MLP's chunked steps
  assert run(tmp_path / "b", cache, env).returncode == 0  # the same programs: all read from the cache
  assert sorted(os.listdir(cache)) == cached
  out = run(tmp_path / "c", tmp_path / "cache2", {**env, "ENSEMBLES_COMPILATION_CACHE": "off"})
  assert out.returncode == 0 and not (tmp_path / "cache2").exists()


def test_compilation_cache_folder_from_config_and_environment(monkeypatch):
  from ensembles import compilation_cache
  monkeypatch.delenv(compilation_cache.ENV, raising=False)
  assert compilation_cache.cache_dir("") is None
  assert compilation_cache.cache_dir("/tmp/c") == "/tmp/c"
  monkeypatch.setenv(compilation_cache.ENV, "off")
  assert compilation_cache.cache_dir("/tmp/c") is None
  monkeypatch.setenv(compilation_cache.ENV, "/tmp/elsewhere")
  assert compilation_cache.cache_dir("") == "/tmp/elsewhere"
