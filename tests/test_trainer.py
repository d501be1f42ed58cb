"""Driver loop: resume after an interruption equals an uninterrupted run; NaN keeps the last checkpoint."""
import dataclasses
import glob
import json

import jax
import numpy as np
import pytest

from ensembles import api, context

from ensembles import checkpoints, train, trainer
from conftest import make_dataset, tiny_config


class Interrupted(Exception):
  pass


def _run(workdir, monkeypatch, wrap=None, hooks=(), dataset=None, **overrides):
  """trainer.fit on a tiny config; ``wrap(fn, steps_of_call)`` wraps the run's train step and its
  chunked step (``steps_of_call(args)``: how many steps a call makes)."""
  cfg = tiny_config(**overrides)
  dataset = dataset or make_dataset(n_train=128, n_val=16, n_test=16)
  run = context.build(cfg, api.build_model(cfg, dataset), dataset, None if workdir is None else str(workdir))
  state = train.init_state(run.model, run.tx, run.init_key, cfg.num_members, dataset.image_shape)
  if wrap:
    run = dataclasses.replace(run, train_step=wrap(run.train_step, lambda args: 1),
                              train_chunk=wrap(run.train_chunk, lambda args: int(args[5])))
  return trainer.fit(run, state, hooks)


def _interrupt_after(n):
  """Raises Interrupted in place of the call that would take the run past ``n`` steps."""
  def wrap(step, steps_of_call):
    done = {"n": 0}

    def wrapped(*args):
      if done["n"] + steps_of_call(args) > n:
        raise Interrupted()
      done["n"] += steps_of_call(args)
      return step(*args)

    return wrapped

  return wrap


@pytest.mark.parametrize("model,dispatch", [("mlp", 0), ("mlp", 1), ("lenet", 0)])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, model, dispatch):
  overrides = {"model.name": model, "model.hidden": (8,), "augment.crop_padding": 1, "augment.flip": True,
               "model.dropout_rate": 0.2, "training.epochs": 3, "steps_per_dispatch": dispatch}
  if model == "lenet":
    overrides["model.features"] = (4,)
    overrides.pop("model.dropout_rate")
  # 128 examples / batch 32 = 4 steps per epoch, 12 steps; checkpoints every 4 steps
  full, info = _run(tmp_path / "full", monkeypatch, **overrides)
  with pytest.raises(Interrupted):
    _run(tmp_path / "cut", monkeypatch, wrap=_interrupt_after(6), **overrides)
  manager = checkpoints.make_manager(str(tmp_path / "cut" / "checkpoints"))
  assert manager.latest_step() == 4
  resumed, resumed_info = _run(tmp_path / "cut", monkeypatch, **overrides)
  assert resumed_info["resumed_from"] == 4 and info["steps"] == resumed_info["steps"] == 12
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), resumed, full)
  np.testing.assert_array_equal(resumed.step, [12, 12])


def _without_timing(records):
  """Log records without their wall-time fields (throughput), which differ between any two runs."""
  return [{k: v for k, v in r.items() if k not in trainer.THROUGHPUT_FIELDS} for r in records]


def _count_calls(calls):
  def wrap(step, steps_of_call):
    def wrapped(*args):
      calls.append(steps_of_call(args))
      return step(*args)
    return wrapped
  return wrap


def test_chunked_steps_equal_one_step_per_call(monkeypatch):
  """Several steps per dispatch (the default for an MLP) give the parameters, the logged metrics
  and the hook calls of one step per call, bit for bit; chunks end at log, checkpoint, hook and
  epoch boundaries and at steps_per_dispatch."""
  dataset = make_dataset(n_train=320, n_val=16, n_test=16)  # 10 steps per epoch of 32

  def scale(state, done, batch):  # a hook that changes the state between steps
    seen.append((done, np.asarray(batch.ids)))
    return state.replace(params=jax.tree.map(lambda p: p * 0.9, state.params))

  results = {}
  for dispatch in (1, 0, 4):
    seen, calls = [], []
    overrides = {"steps_per_dispatch": dispatch, "training.epochs": 3, "log_every_steps": 7,
                 "checkpoint_every_steps": 100, "model.dropout_rate": 0.2, "augment.flip": True}
    cfg = tiny_config(**overrides)
    run = context.build(cfg, api.build_model(cfg, dataset), dataset, None)
    run = dataclasses.replace(run, train_step=_count_calls(calls)(run.train_step, lambda a: 1),
                              train_chunk=_count_calls(calls)(run.train_chunk, lambda a: int(a[5])))
    state = train.init_state(run.model, run.tx, run.init_key, cfg.num_members, dataset.image_shape)
    state, _ = trainer.fit(run, state, [trainer.Hook(frozenset({5, 13}), scale)])
    results[dispatch] = (jax.device_get(state), run.log.records, list(seen), calls)
  per_step = results[1]
  assert per_step[3] == [1] * 30
  # ends: hooks 5, 13; logs 7, 14, 21, 28; epochs 10, 20, 30
  assert results[0][3] == [5, 2, 3, 3, 1, 6, 1, 7, 2]
  assert results[4][3] == [4, 1, 2, 3, 3, 1, 4, 2, 1, 4, 3, 2]
  for dispatch in (0, 4):
    state, records, seen, _ = results[dispatch]
    jax.tree.map(np.testing.assert_array_equal, state, per_step[0])
    assert _without_timing(records) == _without_timing(per_step[1])
    assert [d for d, _ in seen] == [5, 13] and all(np.array_equal(a[1], b[1]) for a, b in zip(seen, per_step[2]))


