"""FGE: the learning rate is the configured schedule during pre-training, then triangular cycles
between α1 and α2 whose minima are the snapshots; the run keeps the single model's budget."""
import numpy as np
import pytest

import ensembles
from ensembles import config as config_lib
from ensembles import train as train_lib
from ensembles.errors import ConfigError
from ensembles.methods import fge
from conftest import make_dataset, tiny_config


def test_cycle_layout_ends_at_the_last_snapshot():
  pretrain, length, snapshots = fge.cycle_layout(1000, 4, 0.8)
  assert pretrain == 800 and length == pytest.approx(200 / 3.5)
  assert snapshots == [829, 886, 943, 1000]  # round(800 + (k + ½) · 57.14)


def test_schedule_pretrains_as_configured_then_cycles_between_the_two_rates():
  t = tiny_config(**{"training.lr": 0.1, "training.lr_schedule": "cosine"}).training
  pretrain, length, snapshots = fge.cycle_layout(100, 3, 0.5)  # 50 steps, then cycles of 20
  base = train_lib.learning_rate_schedule(t, pretrain, 10)
  schedule = fge.fge_schedule(base, pretrain, length, 0.02, 0.001)
  lr = np.array([float(schedule(s)) for s in range(101)])
  np.testing.assert_allclose(lr[:50], [float(base(s)) for s in range(50)], rtol=1e-6)  # cosine over 50 steps
  assert lr[0] == pytest.approx(0.1) and lr[49] < 0.001
  np.testing.assert_allclose(lr[[50, 70, 90]], 0.02, rtol=1e-6)  # each cycle starts (and ends) at α1
  np.testing.assert_allclose(lr[snapshots], 0.001, rtol=1e-5)  # snapshots at the minima: α2
  assert snapshots == [60, 80, 100]
  np.testing.assert_allclose(lr[55], 0.5 * (0.02 + 0.001), rtol=1e-6)  # linear: halfway down at a quarter
  np.testing.assert_allclose(lr[65], 0.5 * (0.02 + 0.001), rtol=1e-6)  # and halfway back up at three quarters
  assert lr[50:].min() >= 0.001 - 1e-9 and lr[50:].max() <= 0.02 + 1e-9


def test_fge_keeps_the_single_model_budget_and_collects_m_snapshots():
  data = make_dataset(n_train=128, n_val=16, n_test=32)
  result = ensembles.fit("fge", ensembles.api.build_model(tiny_config(), data), data, epochs=5, batch_size=32,
                         fge={"pretrain_fraction": 0.6})
  r = result.results
  assert r["num_members"] == 3 and r["train_steps"] == 20
  assert r["fge"] == {"pretrain_steps": 12, "cycle_steps": pytest.approx(8 / 2.5), "snapshot_steps": [14, 17, 20]}
  assert r["flops"]["train_x_dense"] == pytest.approx(1.0)  # one network trained for the budget
  params = result.ensemble.params["Dense_0"]["kernel"]
  assert not np.allclose(params[0], params[1]) and not np.allclose(params[1], params[2])


def test_too_short_cycles_are_refused_naming_the_field():
  data = make_dataset(n_train=128, n_val=16, n_test=32)
  with pytest.raises(ConfigError, match=r"config.fge.pretrain_fraction must be small enough that each of the M = 3 "
                                        r"cycles gets 2 or more of the 2 steps after pre-training, got 0.9"):
    ensembles.fit("fge", ensembles.api.build_model(tiny_config(), data), data, epochs=5, batch_size=32,
                  fge={"pretrain_fraction": 0.9})
  with pytest.raises(ConfigError, match=r"config.fge.lr_min_factor must be <= fge.lr_max_factor \(0.2\), got 0.5"):
    config_lib.validate(tiny_config(method="fge", fge={"pretrain_fraction": 0.8, "lr_max_factor": 0.2,
                                                          "lr_min_factor": 0.5}))
