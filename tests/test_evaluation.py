"""The evaluation suite: OoD and corruption evaluation of any ensemble, its settings' errors, and
re-evaluating a finished run's saved ensemble (equal to the evaluation at the end of training)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ensembles import config as config_lib
from ensembles import data as data_lib
from ensembles import evaluation, metrics
from experiments import runner
from experiments.configs import batch_ensemble as batch_ensemble_config
from experiments.configs import cbnn as cbnn_config
from experiments.configs import edst_ensemble as edst_config
from experiments.configs import mc_dropout as mc_config
from experiments.configs import mimo as mimo_config
from conftest import make_dataset, method_config, requires_fashion_mnist, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _brightness_model(num_classes=4, members=2):
  """Member probabilities from the mean brightness (what make_dataset's labels encode)."""
  def member_probs(images):
    level = images.reshape(len(images), -1).mean(axis=1) / 255.0
    logits = -((level[:, None] * 3.3 - np.arange(num_classes)) ** 2) * 4
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return np.stack([probs ** (1 + 0.1 * m) / (probs ** (1 + 0.1 * m)).sum(1, keepdims=True) for m in range(members)])
  return member_probs


def test_evaluate_all_with_ood_and_corruptions():
  data = make_dataset(n_test=40, shape=(28, 28, 1))
  settings = {"ood_datasets": ("digits",), "ood_examples": 30, "corruptions": ("contrast", "brightness"),
              "corruption_severities": (1, 5), "corruption_examples": 24}
  out = evaluation.evaluate_all(_brightness_model(), data, settings, progress=False)
  assert set(out) == {"test", "val", "ood", "corruption"}
  assert out["ood"]["digits"]["num_examples"] == 30
  assert set(out["ood"]["digits"]) == {"msp", "entropy", "mutual_information", "num_examples"}
  c = out["corruption"]
  assert c["severities"] == [1, 5] and list(c["types"]) == ["contrast", "brightness"] and c["num_examples"] == 24
  # the clean row is the same 24-image subset, uncorrupted
  idx = evaluation._fixed_subset(40, 24)
  expected = metrics.predictive_metrics(_brightness_model()(data.x_test[idx]).mean(0), data.y_test[idx])
  assert c["clean"] == pytest.approx(expected)
  for k in ("accuracy", "nll"):
    assert c["mean"][k] == pytest.approx(np.mean([t[i][k] for t in c["types"].values() for i in range(2)]))
  # brightness + 0.3 moves images to another class of this brightness-coded task; contrast keeps the mean
  assert c["types"]["brightness"][1]["accuracy"] < c["clean"]["accuracy"] == c["types"]["contrast"][0]["accuracy"]


def _typicality_model(data, members=3):
  """Members that know what in-distribution images look like: near a class prototype (the class
  mean of the training images) they agree on its class; far from every prototype each member is
  confident in a different class (so the ensemble is uncertain and the members disagree)."""
  x_train = data.x_train.reshape(len(data.x_train), -1).astype(np.float64)
  prototypes = np.stack([x_train[data.y_train == k].mean(0) for k in range(data.num_classes)])
  scale = 1.5 * np.median(np.linalg.norm(x_train - prototypes[data.y_train], axis=1))

  def member_probs(images):
    x = images.reshape(len(images), -1).astype(np.float64)
    dist = np.linalg.norm(x[:, None] - prototypes[None], axis=-1)  # [N, K]
    typical = np.exp(-(dist.min(1) / scale) ** 2)[:, None]
    near = np.exp(-(dist - dist.min(1, keepdims=True)) / 50.0)
    near /= near.sum(1, keepdims=True)
    out = [typical * near + (1 - typical) * (np.eye(data.num_classes)[m % data.num_classes] * 0.9 +
                                             0.1 / data.num_classes) for m in range(members)]
    return np.stack(out)
  return member_probs


def test_ood_scores_are_oriented_end_to_end():
  """An in-distribution test set against obviously different images (digits) through the whole
  evaluation: every score ranks the OoD images as more uncertain (AUROC near 1; swapping the two
  sets anywhere on the way gives near 0)."""
  data = make_dataset(n_train=200, n_test=100, shape=(28, 28, 1))
  model = _typicality_model(data)
  assert np.mean(model(data.x_test).mean(0).argmax(1) == data.y_test) > 0.9  # a good in-distribution model
  out = evaluation.evaluate_all(model, data, {"ood_datasets": ("digits",), "ood_examples": 200}, progress=False)
  for score in ("msp", "entropy", "mutual_information"):
    assert out["ood"]["digits"][score]["auroc"] > 0.95, (score, out["ood"]["digits"][score])
    assert out["ood"]["digits"][score]["fpr95"] < 0.1, (score, out["ood"]["digits"][score])


def test_ood_images_of_another_shape():
  data = make_dataset(n_test=20, shape=(8, 8, 1))
  with pytest.raises(ValueError, match=r"'digits' has images of shape \(28, 28, 1\) but the model takes "
                                       r"\(8, 8, 1\); set evaluation.resize_ood=True"):
    evaluation.evaluate_all(_brightness_model(), data, {"ood_datasets": ("digits",)})
  out = evaluation.evaluate_all(_brightness_model(), data, {"ood_datasets": ("digits",), "resize_ood": True})
  assert out["ood"]["digits"]["num_examples"] == 1797
  rgb = data_lib.match_image_shape(data_lib.load_digits_mnist_style()[0][:2], (32, 32, 3), True, "digits")
  assert rgb.shape == (2, 32, 32, 3) and rgb.dtype == np.uint8


def test_cifar10_corrupted_and_ood_sets_through_tfds_mock_data():
  data = make_dataset(n_test=12, shape=(32, 32, 3))
  data = data_lib.Dataset("cifar10", *[getattr(data, f) for f in ("x_train", "y_train", "x_val", "y_val", "x_test",
                                                                    "y_test")], 10, data.mean, data.std)
  settings = {"ood_datasets": ("svhn_cropped", "cifar100"), "corruptions": ("frost", "saturate"),
              "corruption_severities": (2, 4), "corruption_examples": 5}
  with tfds.testing.mock_data(num_examples=9):
    evaluation.check_sources("cifar10", settings)
    out = evaluation.evaluate_all(_brightness_model(num_classes=10), data, settings, progress=False)
  assert out["ood"]["svhn_cropped"]["num_examples"] == 9 and "cifar100" in out["ood"]
  assert list(out["corruption"]["types"]) == ["frost", "saturate"] and out["corruption"]["num_examples"] == 5


def test_missing_tfds_set_fails_fast_and_says_how_to_get_it(tmp_path):
  with pytest.raises(data_lib.DataNotFoundError, match=r"`tfds build svhn_cropped`"):
    evaluation.check_sources("fashion_mnist", {"ood_datasets": ("svhn_cropped",)}, str(tmp_path))
  with pytest.raises(data_lib.DataNotFoundError, match=r"`tfds build cifar10_corrupted`"):
    evaluation.check_sources("cifar10", {"corruptions": ("fog",)}, str(tmp_path))


@pytest.mark.parametrize("field,value,message", [
    ("ood_datasets", ("imagenet_o",), "config.evaluation.ood_datasets must be names from"),
    ("ood_datasets", ("fashion_mnist",), "other than dataset.name='fashion_mnist'"),
    ("corruptions", ("fog",), "config.evaluation.corruptions has unknown type(s) ['fog'] for fashion_mnist"),
    ("corruption_severities", (0, 3), "config.evaluation.corruption_severities must be a non-empty subset"),
    ("corruption_examples", -1, "config.evaluation.corruption_examples must be an integer >= 0"),
    ("ood_examples", -3, "config.evaluation.ood_examples must be an integer >= 0"),
])
def test_bad_evaluation_settings_are_named(field, value, message):
  cfg = tiny_config()
  cfg.evaluation[field] = value
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(cfg)
  assert message in str(err.value)


def _method_config(module, **overrides):
  c = method_config(module, hidden=(16,), **overrides)
  c.evaluation.update(ood_datasets=("digits",), resize_ood=True, corruptions=("contrast",),
                      corruption_severities=(3,), corruption_examples=16)
  return c


@pytest.mark.parametrize("module,overrides", [
    (tiny_config, {}),  # deep ensemble: stacked members
    (cbnn_config, {"training.epochs": 3}),  # checkpoints with α weights
    (mc_config, {}),  # one network, T dropout passes
    (edst_config, {"edst.exploration_epochs": 1, "edst.refinement_epochs": 1, "training.epochs": 3}),  # tickets
    (batch_ensemble_config, {"training.epochs": 2}),  # one saved network of M members (its wrapper rebuilt)
    (mimo_config, {"training.epochs": 2}),
], ids=["deep_ensemble", "cbnn", "mc_dropout", "edst", "batch_ensemble", "mimo"])
def test_saved_ensemble_evaluates_as_at_the_end_of_training(tmp_path, fake_data, module, overrides):
  cfg = tiny_config(**{"evaluation.ood_datasets": ("digits",), "evaluation.resize_ood": True}) \
      if module is tiny_config else _method_config(module, **overrides)
  if module is edst_config:
    cfg.num_members, cfg.sparse.update_every = 2, 2
  trained = runner.run(cfg, str(tmp_path))
  again = runner.evaluate_workdir(str(tmp_path))
  for split in ("test", "val"):
    for k in ("accuracy", "nll", "ece", "brier"):
      assert again[split]["ensemble"][k] == pytest.approx(trained[split]["ensemble"][k], rel=1e-6)
  for score, values in trained["ood"]["digits"].items():
    assert again["ood"]["digits"][score] == pytest.approx(values, rel=1e-6)
  if "corruption" in trained:
    assert again["corruption"]["mean"] == pytest.approx(trained["corruption"]["mean"], rel=1e-6)
  assert again["num_members"] == trained["num_members"]


def test_evaluating_a_folder_without_members_says_so(tmp_path, fake_data):
  with pytest.raises(FileNotFoundError, match="is not a run folder"):
    runner.evaluate_workdir(str(tmp_path))
  runner.run(tiny_config(), str(tmp_path))
  import shutil
  shutil.rmtree(tmp_path / "ensemble")
  with pytest.raises(FileNotFoundError, match="No saved ensemble members in"):
    runner.evaluate_workdir(str(tmp_path))


@requires_fashion_mnist
def test_evaluate_command(tmp_path):
  workdir = str(tmp_path / "run")
  cfg = tiny_config(**{"dataset.train_subset": 256, "dataset.test_subset": 100})
  runner.run(cfg, workdir)
  out = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--workdir", workdir, "--ood_datasets=digits",
                        "--corruptions=contrast,pixelate", "--corruption_examples=50"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "| digits (1797) | entropy |" in out.stdout and "| pixelate |" in out.stdout
  saved = json.load(open(os.path.join(workdir, "evaluation.json")))
  assert saved["corruption"]["num_examples"] == 50 and saved["test"]["ensemble"]["accuracy"] > 0.3
  assert os.path.exists(os.path.join(workdir, "corruption.png")) and os.path.exists(os.path.join(workdir, "reliability.png"))
  missing = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--workdir", str(tmp_path / "nothing")],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert missing.returncode == 2 and "is not a run folder" in missing.stderr


def test_corruption_cache_is_bounded_and_can_be_cleared(monkeypatch):
  data = make_dataset(n_test=20, shape=(8, 8, 1))
  evaluation.clear_corruption_cache()
  list(evaluation.corrupted_sets(data, ["contrast", "brightness"], (1, 2), 10))
  assert evaluation.clear_corruption_cache() == 4 * 10 * 8 * 8  # 4 uint8 sets of 10 images
  assert evaluation.clear_corruption_cache() == 0
  monkeypatch.setattr(evaluation, "CORRUPTION_CACHE_BYTES", 2 * 10 * 8 * 8)  # room for two sets
  first = list(evaluation.corrupted_sets(data, ["contrast", "brightness"], (1, 2), 10))
  assert evaluation.clear_corruption_cache() == 2 * 10 * 8 * 8
  again = list(evaluation.corrupted_sets(data, ["contrast", "brightness"], (1, 2), 10))
  for (n1, s1, x1, _), (n2, s2, x2, _) in zip(first, again):  # regenerated sets are the same
    assert (n1, s1) == (n2, s2) and np.array_equal(x1, x2)


def test_shifted_sets_predict_among_their_own_classes():
  """ImageNet-A/-R protocol: each member's prediction restricted to the set's classes equals the
  softmax of those classes' logits; labels become indices into the kept classes."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 10))  # [M, N, K]
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  classes = np.array([1, 4, 7])
  labels = np.array([4, 1, 7, 7, 4])
  kept, mapped = evaluation.restrict_to_classes(probs, labels, classes)
  sub = logits[..., classes]
  np.testing.assert_allclose(kept, np.exp(sub) / np.exp(sub).sum(-1, keepdims=True), rtol=1e-6)
  np.testing.assert_array_equal(mapped, [1, 0, 2, 2, 1])
  same, same_labels = evaluation.restrict_to_classes(probs, labels, np.arange(10))  # every class: unchanged
  assert same is probs and same_labels is labels
