"""Preemption and corruption: a run killed at any point (SIGKILL, also in the middle of a checkpoint
write) or stopped by SIGTERM resumes to the same result as an uninterrupted run; corrupted or partial
checkpoints are detected, set aside with a message and never loaded."""
import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ensembles import checkpoints
from experiments import runner
from conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Trains a small deep ensemble (dropout: random streams matter) on synthetic data; with a mode, it
# interrupts itself at step AT: SIGKILL right after a checkpoint save was started (Orbax is still
# writing it), SIGKILL between checkpoints, or a real SIGTERM (a preemption notice).
SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, "tests")
    from conftest import make_dataset, tiny_config
    from ensembles import checkpoints, trainer
    from ensembles import data as data_lib
    from experiments import runner
    dataset = make_dataset(n_train=128, n_val=16, n_test=32)
    data_lib.load_dataset = lambda _: dataset
    workdir, mode, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "kill_in_save":
      original_save = checkpoints.save
      def save(manager, step, state, meta):
        original_save(manager, step, state, meta)
        if step == at:  # wait (up to 30 s) until the write is visible on disk, then kill
          folder = os.path.join(workdir, "checkpoints")
          for _ in range(3000):
            if any(name.split(".")[0] == str(at) for name in os.listdir(folder)):
              break
            time.sleep(0.01)
          os.kill(os.getpid(), signal.SIGKILL)
      checkpoints.save = save
    elif mode in ("kill_at_step", "sigterm"):
      original_stop = trainer._should_stop
      def should_stop(flag, step):
        if step == at:
          if mode == "kill_at_step":  # between checkpoints: once step 3's (asynchronous) write is complete
            for _ in range(3000):  # (with warm compilation caches, steps 4 and 5 can take milliseconds)
              if os.path.isdir(os.path.join(workdir, "checkpoints", "3")):
                break
              time.sleep(0.01)
          os.kill(os.getpid(), signal.SIGKILL if mode == "kill_at_step" else signal.SIGTERM)
        return original_stop(flag, step)
      trainer._should_stop = should_stop
    # steps run in chunks ending at logs (5, 10, 15), checkpoints (3, 6, ...) and epoch ends (4, 8, ...):
    # step 5, where the interruptions happen, ends a chunk
    cfg = tiny_config(**{"model.dropout_rate": 0.2, "training.epochs": 4, "checkpoint_every_steps": 3,
                         "keep_checkpoints": 2, "log_every_steps": 5})
    try:
      runner.run(cfg, workdir)
    except trainer.Preempted as err:
      print(f"PREEMPTED {err}")
      sys.exit(143)
    print("FINISHED")
""")


def _train(workdir, mode="none", at=0):
  return subprocess.run([sys.executable, "-c", SCRIPT, str(workdir), mode, str(at)], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _member_nll(workdir):
  return [m["nll"] for m in json.load(open(os.path.join(workdir, "results.json")))["test"]["members"]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  out = _train(workdir)
  assert out.returncode == 0 and "FINISHED" in out.stdout, out.stderr[-3000:]
  return _member_nll(workdir)


@pytest.mark.parametrize("mode,at,returncode", [
    ("kill_in_save", 6, -9),   # SIGKILL while step 6's checkpoint is being written
    ("kill_at_step", 5, -9),   # SIGKILL between checkpoints (3 and 6)
    ("sigterm", 5, 143),       # preemption notice: step 5 is saved, then the run stops
])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, uninterrupted, mode, at, returncode):
  first = _train(tmp_path, mode, at)
  assert first.returncode == returncode, first.stderr[-3000:]
  if mode == "sigterm":
    assert "SIGTERM received at step 5/16: saved its checkpoint in" in first.stdout
  assert not os.path.exists(tmp_path / "results.json")
  # killed mid-write, step 6 is at most a temporary folder that is never listed, and the run resumes
  # from step 3; if Orbax finished the write first, step 6 is complete and used. Which one happened
  # is read from the finished steps Orbax lists, not from when it creates its temporary folder.
  complete = checkpoints.make_manager(str(tmp_path / "checkpoints")).all_steps()
  assert max(complete) in ((3, 6) if mode == "kill_in_save" else (3, 5)), complete
  resumed_from = {"kill_in_save": max(complete), "kill_at_step": 3, "sigterm": 5}[mode]
  second = _train(tmp_path)
  assert second.returncode == 0 and "FINISHED" in second.stdout, second.stderr[-3000:]
  assert f"Resuming from step {resumed_from}/16" in second.stderr
  np.testing.assert_allclose(_member_nll(tmp_path), uninterrupted, rtol=1e-6)


def _finished_run(workdir, fake_data):
  cfg = tiny_config(**{"training.epochs": 2, "checkpoint_every_steps": 2, "keep_checkpoints": 3})
  return cfg, runner.run(cfg, str(workdir))


def test_checkpoint_not_matching_its_fingerprint_is_set_aside(tmp_path, fake_data, capsys):
  cfg, results = _finished_run(tmp_path, fake_data)
  meta_files = glob.glob(str(tmp_path / "checkpoints" / "8" / "meta" / "*"))
  meta_path = next(p for p in meta_files if open(p).read().lstrip().startswith("{"))
  meta = json.load(open(meta_path))
  meta["fingerprint"] = "00000000"  # what a silently altered state would look like
  json.dump(meta, open(meta_path, "w"))
  again = runner.run(cfg, str(tmp_path))  # restores step 6, trains steps 7-8 again
  err = capsys.readouterr().err
  assert "Checkpoint step 8 in" in err and "fingerprint" in err and "Resuming from step 6/8" in err
  assert os.listdir(tmp_path / "checkpoints_corrupt")
  assert again["test"]["ensemble"]["nll"] == pytest.approx(results["test"]["ensemble"]["nll"], rel=1e-6)


def test_unreadable_checkpoint_is_set_aside(tmp_path, fake_data, capsys):
  cfg, results = _finished_run(tmp_path, fake_data)
  state_dir = tmp_path / "checkpoints" / "8" / "state"
  for path in glob.glob(str(state_dir / "**" / "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "r+b") as f:  # garble every file of the newest checkpoint's state
        f.write(b"\x00garbage\xff" * 4)
  again = runner.run(cfg, str(tmp_path))
  err = capsys.readouterr().err
  assert "Checkpoint step 8 in" in err and "unreadable or corrupted" in err and "Resuming from step 6/8" in err
  assert again["test"]["ensemble"]["nll"] == pytest.approx(results["test"]["ensemble"]["nll"], rel=1e-6)


def test_fingerprint_changes_with_any_value():
  state = {"a": np.arange(6, dtype=np.float32), "b": np.zeros((2, 2), np.int32)}
  base = checkpoints.fingerprint(state)
  nudged = state["a"].copy()
  nudged[3] = np.nextafter(nudged[3], np.float32(10))  # one ulp
  assert checkpoints.fingerprint({**state, "a": nudged}) != base
  assert checkpoints.fingerprint({**state, "b": state["b"].reshape(4)}) != base  # shape counts too
  assert checkpoints.fingerprint(state) == base
