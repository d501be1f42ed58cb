import pytest

from ensembles import api
from ensembles import flops
from ensembles.models import build_model


def test_small_conv_net_by_hand():
  # LeNet on 8x8x1: conv 3x3 1->4 (SAME) -> pool -> conv 3x3 4->6 -> pool -> dense 24->5 -> dense 5->3
  model = build_model("lenet", 3, {"features": (4, 6), "hidden": (5,), "kernel_size": 3})
  costs = flops.layer_costs(model, (8, 8, 1))
  macs = {c.path: c.macs for c in costs}
  assert macs == {
      "['Conv_0']['kernel']": 8 * 8 * 4 * (3 * 3 * 1),
      "['Conv_1']['kernel']": 4 * 4 * 6 * (3 * 3 * 4),
      "['Dense_0']['kernel']": 5 * (2 * 2 * 6),
      "['Dense_1']['kernel']": 3 * 5,
  }
  assert flops.forward_flops(costs) == 2 * sum(macs.values())
  half = {"['Conv_1']['kernel']": 0.5}
  assert flops.forward_flops(costs, half) == 2 * (sum(macs.values()) - 0.5 * macs["['Conv_1']['kernel']"])


def test_strided_resnet_layers_and_wrn28_10():
  costs = flops.layer_costs(build_model("resnet", 10, {"depth": 20}), (32, 32, 3))
  assert len(costs) == 19 + 2 + 1  # 19 3x3 convs, 2 projection shortcuts, 1 dense
  assert sum(c.macs for c in costs) == pytest.approx(40.8e6, rel=0.01)  # ResNet-20: ~41M MACs
  wrn = flops.layer_costs(build_model("wide_resnet", 10, {"depth": 28, "width": 10}), (32, 32, 3))
  assert sum(c.macs for c in wrn) == pytest.approx(5.25e9, rel=0.01)  # WRN-28-10: 5.25 GMACs


def test_training_flops_formulas():
  f_dense, f_sparse, dt, batch = 10.0, 2.0, 4, 8
  assert flops.sparse_training_flops(f_dense, f_dense, 7, batch) == batch * 7 * 3 * f_dense  # dense
  assert flops.sparse_training_flops(f_dense, f_sparse, 7, batch) == batch * 7 * 3 * f_sparse  # static, SET
  # one gradient update every ΔT + 1 steps: RigL's per-step formula (3·f_S·ΔT + 2·f_S + f_D)/(ΔT + 1)
  steps = 5 * (dt + 1)
  rigl = (3 * f_sparse * dt + 2 * f_sparse + f_dense) / (dt + 1)
  assert flops.sparse_training_flops(f_dense, f_sparse, steps, batch, 5) == pytest.approx(batch * steps * rigl)


# Training FLOPs of whole runs against counts by hand (fake_data: 128 images of 8x8x1, 4 classes;
# batch 32 -> 4 steps per epoch). A (in -> out) dense layer costs 2·in·out FLOPs per example.
def _run(tmp_path, module, hidden, **overrides):
  import importlib
  from conftest import method_config
  from ensembles import config as config_lib
  cfg = method_config(importlib.import_module(f"experiments.configs.{module}"), hidden=hidden, **overrides)
  config_lib.validate(cfg)
  return cfg, api.run_config(cfg, str(tmp_path))["flops"]


def test_dst_counts_each_gradient_update_before_the_stop(tmp_path, fake_data):
  cfg, f = _run(tmp_path, "dst_ensemble", (16,), **{"training.epochs": 4, "sparse.update_every": 3,
                                                     "sparse.stop_fraction": 0.5})
  f_dense = 2 * (64 * 16 + 16 * 4)
  assert f["forward_flops_dense"] == f_dense
  f_sparse = f["inference_flops"] / 3  # M = 3 members at the realised densities
  # 16 steps, stop at step 8: RigL updates after steps 3 and 6 only
  hand = 3 * 32 * (16 * 3 * f_sparse + 2 * (f_dense - f_sparse))
  assert f["train_flops"] == pytest.approx(hand, rel=1e-9)
  assert f["train_x_dense"] == pytest.approx(hand / (16 * 32 * 3 * f_dense), rel=1e-9)


def test_edst_counts_global_explorations_and_validation(tmp_path, fake_data):
  overrides = {"edst.exploration_epochs": 1, "edst.refinement_epochs": 1, "training.epochs": 4,
               "sparse.update_every": 2, "edst.exploration_growth": "gradient", "edst.ticket": "best_val",
               "edst.refine_stop_fraction": 0.75, "edst.reference_epochs": 2}
  cfg, f = _run(tmp_path, "edst_ensemble", (16,), **overrides)
  f_dense = 2 * (64 * 16 + 16 * 4)
  f_sparse = f["inference_flops"] / 3
  # phases: exploration [0, 4), refinement [4, 8), [8, 12), [12, 16); ΔT = 2, updates in the first
  # 3 of 4 steps of each refinement phase: after steps 2 (exploration) and 6, 10, 14 -> 4 RigL updates,
  # plus 2 global explorations by gradient; best_val: 3 validation passes over 16 images
  hand = 32 * (16 * 3 * f_sparse + (4 + 2) * (f_dense - f_sparse)) + 3 * 16 * f_sparse
  assert f["train_flops"] == pytest.approx(hand, rel=1e-9)
  assert f["train_x_dense"] == pytest.approx(hand / (8 * 32 * 3 * f_dense), rel=1e-9)


def test_unit_children_charged_at_their_real_compute(tmp_path, fake_data):
  cfg, f = _run(tmp_path, "subnetwork_ensemble", (16, 16), num_members=2,
                **{"subnetwork.granularity": "unit", "subnetwork.share_input_output": True, "training.epochs": 2})
  # input layer 64 -> 16 shared; the middle 16 -> 16 split by units: each child keeps 8 of its
  # outputs, reading 16 live inputs; the output layer 16 -> 4 is shared but reads 8 live units
  f_dense = 2 * (64 * 16 + 16 * 16 + 16 * 4)
  f_child = 2 * (64 * 16 + 16 * 8 + 8 * 4)
  assert f["inference_flops"] == pytest.approx(2 * f_child, rel=1e-9)
  hand = 4 * 32 * 3 * f_dense + 2 * 4 * 32 * 3 * f_child  # 1 parent epoch, 1 child epoch, 4 steps each
  assert f["train_flops"] == pytest.approx(hand, rel=1e-9)
  assert f["train_x_dense"] == pytest.approx(hand / (2 * 4 * 32 * 3 * f_dense), rel=1e-9)  # x 2 dense epochs


def test_subnetwork_reference_epochs_sets_the_dense_budget(tmp_path, fake_data):
  """subnetwork.reference_epochs: training FLOPs x one dense model trained that many epochs (an
  ablation with a larger budget than the single model's), not x its own training.epochs."""
  _, own = _run(tmp_path / "own", "subnetwork_ensemble", (16, 16), num_members=2, **{"training.epochs": 4})
  _, ref = _run(tmp_path / "ref", "subnetwork_ensemble", (16, 16), num_members=2,
                **{"training.epochs": 4, "subnetwork.reference_epochs": 2})
  assert ref["train_flops"] == pytest.approx(own["train_flops"], rel=1e-9)
  assert ref["train_x_dense"] == pytest.approx(2 * own["train_x_dense"], rel=1e-9)
