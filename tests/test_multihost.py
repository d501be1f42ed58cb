"""Multi-host for real: the CLI in 2 JAX processes x 2 forced host devices on 127.0.0.1 (gloo
collectives, `ensembles.distributed`) equals the same command in one process with 4 devices, for
every method family and the streamed input; a process killed with SIGKILL mid-run, then both
restarted, resumes to the uninterrupted result; only process 0 writes the log and results.

Each run is a subprocess (XLA_FLAGS must be set before jax starts). The default suite runs the
deep ensemble (with the kill and restart) and the bad-flag checks; the other families are `slow`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import requires_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Fashion-MNIST subset, 1 epoch of a small MLP (+ the method's own fields), no OoD or corruption sets
COMMON = ["--config.dataset.train_subset=1024", "--config.dataset.val_size=512", "--config.dataset.test_subset=512",
          "--config.model.hidden=(64,)", "--config.training.epochs=2", "--config.eval_batch_size=256",
          "--config.evaluation.ood_datasets=()", "--config.evaluation.corruptions=()",
          "--config.evaluation.plots=False", "--config.log_every_steps=4"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(devices: int) -> dict:
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
          "ENSEMBLES_COMPILATION_CACHE": "off"}


def command(config: str, workdir, extra, probe: bool = False) -> list[str]:
  """The CLI's command; with ``probe`` through tests/reads_probe.py (counts the rows read from disk)."""
  entry = ["tests/reads_probe.py"] if probe else ["-m", "experiments.train"]
  return [sys.executable, *entry, "--config", f"experiments/configs/{config}.py", f"--workdir={workdir}", *COMMON,
          *extra]


