"""Health checks (ensembles/health.py): a run made to collapse on purpose is flagged (warn) and
stopped (stop: one line, non-zero exit, the last good checkpoint kept), a healthy run has no flag,
a resumed run reports the flags of the uninterrupted one, and `experiments.compare` never averages
an unhealthy seed."""
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from ensembles import api, defaults, health, train as train_lib
from ensembles.errors import UnhealthyRunError
from experiments import compare
from conftest import requires_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = health.HealthOptions()

# A single MLP on 1,024 Fashion-MNIST images whose lr warms up to 5 over 4 epochs (gradients clipped
# to norm 5, so the loss stays finite): healthy for its first steps, then a loss spike at step 26,
# validation at chance and 90% of predictions in one class by the first epoch's end (step 32).
COLLAPSE = {"dataset.train_subset": 1024, "dataset.val_size": 256, "dataset.test_subset": 256,
            "training.epochs": 5, "training.batch_size": 32, "training.lr": 5.0, "training.clip_grad_norm": 5.0,
            "training.lr_schedule": "constant", "training.warmup_epochs": 4.0, "model.hidden": (64,),
            "log_every_steps": 8, "checkpoint_every_steps": 16}


def _config(**fields):
  c = defaults.method_config("single")
  for dotted, value in {**COLLAPSE, **fields}.items():
    defaults.set_field(c, dotted, value)
  c.evaluation.ood_datasets, c.evaluation.corruptions, c.evaluation.plots = (), (), False
  return c


# --- the signal functions ------------------------------------------------------------------------

def test_loss_spike_is_a_jump_above_the_running_median_and_above_chance_loss():
  steady = np.linspace(2.0, 0.3, 40)[:, None] * np.ones((1, 2))  # a loss that falls: no spike
  assert health.loss_spikes(np.zeros((0, 2)), steady, OPTIONS, 10)[0] == []
  spiked = steady.copy()
  spiked[35, 1] = 12.0  # > 5 x median and > ln 10
  spikes, window = health.loss_spikes(np.zeros((0, 2)), spiked, OPTIONS, 10)
  assert [(t, m) for t, m, _, _ in spikes] == [(35, 1)]
  assert window.shape == (40, 2)  # every finite step, up to spike_window
  low = steady.copy()
  low[35, 1] = 2.0  # 6 x the median of ~0.35 but below ln 10: a noisy batch late in training
  assert health.loss_spikes(np.zeros((0, 2)), low, OPTIONS, 10)[0] == []
  early = np.ones((10, 1))
  early[5] = 50.0  # fewer than spike_window / 2 previous steps: not judged yet
  assert health.loss_spikes(np.zeros((0, 1)), early, OPTIONS, 10)[0] == []


def test_spike_window_carries_across_calls():
  losses = np.ones((60, 1))
  losses[45] = 20.0
  whole = health.loss_spikes(np.zeros((0, 1)), losses, OPTIONS, 10)[0]
  first, window = health.loss_spikes(np.zeros((0, 1)), losses[:30], OPTIONS, 10)
  second = health.loss_spikes(window, losses[30:], OPTIONS, 10)[0]
  assert [t for t, *_ in whole] == [45] and first == [] and [t + 30 for t, *_ in second] == [45]


def test_chance_accuracy_and_one_class_per_member():
  labels = np.arange(200) % 10
  probs = np.full((3, 200, 10), 0.01)
  probs[0, :, 3] = 1.0  # one class for all: at chance, collapsed
  probs[1, np.arange(200), labels] = 1.0  # perfect
  probs[2, np.arange(200), (labels + (np.arange(200) % 2)) % 10] = 1.0  # 50% right
  signals = {(s["member"], s["signal"]) for s in health.prediction_signals(probs, labels, OPTIONS)}
  assert signals == {(0, "chance_accuracy"), (0, "one_class")}


def test_chance_is_the_majority_rate_on_long_tailed_labels():
  labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
  majority = np.zeros((1, 100, 3))
  majority[0, :, 0] = 1.0  # 70% accuracy: no better than always answering class 0
  assert health.chance_rate(labels, 3) == 0.7
  assert {s["signal"] for s in health.prediction_signals(majority, labels, OPTIONS)} == {"chance_accuracy", "one_class"}
  # where one class holds more than max_class_share of the labels, predicting it everywhere is not a
  # collapse onto one class (but still no better than the majority rate)
  skewed = np.array([0] * 95 + [1] * 5)
  assert {s["signal"] for s in health.prediction_signals(majority, skewed, OPTIONS)} == {"chance_accuracy"}
  learned = np.zeros((1, 100, 3))
  learned[0, np.arange(100), labels] = 1.0
  assert health.prediction_signals(learned, labels, OPTIONS) == []


def test_boosting_signals_and_effective_sample_size():
  assert health.effective_sample_fraction(np.ones(100)) == pytest.approx(1.0)
  one = np.full(100, 1e-9)
  one[0] = 100.0
  assert health.effective_sample_fraction(one) == pytest.approx(0.01, abs=1e-6)
  log = []
  run = types.SimpleNamespace(seeds=(0, 1), num_members=1, name="cbnn", num_seeds=2,
                              data=types.SimpleNamespace(num_classes=10), log=types.SimpleNamespace(write=log.append))
  monitor = health.Monitor(OPTIONS)
  weights = np.stack([np.ones(200), np.r_[np.full(199, 1e-6), 100.0]])  # ESS 1/200
  new = monitor.boosting(run, 40, np.array([0.2, 0.89]), weights)
  assert {(f["seed"], f["signal"]) for f in new} == {(1, "chance_checkpoint"), (1, "degenerate_weights")}
  assert [r["event"] for r in log] == ["unhealthy", "unhealthy"]
  assert monitor.report(0)["status"] == "healthy" and monitor.report(1)["status"] == "unhealthy"


