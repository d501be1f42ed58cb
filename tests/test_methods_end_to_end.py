"""Every method end to end on a tiny dataset (fake_data: 128 images 8x8x1, 4 classes; batch 32, so 4
steps per epoch), against what a user relies on:

- an interrupted run resumed from its last checkpoint ends with exactly the uninterrupted run's
  ensemble (interruptions placed mid-cycle, mid-segment, in the children's phase, before an EDST
  ticket save and global exploration that the resumed run replays);
- training and inference FLOPs equal a count by hand (an MLP layer in -> out costs 2·in·out FLOPs
  per example forward, training 3x forward; sparse layers count their nonzero weights);
- snapshots and CBNN checkpoints are the parameters exactly at their segment ends;
- optimizer moments are zero wherever a sparse mask is False (the reset after prune-and-grow).
"""
import dataclasses
import importlib
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ensembles import api
from ensembles import checkpoints, config as config_lib, trainer
from experiments import runner
from conftest import method_config

STEPS_PER_EPOCH, BATCH, N_TRAIN = 4, 32, 128


class Stop(Exception):
  """Raised in place of a train step: an interruption (the process would have died here)."""


def _config(module, **overrides):
  cfg = method_config(importlib.import_module(f"experiments.configs.{module}"), hidden=(16,),
                      **{"checkpoint_every_steps": 3, "keep_checkpoints": 2, **overrides})
  config_lib.validate(cfg)
  return cfg


def _train(cfg, workdir, stop_after=None, record=(), seeds=None):
  """Runs the method. ``stop_after`` = n: raises Stop in place of the train call (one step, or a
  chunk of several) that would take the run past n steps (counting the steps of every
  `trainer.fit` of the run). ``record``: step counts after which the state a call returned is
  copied to the host (a count inside a chunk is never seen: tests that record every step set
  steps_per_dispatch = 1). ``seeds``: train these seeds as members (`api.run_config_seeds`; run in
  WORKDIR/seeds, seed s in WORKDIR/seed_s; results: a list). Returns (results or None, {count:
  state}, final states)."""
  calls, recorded, finals = {"n": 0}, {}, []
  original_fit = trainer.fit

  def fit(run, state, *args, **kwargs):
    def counted(fn, steps_of_call):
      def call(*a):
        if stop_after is not None and calls["n"] + steps_of_call(a) > stop_after:
          raise Stop()
        out = fn(*a)
        calls["n"] += steps_of_call(a)
        if calls["n"] in record:
          recorded[calls["n"]] = jax.device_get(out[0])
        return out
      return call

    run = dataclasses.replace(run, train_step=counted(run.train_step, lambda a: 1),
                              train_chunk=counted(run.train_chunk, lambda a: int(a[5])))
    out = original_fit(run, state, *args, **kwargs)
    finals.append(jax.device_get(out[0]))
    return out

  trainer.fit = fit
  try:
    if seeds is None:
      results = api.run_config(cfg, str(workdir))
    else:
      results = api.run_config_seeds(cfg, seeds, [str(workdir / f"seed_{s}") for s in seeds], str(workdir / "seeds"))
  finally:
    trainer.fit = original_fit
  return results, recorded, finals


def _saved_ensemble(workdir):
  """The arrays a finished run saved in WORKDIR/ensemble, read back without the library's loader."""
  directory = os.path.join(workdir, "ensemble")
  if not os.path.isdir(directory):  # the subnetwork ensemble: its children's run
    directory = os.path.join(workdir, "children", "ensemble")
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  tree = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  manager.close()
  return jax.tree.map(np.asarray, tree)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)


def _kernels(params):
  """The MLP's kernels [M, in, out] in layer order."""
  return [params[f"Dense_{i}"]["kernel"] for i in range(len(params))]


def _forward_flops(kernels, member):
  """Forward FLOPs of one example through one member: 2 x its nonzero kernel entries."""
  return 2.0 * sum(float(np.count_nonzero(k[member])) for k in kernels)


DENSE = 2.0 * (64 * 16 + 16 * 4)  # forward FLOPs of the dense 64 -> 16 -> 4 MLP

