"""The papers' recipes (experiments/recipes): every config is valid and builds its model, and every
docstring's ESTIMATE paragraph is what experiments/estimate.py computes from the config now."""
import glob
import os
import re

import pytest

from ensembles import config as config_lib
from ensembles import models
from experiments import estimate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "experiments", "recipes", "[!_]*.py")))


def test_there_are_recipes_for_each_paper():
  names = " ".join(RECIPES)
  for part in ("freetickets_imagenet_resnet50_edst", "freetickets_imagenet_resnet50_dst", "imagenet_resnet50_deep_ensemble",
               "imagenet_resnet50_single", "freetickets_cifar100_wrn28_10_edst", "cbnn_cifar100_resnet110",
               "subnetwork_cifar100"):
    assert part in names


@pytest.mark.parametrize("path", RECIPES)
def test_recipe_is_valid_and_its_estimate_is_current(path, monkeypatch):
  monkeypatch.chdir(ROOT)
  config = estimate.load_config(path)
  config_lib.validate(config)
  fields = {k: v for k, v in config.model.items() if k != "name"}
  models.build_model(config.model.name, 10, fields)
  source = open(path).read()
  assert "python -m experiments.train" in source and path in source  # the command names this file
  command = re.search(r'--hardware "([^"]+)" --chips (\d+) --mfu ([\d.]+)', source)
  assert command, f"{path}: no estimate command in the docstring"
  block = estimate.docstring_block(path, command.group(1), int(command.group(2)), float(command.group(3)))
  assert block in source, f"{path}: the ESTIMATE paragraph is stale; rerun the estimate and paste:\n{block}"


def test_estimate_of_a_single_dense_model_by_hand():
  """ResNet-50, 100 epochs, batch 1024 over 1,281,167 - 10,000 images: 3 x f x images FLOPs."""
  config = estimate.load_config(os.path.join(ROOT, "experiments/recipes/imagenet_resnet50_single.py"))
  r = estimate.estimate(config, "TPU v4", chips=32, mfu=0.2)
  steps_per_epoch = (1_281_167 - 10_000) // 1024
  flops = 3 * r["forward_gflops"] * 1e9 * 100 * steps_per_epoch * 1024
  assert r["train_pflops"] * 1e15 == pytest.approx(flops)
  assert r["hours"] * 3600 == pytest.approx(flops / (32 * 275e12 * 0.2))
  assert r["paper_x_dense"] == pytest.approx(1.0)
  assert 8.1 < r["forward_gflops"] < 8.3  # 4.09 GMACs


def test_subnetwork_estimate_keeps_the_shared_layers_whole():
  """Subnetwork children (MLP 784-512-512-10, M = 3, parent 5 + children 5 epochs): with the input
  and output layers whole (the default) a child computes them in full and a third of the middle
  layer; partitioning every layer gives a third of everything (one dense model in all)."""
  config = estimate.load_config(os.path.join(ROOT, "experiments/configs/subnetwork_ensemble.py"))
  config.training.compute_dtype = "bfloat16"
  dense = 784 * 512 + 512 * 512 + 512 * 10
  child = 784 * 512 + 512 * 512 / 3 + 512 * 10
  assert estimate.estimate(config)["paper_x_dense"] == pytest.approx((5 + 3 * 5 * child / dense) / 10)
  config.subnetwork.share_input_output = False
  assert estimate.estimate(config)["paper_x_dense"] == pytest.approx(1.0)


def test_estimate_sizes_the_network_a_method_trains():
  """MIMO's network reads M images and gives M·K logits: its forward FLOPs exceed the plain model's,
  by exactly the first and last layers' extra width (MLP 784-512-512-10, M = 3)."""
  config = estimate.load_config(os.path.join(ROOT, "experiments/configs/mimo.py"))
  plain = estimate.load_config(os.path.join(ROOT, "experiments/configs/single.py"))
  for c in (config, plain):
    c.training.compute_dtype = "bfloat16"  # the accelerators' peak is given for bf16
  f_mimo = estimate.estimate(config)["forward_gflops"] * 1e9
  f_plain = estimate.estimate(plain)["forward_gflops"] * 1e9
  assert f_plain == pytest.approx(2 * (784 * 512 + 512 * 512 + 512 * 10))
  assert f_mimo == pytest.approx(2 * (3 * 784 * 512 + 512 * 512 + 512 * 30))


def test_seeds_as_members_estimate_by_hand(capsys):
  """S seeds one after another cost S·(T0 + t) per step, as members T0 + S·t: with no overhead the
  ratio is 1, with no compute it is S; the printed table uses the same numbers."""
  config = estimate.load_config(os.path.join(ROOT, "experiments/configs/deep_ensemble.py"))
  r = estimate.estimate(config, "H100", 1, 0.4)
  t = 1.0 / r["steps_per_s"]
  m, b = config.num_members, config.training.batch_size  # the members of one step, each its batch
  assert t == pytest.approx(3 * r["forward_gflops"] * 1e9 * m * b / (494e12 * 0.4))
  assert estimate.seeds_speedup(r, 3, 0.0)["ratio"] == pytest.approx(1.0)
  assert estimate.seeds_speedup(r, 3, 1e3)["ratio"] == pytest.approx(3.0, rel=1e-6)
  e = estimate.seeds_speedup(r, 3, 1e-4)
  assert e["ratio"] == pytest.approx(3 * (1e-4 + t) / (1e-4 + 3 * t))
  assert e["as_members_h"] == pytest.approx(r["steps"] * (1e-4 + 3 * t) / 3600)
  estimate.main(["--config", os.path.join(ROOT, "experiments/configs/deep_ensemble.py"), "--hardware", "H100", "--chips", "1",
                 "--mfu", "0.4", "--seeds", "3", "--step_overhead_ms", "0.1"])
  assert f"| {e['ratio']:.2f} |" in capsys.readouterr().out
