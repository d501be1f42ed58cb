"""One live run per workdir (`ensembles.workdir_lock`) on local folders: a second run is refused at
once naming the folder and the holder, a lock left by a killed run never blocks, the lock is
released when the run ends (by an error too) and re-entrant within a process. Object-store locks:
tests/test_remote_workdir.py; multi-host (one lock per run): tests/test_multihost.py."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import ensembles
from ensembles import workdir_lock
from ensembles.errors import WorkdirInUseError
from conftest import requires_fashion_mnist
from test_api import FeatureNet, feature_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = ("import sys; from ensembles import workdir_lock; lock = workdir_lock.acquire(sys.argv[1]); "
        "print('held', flush=True); sys.stdin.read(); lock.release()")


def hold(workdir) -> subprocess.Popen:
  """Another process that takes the lock of ``workdir`` and keeps it until its stdin closes."""
  proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], cwd=ROOT, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.stdout.readline().strip() == "held"
  return proc


def in_use_line(workdir, proc) -> str:
  return f"{workdir} is in use by another run (host {socket.gethostname()}, process {proc.pid}, since "


@requires_fashion_mnist  # the CLI checks the config and its data first (a mistake writes nothing)
def test_the_cli_on_a_held_folder_is_refused_at_once_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  holder = hold(workdir)
  try:
    out = subprocess.run([
        sys.executable, "-m", "experiments.train", "--config", "experiments/configs/default.py", f"--workdir={workdir}"
    ], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu", "ENSEMBLES_COMPILATION_CACHE": "off"})
  finally:
    holder.communicate("")
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {in_use_line(workdir, holder)}"), out.stderr[-2000:]
  assert sorted(os.listdir(workdir)) == []  # nothing written: no config.json, log or checkpoint; the lock released


def test_fit_and_fit_seeds_on_a_held_folder_are_refused_before_training(tmp_path):
  workdir = tmp_path / "run"
  holder = hold(workdir)
  try:
    with pytest.raises(WorkdirInUseError, match=re.escape(in_use_line(workdir, holder))):
      ensembles.fit("single", FeatureNet(), feature_data(), str(workdir), epochs=1)
  finally:
    holder.communicate("")
  group = hold(workdir / "seeds")  # the seeds' group folder held by another run
  try:
    with pytest.raises(WorkdirInUseError, match=re.escape(in_use_line(workdir / "seeds", group))):
      ensembles.fit_seeds("single", FeatureNet(), feature_data(), (0, 1), str(workdir), epochs=1)
  finally:
    group.communicate("")
  assert not (workdir / "config.json").exists() and not (workdir / "metrics.jsonl").exists()


def test_a_lock_left_by_a_killed_run_does_not_block_and_is_named(tmp_path, capsys):
  workdir = tmp_path / "run"
  holder = hold(workdir)
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  assert json.loads((workdir / "run.lock").read_text())["pid"] == holder.pid  # left behind
  lock = workdir_lock.acquire(str(workdir))
  err = capsys.readouterr().err
  assert (f"the previous run (host {socket.gethostname()}, process {holder.pid}, since" in err and
          "ended without releasing its lock (killed?); this run takes it over." in err)
  assert json.loads((workdir / "run.lock").read_text())["pid"] == os.getpid()
  lock.release()
  assert not (workdir / "run.lock").exists()


def test_a_finished_or_failed_run_releases_the_folder(tmp_path):
  workdir = str(tmp_path / "run")
  ensembles.fit("single", FeatureNet(), feature_data(), workdir, epochs=1, batch_size=96)
  assert not os.path.exists(os.path.join(workdir, "run.lock"))
  with pytest.raises(
      ValueError, match="holds a run with a different config"):  # another config in the folder: refused inside the lock
    ensembles.fit("single", FeatureNet(), feature_data(), workdir, epochs=2, batch_size=96)
  holder = hold(workdir)  # free for another process
  holder.communicate("")


def test_the_lock_is_reentrant_within_a_process(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lock.held(workdir, None):
    with workdir_lock.held(workdir):  # the CLI's block around fit's
      assert os.path.exists(os.path.join(workdir, "run.lock"))
    assert os.path.exists(os.path.join(workdir, "run.lock"))  # still the outer block's
    proc = subprocess.run([sys.executable, "-c", HOLD, workdir], cwd=ROOT, input="", capture_output=True, text=True)
    assert proc.returncode == 1 and "WorkdirInUseError" in proc.stderr
  assert not os.path.exists(os.path.join(workdir, "run.lock"))


def test_holder_is_gone_checks_the_process_and_its_start_time():
  me = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": workdir_lock._process_start(os.getpid())}  # pylint: disable=protected-access
  assert workdir_lock.holder_is_gone(me) is None
  assert workdir_lock.holder_is_gone({**me, "process_start": "0"}) == f"process {os.getpid()} on this host has ended"
  now = time.time()
  other = {"host": "elsewhere", "pid": os.getpid(), "heartbeat": now - 10}
  assert workdir_lock.holder_is_gone(other, now, stale_seconds=60) is None
  assert workdir_lock.holder_is_gone(other, now, stale_seconds=5) == "its last heartbeat was 10 s ago (stale after 5 s)"
