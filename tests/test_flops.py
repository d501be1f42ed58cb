import pytest

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


def test_training_flops_rules():
  assert flops.train_step_flops(10.0, 2.0, "dense") == 30.0
  assert flops.train_step_flops(10.0, 2.0, "static") == 6.0 == flops.train_step_flops(10.0, 2.0, "set")
  assert flops.train_step_flops(10.0, 2.0, "rigl", 4) == pytest.approx((3 * 2 * 4 + 2 * 2 + 10) / 5)
  with pytest.raises(ValueError, match="FLOPs rule"):
    flops.train_step_flops(1.0, 1.0, "snip")