# method: (config overrides, interrupt after n steps, the checkpoint it resumes from)
RESUME_CASES = {
    # 3 cycles of 4 steps; checkpoints every 3 steps: resumes at 6, in the middle of cycle 2 (4-8)
    "snapshot_ensemble": ({"training.epochs": 3}, 7, 6),
    # 3 segments ending at 4, 8, 12: resumes at 6, mid-segment, with the weights of the reweighting at 4
    "cbnn": ({"training.epochs": 3}, 7, 6),
    # parent 4 steps, then children 4 steps: stopped after child step 3, resumes there
    "subnetwork_ensemble": ({"training.epochs": 2, "num_members": 2}, 7, 3),
    # exploration 4 steps, 3 refinement phases of 4: the ticket at step 8 and the global exploration
    # after it happened before the stop; resumed from 6, the run replays both
    "edst_ensemble": ({"training.epochs": 4, "edst.exploration_epochs": 1, "edst.refinement_epochs": 1,
                       "sparse.update_every": 2}, 8, 6),
    # EDST's case with each ticket reweighting the samples: resumed from 6, it replays ticket 0's
    # reweighting at step 8 from the weights of the checkpoint
    "boosted_edst": ({"training.epochs": 4, "edst.exploration_epochs": 1, "edst.refinement_epochs": 1,
                      "sparse.update_every": 2}, 8, 6),
    "dst_ensemble": ({"training.epochs": 3, "sparse.update_every": 2}, 7, 6),
    "static_sparse_ensemble": ({"training.epochs": 2}, 5, 3),
    "mc_dropout": ({"training.epochs": 2}, 5, 3),
    # pre-training 6 steps, snapshots at 7, 10, 12: stopped after 8, resumes at 6 and replays snapshot 7
    "fge": ({"training.epochs": 3, "fge.pretrain_fraction": 0.5}, 8, 6),
    # weights averaged at 8 and 12: stopped after 10, resumes at 9 with the average of step 8 restored
    "swa": ({"training.epochs": 3, "swa.start_fraction": 0.5}, 10, 9),
    # 3 cycles of 4 steps with reweighting at 4 and 8: resumes at 6, mid-cycle, with step 4's weights
    "snapshot_boosting": ({"training.epochs": 3}, 7, 6),
    "batch_ensemble": ({"training.epochs": 2}, 5, 3),
    "treenet": ({"training.epochs": 2}, 5, 3),
    # the members' rows are drawn from fold_in(rng, step): a resumed run draws the same ones
    "mimo": ({"training.epochs": 2, "mimo.input_repetition": 0.5, "mimo.batch_repetitions": 2}, 5, 3),
}


@pytest.mark.parametrize("module", sorted(RESUME_CASES))
def test_resume_mid_run_equals_the_uninterrupted_run(tmp_path, fake_data, module):
  overrides, stop_after, resumes_from = RESUME_CASES[module]
  cfg = _config(module, **overrides)
  full, _, _ = _train(cfg, tmp_path / "full")
  with pytest.raises(Stop):
    _train(cfg, tmp_path / "cut", stop_after=stop_after)
  ckpt_dir = tmp_path / "cut" / ("children/checkpoints" if module == "subnetwork_ensemble" else "checkpoints")
  assert checkpoints.make_manager(str(ckpt_dir)).latest_step() == resumes_from
  resumed, _, _ = _train(cfg, tmp_path / "cut")
  _assert_trees_equal(_saved_ensemble(tmp_path / "cut"), _saved_ensemble(tmp_path / "full"))
  for split in ("test", "val"):
    assert resumed[split]["ensemble"]["nll"] == pytest.approx(full[split]["ensemble"]["nll"], rel=1e-6)
  if module in ("cbnn", "snapshot_boosting"):
    assert resumed[module]["alphas"] == pytest.approx(full[module]["alphas"], rel=1e-6)


# Recipes with per-seed work between steps by default (boosting, tickets and global explorations, the
# parent's partition); the others (snapshots, averaging, plain fits of S·M members; each also checked
# in memory by test_seeds_as_members.py) with `make test-slow`.
PER_SEED_WORK = ("cbnn", "edst_ensemble", "subnetwork_ensemble")


@pytest.mark.parametrize("module", [m if m in PER_SEED_WORK else pytest.param(m, marks=pytest.mark.slow)
                                    for m in sorted(RESUME_CASES)])
def test_seeds_as_members_resume_mid_run_to_each_seeds_own_run(tmp_path, fake_data, module):
  """Two seeds trained as members, interrupted and resumed (the same cases), end with each seed's
  ensemble of its run alone; the seed's folder reloads and re-evaluates as a run of its own."""
  overrides, stop_after, resumes_from = RESUME_CASES[module]
  cfg = _config(module, **overrides)
  with pytest.raises(Stop):
    _train(cfg, tmp_path / "cut", stop_after=stop_after, seeds=(0, 1))
  ckpt_dir = tmp_path / "cut" / "seeds" / ("children/checkpoints" if module == "subnetwork_ensemble" else "checkpoints")
  assert checkpoints.make_manager(str(ckpt_dir)).latest_step() == resumes_from
  resumed, _, _ = _train(cfg, tmp_path / "cut", seeds=(0, 1))
  _assert_each_seed_equals_its_own_run(cfg, (0, 1), resumed, tmp_path / "cut", tmp_path)
  for seed, results in zip((0, 1), resumed):
    again = runner.evaluate_workdir(str(tmp_path / "cut" / f"seed_{seed}"))
    assert again["test"]["ensemble"]["nll"] == pytest.approx(results["test"]["ensemble"]["nll"], rel=1e-6)


