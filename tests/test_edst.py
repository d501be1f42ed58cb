"""EDST: phase schedule, global exploration, tickets saved with Orbax and evaluated as an ensemble."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ensembles import api
from ensembles import data as data_lib

from ensembles import config as config_lib, context, sparse
from ensembles.errors import ConfigError
from ensembles.methods import edst_ensemble, sparse_common
from ensembles.models import build_model
from experiments.configs import edst_ensemble as edst_config
from conftest import make_dataset, tiny_config


def _cfg():
  c = edst_config.get_config()
  tiny = tiny_config()
  c.evaluation.update(tiny.evaluation)
  for block in ("dataset", "training"):
    c[block].update({k: v for k, v in tiny[block].items() if k not in ("epochs", "lr_schedule")})
  c.model.hidden = (32,)
  c.num_members = 3
  c.edst.exploration_epochs, c.edst.refinement_epochs = 2, 1
  c.training.epochs = 5
  c.sparse.update_every = 2
  c.log_every_steps, c.checkpoint_every_steps, c.eval_batch_size = 2, 4, 50
  return c


def test_phase_schedule():
  e = _cfg().edst
  assert edst_ensemble.phase_boundaries(e, 3, 10) == [(20, 30), (30, 40), (40, 50)]
  lr = edst_ensemble.edst_lr_schedule(e, 3, 10)
  got = [float(lr(t)) for t in (0, 19, 20, 24, 25, 29, 30, 35, 49)]
  assert got == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.01, 0.001, 0.001])


def test_exploration_lr_zero_follows_training_lr(tiny_dataset):
  """edst.exploration_lr = 0: the exploration trains at training.lr (the study's lr for every method)."""
  cfg = _cfg()
  cfg.edst.exploration_lr, cfg.training.lr, cfg.edst.warmup_epochs = 0.0, 0.05, 0.0
  config_lib.validate(cfg)
  options = edst_ensemble.EDSTOptions(**cfg.edst)
  lr = edst_ensemble.edst_lr_schedule(options, 3, 10, base_lr=0.05)
  assert [float(lr(t)) for t in (0, 19, 20, 25)] == pytest.approx([0.05, 0.05, 0.01, 0.001])
  with pytest.raises(ValueError, match="exploration_lr"):
    edst_ensemble.edst_lr_schedule(options, 3, 10)
  model = build_model("mlp", tiny_dataset.num_classes, {"hidden": (8,)})
  phase = edst_ensemble.ticket_phase(context.build(cfg, model, tiny_dataset, None),
                                     api.get_method("edst_ensemble").read_options(cfg))
  assert float(phase.phase_args["schedule"](0)) == pytest.approx(0.05)


def test_default_warmup_is_one_epoch_or_training_warmup_if_longer(tiny_dataset):
  """EDST's own warm-up (edst.warmup_epochs = 1, chosen on validation): the lr rises linearly from 0
  over the first epoch; a longer training.warmup_epochs wins; 0 and 0 give none."""
  model = build_model("mlp", tiny_dataset.num_classes, {"hidden": (8,)})

  def lr_at(cfg, steps):
    config_lib.validate(cfg)
    run = context.build(cfg, model, tiny_dataset, None)
    schedule = edst_ensemble.ticket_phase(run, api.get_method("edst_ensemble").read_options(cfg)).phase_args["schedule"]
    return run.steps_per_epoch, [float(schedule(t)) for t in steps]

  cfg = _cfg()
  n, _ = lr_at(cfg, [0])
  assert n >= 2
  assert cfg.edst.exploration_epochs == 2  # exploration: steps [0, 2n)
  assert lr_at(cfg, [0, n // 2, n, 2 * n - 1])[1] == pytest.approx([0.0, 0.1 * (n // 2) / n, 0.1, 0.1])
  cfg.training.warmup_epochs = 2.0
  assert lr_at(cfg, [n, 2 * n - 1])[1] == pytest.approx([0.05, 0.1 * (2 * n - 1) / (2 * n)])
  cfg.training.warmup_epochs, cfg.edst.warmup_epochs = 0.0, 0.0
  assert lr_at(cfg, [0])[1] == pytest.approx([0.1])


def test_exploration_milestones_and_warmup():
  """The ImageNet recipe's exploration: lr x decay at each milestone epoch, linear warm-up from 0."""
  e = _cfg().edst
  e.exploration_milestones, e.exploration_decay = (1,), 0.5
  options = edst_ensemble.EDSTOptions(**e)
  lr = edst_ensemble.edst_lr_schedule(options, 3, 10, warmup_epochs=0.5)
  got = [float(lr(t)) for t in (0, 1, 5, 9, 10, 19, 20, 25)]
  assert got == pytest.approx([0.0, 0.02, 0.1, 0.1, 0.05, 0.05, 0.01, 0.001])
  with pytest.raises(ConfigError, match="edst.exploration_milestones"):
    cfg = _cfg()
    cfg.edst.exploration_milestones = (2,)  # exploration is 2 epochs long
    config_lib.validate(cfg)


def _update_steps(cfg, steps_per_epoch=10):
  p = edst_ensemble.regular_updates(cfg.sparse, cfg.edst, 3, steps_per_epoch)
  return {t: p(t) for t in range(1, 5 * steps_per_epoch + 1) if p(t) is not None}


def test_drop_schedule_restarts_per_phase_and_updates_stop_before_each_ticket():
  cfg = _cfg()  # phases: exploration [0, 20), refinement [20, 30), [30, 40), [40, 50); ΔT = 2
  cfg.sparse.drop_schedule, cfg.sparse.drop_fraction, cfg.edst.refine_stop_fraction = "cosine", 0.5, 0.6
  updates = _update_steps(cfg)
  assert sorted(updates) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 22, 24, 32, 34, 42, 44]  # none in [26, 30] etc.
  window = 6  # 0.6 of a 10-step phase
  for a in (20, 30, 40):  # the cosine restarts at every phase start: p = ½·0.5·(1 + cos(π (t − a) / 6))
    for t in (a + 2, a + 4):
      assert updates[t] == pytest.approx(0.25 * (1 + np.cos(np.pi * (t - a) / window)), rel=1e-6)
  assert updates[2] == pytest.approx(0.25 * (1 + np.cos(np.pi * 2 / 20)), rel=1e-6)  # exploration: T_end = 20
  # 'global' with no stop: the schedule decays once over the run (the behaviour before per_phase)
  cfg.edst.drop_schedule, cfg.edst.refine_stop_fraction = "global", 1.0
  updates = _update_steps(cfg)
  assert 20 not in updates and 30 not in updates and 28 in updates and 48 in updates
  assert updates[42] == pytest.approx(0.25 * (1 + np.cos(np.pi * 42 / 50)), rel=1e-6)


def test_global_exploration_replaces_at_least_q_of_each_layer():
  params = build_model("lenet", 10, {"features": (8, 16), "hidden": (32,), "kernel_size": 3}).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 1)))["params"]
  plan = sparse.make_plan(params, 0.8, "erk")
  inner = optax.sgd(0.1)
  params, state = sparse.init_sparse(jax.random.PRNGKey(1), params, sparse.masked(inner), plan)
  params = jax.tree.map(lambda w, m: jnp.where(m, w + 1.0, 0.0), params, state.masks)  # no zero actives
  new_params, new_state = sparse.update_topology(jax.random.PRNGKey(2), params, state, None, 0.8,
                                                sparse.Topology(plan, sparse.masked(inner)))
  flat = lambda tree: {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  old, new, w_old, w_new = flat(state.masks), flat(new_state.masks), flat(params), flat(new_params)
  for name, count in plan.counts.items():
    k = round(0.8 * count)
    moved = int((old[name] & ~new[name]).sum())
    # every layer moves k connections, or all its inactive positions when it has fewer (a nearly
    # dense layer; the rest are just-pruned weights regrown at zero)
    assert moved == min(k, plan.sizes[name] - count) and int(new[name].sum()) == count
    kept_values = int((w_new[name] == w_old[name])[new[name] & old[name]].sum())
    assert kept_values == count - k  # at least q of the active weights are replaced or reset


def test_edst_end_to_end_tickets_differ_and_resume(tmp_path, monkeypatch):
  dataset = make_dataset(n_train=128, n_val=16, n_test=32)
  monkeypatch.setattr(data_lib, "load_dataset", lambda _: dataset)
  updates, calls = [], []
  make_update = sparse_common.make_topology_update

  def counted(run, topology):  # every update made through the update function(s) the run built
    update = make_update(run, topology)
    updates.append(update)
    return lambda *args: calls.append(args[2:]) or update(*args)

  monkeypatch.setattr(sparse_common, "make_topology_update", counted)
  cfg = _cfg()
  # the official schedule (no warm-up): with 4 steps per epoch the default one-epoch warm-up leaves the
  # 16 validation images at chance in epoch 1, a health flag (test_default_warmup_... tests the default)
  cfg.edst.warmup_epochs = 0.0
  config_lib.validate(cfg)
  results = api.run_config(cfg, str(tmp_path))
  # one compiled update serves the regular updates (gradient growth, p <= 0.5) and the global
  # explorations (random growth, q = 0.8): drop fraction and growth rule are its traced arguments
  assert len(updates) == 1 and updates[0].jitted._cache_size() == 1
  assert [(f, g) for f, g in calls if f == 0.8] == [(0.8, False)] * 2
  assert {g for f, g in calls if f != 0.8} == {True} and len(calls) > 2
  assert results["num_members"] == 3 and len(results["test"]["members"]) == 3
  overlap = np.array(results["tickets"]["mask_overlap"])
  np.testing.assert_allclose(np.diag(overlap), 1.0, rtol=1e-6)
  off_diagonal = overlap[~np.eye(3, dtype=bool)]
  assert off_diagonal.max() < 0.9  # global exploration moved at least 10% of the active weights
  events = [json.loads(l).get("event") for l in open(tmp_path / "metrics.jsonl")]
  assert [e for e in events if e] == ["ticket 0 saved", "global exploration before phase 1", "ticket 1 saved",
                                      "global exploration before phase 2", "ticket 2 saved"]
  assert results["flops"]["train_x_dense"] < 1.0
  assert sorted(p.name for p in (tmp_path / "tickets").iterdir()) == ["0", "1", "2"]
  # a rerun resumes from the final checkpoint and reloads the same tickets
  again = api.run_config(cfg, str(tmp_path))
  assert again["test"]["ensemble"] == results["test"]["ensemble"]


def test_best_validation_tickets(tmp_path, monkeypatch):
  dataset = make_dataset(n_train=128, n_val=16, n_test=32)
  monkeypatch.setattr(data_lib, "load_dataset", lambda _: dataset)
  cfg = _cfg()
  cfg.edst.refinement_epochs, cfg.training.epochs = 2, 8
  cfg.edst.ticket = "best_val"
  cfg.edst.refine_lr, cfg.edst.refine_decay = 0.5, 1.0  # a noisy refinement: the last epoch is not always best
  config_lib.validate(cfg)
  results = api.run_config(cfg, str(tmp_path))
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  # the trainer's own validation at every epoch end, and the chosen tickets
  val = {r["step"]: r["val_nll"] for r in records if "val_nll" in r and "event" not in r}
  from ensembles import checkpoints
  for k, (a, b) in enumerate(edst_ensemble.phase_boundaries(cfg.edst, 3, 4)):
    meta = checkpoints.member_meta(str(tmp_path / "tickets"), k)
    candidates = {t: v for t, v in val.items() if a < t <= b}
    assert len(candidates) == 2
    best_step = min(candidates, key=candidates.get)
    assert meta["step"] == best_step and meta["val_nll"] == pytest.approx(candidates[best_step], rel=1e-5)
  again = api.run_config(cfg, str(tmp_path))
  assert again["test"]["ensemble"] == results["test"]["ensemble"]


@pytest.mark.parametrize("field,value,message", [
    ("edst.exploration_epochs", 0, "config.edst.exploration_epochs must be an integer >= 1"),
    ("edst.global_drop_fraction", 1.0, r"config.edst.global_drop_fraction must be in \(0, 1\)"),
    ("training.epochs", 7, "config.training.epochs must be equal to edst.exploration_epochs"),
    ("edst.drop_schedule", "cosine", "config.edst.drop_schedule must be one of"),
    ("edst.refine_stop_fraction", 1.5, r"config.edst.refine_stop_fraction must be in \[0, 1\]"),
    ("edst.ticket", "best", "config.edst.ticket must be one of"),
])
def test_bad_edst_config(field, value, message):
  cfg = _cfg()
  block, name = field.split(".")
  cfg[block][name] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(cfg)