def start_processes(config: str, workdir, extra, port: int, processes: int = 2, probe: bool = False,
                    environ: dict | None = None) -> list[subprocess.Popen]:
  return [subprocess.Popen(command(config, workdir, extra, probe) + [
      "--distributed", "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", str(processes),
      "--process_id", str(i)], cwd=ROOT, env={**env(4 // processes), **(environ or {})}, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(processes)]


def finish(procs, timeout=600) -> list[tuple[int, str, str]]:
  out = []
  for p in procs:
    try:
      stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    out.append((p.returncode, stdout, stderr))
  return out


def run_two_processes(config: str, workdir, extra=(), stderr: list | None = None, **options) -> dict:
  outs = finish(start_processes(config, workdir, list(extra), free_port(), **options))
  for i, (code, _, err) in enumerate(outs):
    assert code == 0, (f"process {i}", err[-3000:])
  assert "results.json" in outs[0][1] and "results.json" not in outs[1][1]  # process 0 reports
  if stderr is not None:
    stderr.extend(err for _, _, err in outs)
  return json.loads((workdir / "results.json").read_text())


def run_one_process(config: str, workdir, extra=(), probe: bool = False, environ: dict | None = None) -> dict:
  out = subprocess.run(command(config, workdir, list(extra), probe), cwd=ROOT, env={**env(4), **(environ or {})},
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads((workdir / "results.json").read_text())


def assert_same_run(a: dict, b: dict) -> None:
  """Two runs of one config on the same 4 devices: the same mesh, steps and test metrics (float
  reductions may be ordered differently across processes: 1e-5 relative)."""
  assert a["mesh"] == b["mesh"] and a["train_steps"] == b["train_steps"]
  for key in ("accuracy", "nll", "ece"):
    np.testing.assert_allclose(a["test"]["ensemble"][key], b["test"]["ensemble"][key], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose([m["nll"] for m in a["test"]["members"]], [m["nll"] for m in b["test"]["members"]],
                             rtol=1e-5)


# (config, fields): every method family on 4 devices as 2 hosts x 2
CASES = {
    "deep_ensemble": ("deep_ensemble", []),  # M = 4 sharded over the 4 devices
    "dst_ensemble": ("dst_ensemble", ["--config.num_members=2", "--config.mesh.data=2", "--config.sparse.update_every=2"]),
    "edst_ensemble": ("edst_ensemble", ["--config.num_members=2", "--config.mesh.data=4", "--config.edst.exploration_epochs=1",
                                        "--config.edst.refinement_epochs=1", "--config.training.epochs=3",
                                        "--config.sparse.update_every=2"]),
    "cbnn": ("cbnn", ["--config.num_members=2", "--config.mesh.data=4"]),
    # the parent (one network) and the children on all 4 devices: each network's batch over ``data``.
    # A random partition: gloo adds a gradient's parts across processes in another order than XLA:CPU
    # within one (the parents differ by ~1e-8), and a magnitude partition turns that into other
    # owners for a few near-tied weights (measured: children 0.3% apart in test accuracy).
    # Two hidden layers (the later flag wins): the default keeps the input and output layers whole.
    "subnetwork_ensemble": ("subnetwork_ensemble", ["--config.num_members=2", "--config.mesh.data=4",
                                                    "--config.subnetwork.score=random", "--config.model.hidden=(64, 64)"]),
}


def check_case(name: str, tmp_path) -> tuple[dict, dict]:
  config, extra = CASES[name]
  two = run_two_processes(config, tmp_path / "two", extra)
  one = run_one_process(config, tmp_path / "one", extra)
  assert_same_run(two, one)
  assert two["test"]["ensemble"]["accuracy"] > 0.5, two["test"]["ensemble"]  # it learned
  return two, one


@requires_fashion_mnist
def test_deep_ensemble_on_two_hosts_equals_one_host_and_only_process_0_writes(tmp_path):
  two, _ = check_case("deep_ensemble", tmp_path)
  assert two["mesh"] == {"members": 4, "data": 1} and two["member_execution"] == "sharded"
  records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in records if "train_loss" in r]
  assert steps == sorted(set(steps)), "two writers: the log holds some steps twice"


@requires_fashion_mnist
def test_a_held_folder_refuses_every_host_of_a_run(tmp_path):
  """Process 0 takes the folder's lock for the run (the others do not: the test above trains with
  both in one folder); when another run holds it, every host stops with the holder's line."""
  from test_workdir_lock import hold  # pylint: disable=g-import-not-at-top
  holder = hold(tmp_path)
  try:
    outs = finish(start_processes("deep_ensemble", tmp_path, [], free_port()), timeout=300)
  finally:
    holder.communicate("")
  line = f"is in use by another run (host {socket.gethostname()}, process {holder.pid}, since "
  for i, (code, _, err) in enumerate(outs):
    assert code == 2 and line in err, (i, err[-2000:])
    assert len(err.strip().splitlines()) == 1, err
  assert "refused on process 0" in outs[1][2] and "refused on process 0" not in outs[0][2]
  assert sorted(os.listdir(tmp_path)) == []  # nothing written


@requires_fashion_mnist
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CASES if n != "deep_ensemble"])
def test_method_family_on_two_hosts_equals_one_host(name, tmp_path):
  check_case(name, tmp_path)


@requires_fashion_mnist
@pytest.mark.slow
def test_a_host_killed_mid_run_then_both_restarted_resumes_to_the_uninterrupted_result(tmp_path):
  """Process 1 gets SIGKILL after the checkpoint at step 8 (of 16); process 0 then fails (its peer
  is gone) or is stopped; both are started again with the same workdir and finish."""
  extra = ["--config.checkpoint_every_steps=4"]
  reference = run_one_process("deep_ensemble", tmp_path / "reference", extra)
  workdir = tmp_path / "killed"
  procs = start_processes("deep_ensemble", workdir, extra, free_port())
  checkpoints = workdir / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and not (checkpoints.exists() and any(p.name == "8" for p in checkpoints.iterdir())):
    assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGKILL)
  try:  # the peer of a dead host stops on its own (the coordinator's heartbeat), or the launcher stops it
    procs[0].wait(timeout=20)
  except subprocess.TimeoutExpired:
    procs[0].send_signal(signal.SIGKILL)
  finish(procs)
  stderr = []
  results = run_two_processes("deep_ensemble", workdir, extra, stderr)
  assert_same_run(results, reference)
  assert results["train_steps"] == reference["train_steps"] == 16
  resumed = [int(line.split("Resuming from step ")[1].split("/")[0]) for err in stderr for line in err.splitlines()
             if "Resuming from step" in line]
  assert len(resumed) == 2 and resumed[0] == resumed[1] and 8 <= resumed[0] < 16, stderr


@requires_fashion_mnist
@pytest.mark.slow
def test_streamed_input_on_two_hosts_each_reading_its_own_rows(records_dir, tmp_path):
  """Fashion-MNIST as ArrayRecord files, streamed: 2 members x 4 data-parallel devices. On two hosts
  each reads half of every training and evaluation batch (its devices' rows), and the result equals
  one host reading them all. Rows read besides: the normalisation statistics (every host reads the
  1,024 training images)."""
  extra = ["--config.num_members=2", "--config.mesh.members=1", "--config.mesh.data=4",
           "--config.dataset.name=fashion_mnist_records", f"--config.dataset.data_dir={records_dir}",
           "--config.dataset.input=stream"]
  two = run_two_processes("deep_ensemble", tmp_path / "two", extra, probe=True,
                          environ={"READS_FILE": str(tmp_path / "two_reads")})
  one = run_one_process("deep_ensemble", tmp_path / "one", extra, probe=True,
                        environ={"READS_FILE": str(tmp_path / "one_reads")})
  assert_same_run(two, one)
  statistics = 1024
  alone = int((tmp_path / "one_reads.0").read_text()) - statistics
  shares = [int((tmp_path / f"two_reads.{i}").read_text()) - statistics for i in range(2)]
  # training (2 members x 16 steps x 128) + validation (after each of 2 epochs, and in the final
  # evaluation) + test
  batches = 2 * 16 * 128 + 3 * 512 + 512
  assert alone == batches and shares == [batches // 2, batches // 2], (alone, shares)


@pytest.mark.parametrize("flags, message", [
    (["--num_processes=2", "--process_id=0"], "missing --coordinator_address (or JAX_COORDINATOR_ADDRESS)"),
    (["--coordinator_address=127.0.0.1", "--num_processes=2", "--process_id=0"], "must be host:port"),
    (["--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=2"], "process_id must be in [0, 2)"),
])
def test_bad_distributed_flags_are_one_line(flags, message, tmp_path):
  out = subprocess.run(command("deep_ensemble", tmp_path, []) + ["--distributed", *flags], cwd=ROOT, env=env(1),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_settings_come_from_flags_or_the_environment(monkeypatch):
  from ensembles import distributed  # pylint: disable=g-import-not-at-top
  for name in distributed.ENV.values():
    monkeypatch.delenv(name, raising=False)
  assert distributed.settings() == {}  # none given: JAX detects the cluster (TPU pods, SLURM, ...)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.2:8476")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  assert distributed.settings() == {"coordinator_address": "10.0.0.2:8476", "num_processes": 4, "process_id": 3}
  assert distributed.settings(process_id=1)["process_id"] == 1  # a flag wins over its variable
  monkeypatch.delenv("JAX_PROCESS_ID")
  with pytest.raises(distributed.DistributedError, match=r"missing --process_id \(or JAX_PROCESS_ID\)"):
    distributed.settings()
  with pytest.raises(distributed.DistributedError, match="integers"):
    distributed.settings(process_id="first")