def _assert_each_seed_equals_its_own_run(cfg, seeds, together, folder, tmp_path):
  """Each seed's saved ensemble in FOLDER/seed_s (trained with the others) and its test NLL equal
  those of the config trained for that seed alone."""
  for seed, results in zip(seeds, together):
    cfg.seed = seed
    alone, _, _ = _train(cfg, tmp_path / f"alone_{seed}")
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
                 _saved_ensemble(folder / f"seed_{seed}"), _saved_ensemble(tmp_path / f"alone_{seed}"))
    assert results["seed"] == seed
    assert results["test"]["ensemble"]["nll"] == pytest.approx(alone["test"]["ensemble"]["nll"], rel=1e-4)


@pytest.mark.parametrize("module", ["deep_ensemble", pytest.param("cbnn", marks=pytest.mark.slow)])
def test_seeds_as_members_keep_each_seeds_augmentation_and_dropout(tmp_path, fake_data, module):
  """Images with random crops, flips and dropout: each seed's members draw what its run alone draws."""
  cfg = _config(module, **{"training.epochs": 3, "augment.crop_padding": 2, "augment.flip": True,
                           "model.dropout_rate": 0.3, "num_members": 2})
  together, _, _ = _train(cfg, tmp_path / "together", seeds=(3, 4))
  _assert_each_seed_equals_its_own_run(cfg, (3, 4), together, tmp_path / "together", tmp_path)


@pytest.mark.parametrize("module,members,passes", [("single", 1, 1), ("deep_ensemble", 3, 1),
                                                   ("mc_dropout", 1, "num_passes")])
def test_dense_methods_flops_by_hand(tmp_path, fake_data, module, members, passes):
  cfg = _config(module, num_members=members, **{"training.epochs": 2})
  passes = cfg.mc_dropout.num_passes if passes == "num_passes" else passes
  f = _train(cfg, tmp_path)[0]["flops"]
  steps = 2 * STEPS_PER_EPOCH
  assert f["forward_flops_dense"] == DENSE
  assert f["inference_flops"] == members * passes * DENSE
  assert f["train_flops"] == members * steps * BATCH * 3 * DENSE
  assert f["train_x_dense"] == pytest.approx(members)


# module: (overrides, the steps of its members): snapshots and CBNN checkpoints at the ends of 3
# segments of 4 steps; FGE's 6 pre-training steps, then cycles of 2.4 steps, snapshots mid-cycle
COLLECTED_AT = {"snapshot_ensemble": ({}, (4, 8, 12)), "cbnn": ({}, (4, 8, 12)), "snapshot_boosting": ({}, (4, 8, 12)),
                "fge": ({"fge.pretrain_fraction": 0.5}, (7, 10, 12))}


@pytest.mark.parametrize("module", sorted(COLLECTED_AT))
def test_checkpoints_are_taken_exactly_at_segment_ends(tmp_path, fake_data, module):
  overrides, ends = COLLECTED_AT[module]
  cfg = _config(module, steps_per_dispatch=1, **{"training.epochs": 3, **overrides})  # every step's state recorded
  results, recorded, _ = _train(cfg, tmp_path, record=set(ends) | {e - 1 for e in ends})
  like = {"params": recorded[ends[0]].params, "model_state": recorded[ends[0]].model_state}
  like = jax.tree.map(lambda x: x[0], like)
  if module in ("cbnn", "snapshot_boosting"):
    like["sample_weights"] = np.zeros(N_TRAIN, np.float32)
  saved, metas = checkpoints.load_members(str(tmp_path / "members"), like)
  assert [meta["step"] for meta in metas] == list(ends)
  for k, end in enumerate(ends):
    member = jax.tree.map(lambda x: np.asarray(x)[k], saved["params"])
    _assert_trees_equal(member, jax.tree.map(lambda x: x[0], recorded[end].params))
    before = jax.tree.map(lambda x: x[0], recorded[end - 1].params)  # one step earlier is different
    assert not np.allclose(member["Dense_0"]["kernel"], before["Dense_0"]["kernel"])
  # FLOPs by hand: ONE model trained 12 steps; M = 3 members at inference; CBNN adds a forward
  # pass over the 128 training images at each of its 3 checkpoints
  f = results["flops"]
  extra = 3 * N_TRAIN * DENSE if module in ("cbnn", "snapshot_boosting") else 0.0
  assert f["train_flops"] == pytest.approx(12 * BATCH * 3 * DENSE + extra, rel=1e-12)
  assert f["inference_flops"] == 3 * DENSE
  assert f["train_x_dense"] == pytest.approx((12 * BATCH * 3 * DENSE + extra) / (12 * BATCH * 3 * DENSE))