def test_steps_per_dispatch_auto_is_one_for_convolutions_on_cpu(tmp_path):
  dataset = make_dataset()
  for name, expected in (("mlp", 0), ("lenet", 1)):
    cfg = tiny_config(**{"model.name": name})
    run = context.build(cfg, api.build_model(cfg, dataset), dataset, None)
    assert trainer.steps_per_dispatch(run) == expected
  cfg = tiny_config(**{"model.name": "lenet", "steps_per_dispatch": 8})  # a user's choice is kept
  assert trainer.steps_per_dispatch(context.build(cfg, api.build_model(cfg, dataset), dataset, None)) == 8


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  def poison_after(n):
    def wrap(step, steps_of_call):
      done = {"n": 0}

      def wrapped(state, *args):
        done["n"] += steps_of_call((state, *args))
        if done["n"] > n:
          state = state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params))
        return step(state, *args)

      return wrapped

    return wrap

  with pytest.raises(trainer.NonFiniteLossError, match=r"last good checkpoint \(step 4\)"):
    _run(tmp_path, monkeypatch, wrap=poison_after(5), **{"training.epochs": 3})
  manager = checkpoints.make_manager(str(tmp_path / "checkpoints"))
  assert manager.all_steps() == [4]
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert all(np.isfinite(l["train_loss"]) for l in lines if "train_loss" in l)
  # the kept checkpoint is good: a rerun without the fault resumes from it and finishes
  state, info = _run(tmp_path, monkeypatch, **{"training.epochs": 3})
  assert info["resumed_from"] == 4 and bool(train.all_finite(state.params))


def test_checkpoint_roundtrip_is_exact(tmp_path):
  state = {"w": jax.random.normal(jax.random.PRNGKey(0), (3, 4)), "rng": jax.random.split(jax.random.PRNGKey(1), 3)}
  manager = checkpoints.make_manager(str(tmp_path), max_to_keep=2)
  for step in (1, 2, 3):
    checkpoints.save(manager, step, jax.tree.map(lambda x: x + step if x.dtype == np.float32 else x, state),
                     {"step": step})
  manager.wait_until_finished()
  assert manager.all_steps() == [2, 3]
  restored, meta = checkpoints.restore_latest(manager, state)
  assert meta["step"] == 3 and meta["fingerprint"] == checkpoints.fingerprint(restored)
  np.testing.assert_array_equal(restored["w"], state["w"] + 3)
  np.testing.assert_array_equal(restored["rng"], state["rng"])
  assert checkpoints.restore_latest(checkpoints.make_manager(str(tmp_path / "empty")), state) is None


def test_saved_members_are_checked_against_their_fingerprints(tmp_path):
  trees = [{"w": np.full((2, 3), float(k), np.float32)} for k in range(3)]
  for k, tree in enumerate(trees):
    checkpoints.save_member(str(tmp_path), k, tree, {"step": 4 * (k + 1)})
  stacked, metas = checkpoints.load_members(str(tmp_path), trees[0])
  np.testing.assert_array_equal(stacked["w"][:, 0, 0], [0.0, 1.0, 2.0])
  assert [m["step"] for m in metas] == [4, 8, 12]
  meta_path = next(p for p in glob.glob(str(tmp_path / "1" / "meta" / "*")) if open(p).read().lstrip().startswith("{"))
  meta = json.load(open(meta_path))
  meta["fingerprint"] = "00000000"  # what a silently altered member would look like
  json.dump(meta, open(meta_path, "w"))
  with pytest.raises(checkpoints.CorruptCheckpointError, match=r"Saved member 1 in .* does not match"):
    checkpoints.load_members(str(tmp_path), trees[0])