def test_stop_raises_one_line_naming_seed_member_step_and_signal():
  run = types.SimpleNamespace(seeds=(3,), num_members=2, name="deep_ensemble", num_seeds=1,
                              log=types.SimpleNamespace(write=lambda r: None))
  monitor = health.Monitor(OPTIONS, "stop")
  with pytest.raises(UnhealthyRunError) as err:
    monitor.record(run, "loss_spike", 102, [{"member": 1, "value": 15.0, "limit": 5.2, "median": 1.04}])
  message = str(err.value)
  assert "\n" not in message and "seed 3 member 1" in message and "step 102" in message and "loss_spike" in message


def test_clip_grad_norm_bounds_each_update():
  cfg = defaults.default_config().training
  cfg.lr, cfg.momentum, cfg.weight_decay, cfg.lr_schedule, cfg.clip_grad_norm = 1.0, 0.0, 0.0, "constant", 1.0
  tx = train_lib.make_optimizer(cfg, 10, 5)
  params = {"w": np.zeros(4, np.float32)}
  grads = {"w": np.array([3.0, 4.0, 0.0, 0.0], np.float32)}  # norm 5
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.6, -0.8, 0, 0], rtol=1e-6)
  cfg.clip_grad_norm = 0.0
  tx = train_lib.make_optimizer(cfg, 10, 5)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-3.0, -4.0, 0, 0], rtol=1e-6)


# --- runs ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def collapsed():
  """The collapsing run, on_unhealthy = warn: its results."""
  return api.run_config(_config(), None)


@requires_fashion_mnist
def test_collapsed_run_is_flagged_and_goes_on_under_warn(collapsed):
  report = collapsed["health"]
  assert report["status"] == "unhealthy"
  signals = {(f["signal"], f["phase"]) for f in report["flags"]}
  assert {("loss_spike", "single"), ("chance_accuracy", "single"), ("one_class", "single")} <= signals
  spike = next(f for f in report["flags"] if f["signal"] == "loss_spike")
  assert 16 < spike["step"] <= 32 and spike["seed"] == 0 and spike["member"] == 0
  assert collapsed["train_steps"] == 5 * 32  # warn: training went on to the end


@requires_fashion_mnist
def test_healthy_run_has_no_flag():
  results = api.run_config(_config(**{"training.lr": 0.05, "training.warmup_epochs": 0.0,
                                      "training.lr_schedule": "cosine"}), None)
  assert results["health"] == {"status": "healthy", "flags": []}
  assert results["test"]["ensemble"]["accuracy"] > 0.6


@requires_fashion_mnist
def test_stop_ends_the_cli_run_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, collapsed):
  workdir = tmp_path / "run"
  flags = [f"--config.{k}={v}" for k, v in COLLAPSE.items()]
  base = [sys.executable, "-m", "experiments.train", "--config", "experiments/configs/single.py", "--workdir",
          str(workdir), *flags, "--config.evaluation.ood_datasets=()", "--config.evaluation.corruptions=()",
          "--config.evaluation.plots=False"]
  out = subprocess.run(base + ["--config.training.on_unhealthy=stop"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode != 0
  last = out.stderr.strip().splitlines()[-1]
  assert "loss_spike" in last and "seed 0 member 0" in last and "step 2" in last, out.stderr[-2000:]
  assert "checkpoint (step 16)" in last
  assert sorted(os.listdir(workdir / "checkpoints")) == ["16"]
  assert not (workdir / "results.json").exists()
  # resumed under warn: the flags of the uninterrupted run, training to the end
  again = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resuming from step 16" in again.stderr
  resumed = json.loads((workdir / "results.json").read_text())["health"]
  key = lambda report: [(f["signal"], f["phase"], f["step"], f["member"]) for f in report["flags"]]
  assert key(resumed) == key(collapsed["health"])


def _fake(label, seed, accuracy, unhealthy=False):
  flags = [{"message": f"seed {seed} member 0 (x), step 9: loss_spike: ..."}] if unhealthy else []
  return {"label": label, "seed": seed, "num_members": 1, "params_total": 10,
          "health": {"status": "unhealthy" if unhealthy else "healthy", "flags": flags},
          "test": {"ensemble": {"accuracy": accuracy, "nll": 0.3, "ece": 0.01, "brier": 0.1}},
          "flops": {"train_x_dense": 1.0, "inference_x_dense": 1.0}, "train_time_s": 1.0}


def test_compare_marks_an_unhealthy_seed_and_shows_each_seed_instead_of_a_mean():
  results = [_fake("good", s, 0.88 + s / 100) for s in range(3)]
  results += [_fake("bad", 0, 0.10, unhealthy=True), _fake("bad", 1, 0.75), _fake("bad", 2, 0.76)]
  table = compare.summary_table(results)
  good = next(line for line in table.splitlines() if line.startswith("| good "))
  bad = next(line for line in table.splitlines() if line.startswith("| bad "))
  assert "89.00 ± 1.00" in good and "†" not in good
  assert bad.startswith(f"| bad {compare.UNHEALTHY_MARK} |")
  assert "10.00† / 75.00 / 76.00" in bad and "±" not in bad.split("|")[4]
  section = compare.unhealthy_section(results)
  assert "bad, seed 0 member 0" in section and compare.unhealthy_section(results[:3]) == ""