def _moments_outside_masks(opt_state):
  """The inner optimizer's momentum entries at positions whose mask is False, per member."""
  inner = opt_state.inner_state
  trace = next(s.trace for s in jax.tree.leaves(inner, is_leaf=lambda s: hasattr(s, "trace")) if hasattr(s, "trace"))
  return [np.asarray(t)[~np.asarray(m)] for t, m in zip(jax.tree.leaves(trace), jax.tree.leaves(opt_state.masks))]


@pytest.mark.parametrize("module", ["static_sparse_ensemble", "dst_ensemble", "subnetwork_ensemble"])
def test_sparse_methods_flops_by_hand_and_moments_reset(tmp_path, fake_data, module):
  overrides = {"training.epochs": 2, "sparse.update_every": 2, "sparse.stop_fraction": 1.0} if module == "dst_ensemble" else \
      {"training.epochs": 2}
  cfg = _config(module, num_members=2, **{k: v for k, v in overrides.items()
                                         if module != "subnetwork_ensemble" or not k.startswith("sparse")})
  results, _, finals = _train(cfg, tmp_path)
  final = finals[-1]
  # pruned weights are exactly zero and their momentum too (no stale velocity for a regrown weight)
  for params, masks in zip(jax.tree.leaves(final.params), jax.tree.leaves(final.opt_state.masks)):
    assert not np.any(np.asarray(params)[~np.asarray(masks)])
  outside = _moments_outside_masks(final.opt_state)
  assert sum(o.size for o in outside) > 0 and not any(np.any(o) for o in outside)
  kernels = _kernels(_saved_ensemble(tmp_path)["params"])
  f_members = [_forward_flops(kernels, m) for m in range(2)]
  f = results["flops"]
  assert f["inference_flops"] == pytest.approx(sum(f_members), rel=1e-12)
  steps = 2 * STEPS_PER_EPOCH
  if module == "static_sparse_ensemble":
    hand = steps * BATCH * 3 * sum(f_members)
  elif module == "dst_ensemble":
    # 8 steps, ΔT = 2, updates until the end (stop_fraction 1.0): after steps 2, 4 and 6 (not after
    # the last step); an update step takes one dense gradient: 2·f_S + f_D instead of 3·f_S per example
    hand = steps * BATCH * 3 * sum(f_members) + 3 * BATCH * sum(DENSE - fm for fm in f_members)
  else:
    # parent: 1 dense epoch; children: 1 epoch each at their own nonzero weights
    hand = STEPS_PER_EPOCH * BATCH * 3 * DENSE + STEPS_PER_EPOCH * BATCH * 3 * sum(f_members)
  assert f["train_flops"] == pytest.approx(hand, rel=1e-9)


def test_edst_tickets_are_the_states_at_phase_ends_before_exploring(tmp_path, fake_data):
  # exploration [0, 4), refinement phases [4, 8), [8, 12), [12, 16): tickets after steps 8, 12, 16;
  # the global explorations after steps 8 and 12 change the masks of the states that follow
  cfg = _config("edst_ensemble", **{"training.epochs": 4, "edst.exploration_epochs": 1,
                                    "edst.refinement_epochs": 1, "sparse.update_every": 2, "edst.ticket": "final"},
                steps_per_dispatch=1)  # the state after step 9 is recorded
  _, recorded, finals = _train(cfg, tmp_path, record={8, 9, 12, 16})
  one = lambda tree: jax.tree.map(lambda x: np.asarray(x)[0], tree)
  like = {"params": one(recorded[8].params), "model_state": one(recorded[8].model_state),
          "masks": one(recorded[8].opt_state.masks)}
  tickets, metas = checkpoints.load_members(str(tmp_path / "tickets"), like)
  assert [meta["step"] for meta in metas] == [8, 12, 16]
  for k, end in enumerate((8, 12, 16)):
    ticket = jax.tree.map(lambda x: np.asarray(x)[k], tickets)
    _assert_trees_equal(ticket["params"], one(recorded[end].params))
    _assert_trees_equal(ticket["masks"], one(recorded[end].opt_state.masks))
  # the step after a ticket trains the explored topology: another mask than the ticket's
  kernel_mask = lambda tree: np.asarray(tree["Dense_0"]["kernel"])
  assert not np.array_equal(kernel_mask(one(recorded[9].opt_state.masks)),
                            kernel_mask(jax.tree.map(lambda x: np.asarray(x)[0], tickets["masks"])))
