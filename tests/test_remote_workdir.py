"""Workdirs on gs:// against a local stand-in for Google Cloud Storage.

The stand-in is gcp-storage-emulator, an in-process HTTP server speaking the GCS JSON API. The
real clients talk to it: gcsfs (under etils epath: config, metrics log, TensorBoard, results)
through STORAGE_EMULATOR_HOST and tensorstore (under Orbax: checkpoints, members, the ensemble)
through TENSORSTORE_GCS_HTTP_URL. Nothing of ours is mocked, and nothing is written to the local
disk for a gs:// path (the bucket lives in memory).
"""
import json
import logging
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from etils import epath
from gcp_storage_emulator.server import create_server

from ensembles import api, checkpoints, files, trainer
from experiments import runner
from conftest import method_config, requires_fashion_mnist, tiny_config
from test_log import _read_events
from test_trainer import Interrupted, _interrupt_after, _run

BUCKET = "ensembles-test"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _with_generation_headers():
  """Makes the emulator's downloads carry x-goog-generation / x-goog-metageneration, as real GCS
  does: tensorstore reads an object's generation from them (without, a read that misses its cache
  fails with "Malformed StorageGeneration")."""
  from gcp_storage_emulator import server as emulator_server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  download = objects.download
  if getattr(download, "adds_generation", False):
    return

  def with_headers(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    if int(response.status) in (200, 206):
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj["metageneration"])

  with_headers.adds_generation = True
  objects.download = with_headers  # the JSON API's get?alt=media calls it by this name
  for _, methods in emulator_server.HANDLERS:
    for method, handler in methods.items():
      if handler is download:
        methods[method] = with_headers


def _with_create_precondition():
  """Makes the emulator honour ``ifGenerationMatch=0`` on uploads, as real GCS does: the object is
  created only if absent, else 412 Precondition Failed (gcsfs raises FileExistsError); check and
  write are one step, as GCS guarantees. The workdir lock (`ensembles.workdir_lock`) relies on it."""
  import threading  # pylint: disable=g-import-not-at-top
  from http import HTTPStatus  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator import server as emulator_server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  insert = objects.insert
  if getattr(insert, "honours_preconditions", False):
    return
  atomic = threading.Lock()

  def conditional_insert(request, response, storage, *args, **kwargs):
    if request.query.get("ifGenerationMatch") != ["0"]:
      return insert(request, response, storage, *args, **kwargs)
    data = request.data if isinstance(request.data, dict) else {}
    name = (request.query.get("name") or [None])[0] or data.get("meta", {}).get("name") or data.get("name")
    with atomic:
      try:
        storage.get_file_obj(request.params["bucket_name"], name)
      except NotFound:
        return insert(request, response, storage, *args, **kwargs)
      response.status = HTTPStatus.PRECONDITION_FAILED
      response.json({"error": {"code": 412, "message": "At least one of the pre-conditions you specified did not hold."}})

  conditional_insert.honours_preconditions = True
  objects.insert = conditional_insert
  for _, methods in emulator_server.HANDLERS:
    for method, handler in methods.items():
      if handler is insert:
        methods[method] = conditional_insert


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
  """The emulator's environment for the clients (also for subprocesses)."""
  port = _free_port()
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # every 404 probe is logged as an error
  _with_generation_headers()
  _with_create_precondition()
  server = create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  env = {"STORAGE_EMULATOR_HOST": f"http://localhost:{port}", "TENSORSTORE_GCS_HTTP_URL": f"http://localhost:{port}",
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "stand-in"}  # tensorstore's fixed token (gcsfs finds none: anonymous)
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  yield env
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  server.stop()


def _url(tmp_path, name):
  """A fresh gs:// folder per test (the bucket is shared by the module's tests)."""
  return f"gs://{BUCKET}/{tmp_path.name}/{name}"


def test_gs_workdir_without_a_client_says_what_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if not installed
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  with pytest.raises(ImportError, match=r"gs://bucket/x: gs:// paths need gcsfs; install it with pip install -e \"\.\[gcs\]\""):
    api.claim_workdir(tiny_config(), "gs://bucket/x")


def test_growing_file_rewrites_the_object_with_all_its_text(gcs, tmp_path):
  path = _url(tmp_path, "log.jsonl")
  log = files.GrowingFile(path, flush_seconds=3600)
  log.append("a\n")
  assert not epath.Path(path).exists()  # held until a flush
  log.flush()
  log.append("b\n")
  log.flush()
  assert epath.Path(path).read_text() == "a\nb\n"
  resumed = files.GrowingFile(path, flush_seconds=0)  # a resumed run keeps what the object holds
  resumed.append("c\n")  # flushed at once: flush_seconds passed
  assert epath.Path(path).read_text() == "a\nb\nc\n"
  local = files.GrowingFile(str(tmp_path / "log.jsonl"))
  local.append("a\n")
  assert open(tmp_path / "log.jsonl").read() == "a\n"  # local files are appended at once


# the tiny run of test_trainer's resume test: 4 steps per epoch, 12 steps, checkpoints every 4
OVERRIDES = {"model.hidden": (8,), "training.epochs": 3, "augment.flip": True}


def test_interrupted_run_in_a_gcs_workdir_resumes_to_the_uninterrupted_result(gcs, tmp_path):
  """Checkpoints go to the bucket (not to ./gs:/...), the metrics log holds every record up to the
  last checkpoint when a run dies, and the resumed run equals an uninterrupted local one."""
  full, _ = _run(str(tmp_path / "local"), None, **OVERRIDES)
  workdir = _url(tmp_path, "run")
  logged = lambda: [json.loads(line)["step"] for line in epath.Path(workdir, "metrics.jsonl").read_text().splitlines()]
  seen = {}

  def look(state, done, batch):
    seen[done] = logged()
    return state

  with pytest.raises(Interrupted):  # 4 steps per epoch, 12 steps; checkpoints every 4
    _run(workdir, None, _interrupt_after(6), [trainer.Hook(frozenset({5}), look)], **OVERRIDES)
  # training records at steps 2 and 4, validation at 4 (the epoch's end)
  assert seen[5] == [2, 4, 4]  # at step 5: written out at the checkpoint (a killed process keeps these)
  assert logged() == [2, 4, 4, 6]  # and when training stopped, by an error too
  assert not os.path.exists("gs:") and not os.path.exists(os.path.join(ROOT, "gs:"))
  assert sorted(p.name for p in epath.Path(workdir, "checkpoints").iterdir()) == ["4"]
  resumed, info = _run(workdir, None, **OVERRIDES)
  files.close_all()  # what api.fit does at the end of a run
  assert info["resumed_from"] == 4 and info["steps"] == 12
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), resumed, full)
  records = [json.loads(line) for line in epath.Path(workdir, "metrics.jsonl").read_text().splitlines()]
  # as in a local folder: the interrupted run logged step 6, the resumed one logs from step 5 on
  assert [r["step"] for r in records if "train_loss" in r] == [2, 4, 6, 6, 8, 10, 12]
  events = list(epath.Path(workdir, "tensorboard").iterdir())  # one per writer's start (second and pid)
  steps = set()
  for k, event_file in enumerate(events):
    (tmp_path / f"events{k}").write_bytes(event_file.read_bytes())
    steps |= {e.step for e in _read_events(tmp_path / f"events{k}") if e.summary.value}
  assert steps == {2, 4, 6, 8, 10, 12}


def test_corrupt_checkpoint_in_a_bucket_is_set_aside(gcs, tmp_path, capsys):
  directory = _url(tmp_path, "checkpoints")
  manager = checkpoints.make_manager(directory)
  state = {"w": np.arange(6, dtype=np.float32)}
  for step in (1, 2):
    checkpoints.save(manager, step, {"w": state["w"] + step}, {"step": step})
  manager.wait_until_finished()
  meta = next(p for p in epath.Path(directory, "2", "meta").iterdir() if p.read_text().lstrip().startswith("{"))
  meta.write_text(json.dumps({**json.loads(meta.read_text()), "fingerprint": "00000000"}))
  restored, found = checkpoints.restore_latest(checkpoints.make_manager(directory), state)
  assert found["step"] == 1
  np.testing.assert_array_equal(restored["w"], state["w"] + 1)
  assert "moved to gs://" in capsys.readouterr().err
  aside = list(epath.Path(directory + "_corrupt").iterdir())
  assert len(aside) == 1 and aside[0].name.startswith("2-") and (aside[0] / "meta").is_dir()
  assert not epath.Path(directory, "2").exists()


def test_collected_members_results_and_plots_in_a_gcs_workdir(gcs, tmp_path, fake_data):
  """A snapshot ensemble (members saved one by one while training) in a bucket: results, plots,
  the saved ensemble, and a fresh evaluation of it, as from a local folder."""
  from experiments.configs import snapshot_ensemble  # pylint: disable=g-import-not-at-top
  config = method_config(snapshot_ensemble, num_members=2, **{"evaluation.plots": True})
  workdir = _url(tmp_path, "snapshots")
  results = runner.run(config, workdir)
  names = {p.name for p in epath.Path(workdir).iterdir()}
  assert {"config.json", "metrics.jsonl", "tensorboard", "checkpoints", "members", "ensemble",
          "results.json", "results.md", "reliability.png"} <= names
  assert json.loads(epath.Path(workdir, "results.json").read_text())["test"] == json.loads(json.dumps(results["test"]))
  assert epath.Path(workdir, "reliability.png").read_bytes().startswith(b"\x89PNG")
  again = runner.evaluate_workdir(workdir)
  for metric in ("accuracy", "nll", "ece", "brier"):
    assert again["test"]["ensemble"][metric] == pytest.approx(results["test"]["ensemble"][metric], rel=1e-6)
  with pytest.raises(ValueError, match="different config"):
    runner.run(method_config(snapshot_ensemble, num_members=2, seed=1), workdir)


@requires_fashion_mnist
def test_cli_trains_in_a_gcs_workdir(gcs, tmp_path):
  workdir = _url(tmp_path, "cli")
  flags = ["--config.dataset.train_subset=256", "--config.dataset.test_subset=100", "--config.dataset.val_size=100",
           "--config.training.epochs=1", "--config.num_members=2", "--config.model.hidden=(16,)",
           "--config.evaluation.corruptions=()", "--config.evaluation.ood_datasets=()"]
  out = subprocess.run([sys.executable, "-m", "experiments.train", "--config", os.path.join(ROOT, "experiments/configs/deep_ensemble.py"),
                        "--workdir", workdir, *flags], cwd=str(tmp_path), capture_output=True, text=True,
                       timeout=600, env={**os.environ, **gcs, "PYTHONPATH": ROOT})
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"Wrote {workdir}/results.md" in out.stdout
  assert not (tmp_path / "gs:").exists()  # nothing under the working directory
  results = json.loads(epath.Path(workdir, "results.json").read_text())
  assert results["num_members"] == 2 and 0.3 < results["test"]["ensemble"]["accuracy"] <= 1.0
  assert epath.Path(workdir, "checkpoints", "2").is_dir()


def test_a_gcs_workdir_is_held_by_one_run(gcs, tmp_path, capsys):
  """The lock object is created only if absent: of many concurrent takers exactly one wins; the
  others are refused naming the holder; a release frees the folder."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  from ensembles import errors, workdir_lock  # pylint: disable=g-import-not-at-top
  workdir = _url(tmp_path, "run")

  def take(_):
    try:
      return workdir_lock.acquire(workdir)
    except errors.WorkdirInUseError as err:
      return err

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    outcomes = list(pool.map(take, range(4)))
  locks = [o for o in outcomes if not isinstance(o, Exception)]
  refusals = [o for o in outcomes if isinstance(o, Exception)]
  assert len(locks) == 1 and len(refusals) == 3
  assert f"{workdir} is in use by another run (host {socket.gethostname()}, process {os.getpid()}" in str(refusals[0])
  locks[0].release()
  assert not epath.Path(workdir, "run.lock").exists()
  workdir_lock.acquire(workdir).release()  # free again
  assert "takes it over" not in capsys.readouterr().err


def _write_lock(workdir, **fields):
  record = {"host": "other-host", "pid": 12345, "process_start": "1", "token": "old", "started": 0.0,
            "heartbeat": 0.0, **fields}
  epath.Path(workdir, "run.lock").write_text(json.dumps(record))


def test_a_stale_gcs_lock_is_taken_over_with_a_message(gcs, tmp_path, capsys):
  """Another host's lock whose heartbeat is older than STALE_SECONDS, and this host's lock whose
  process has ended, are taken over; another host's fresh heartbeat refuses."""
  import time  # pylint: disable=g-import-not-at-top
  from ensembles import errors, workdir_lock  # pylint: disable=g-import-not-at-top
  workdir = _url(tmp_path, "run")
  _write_lock(workdir, heartbeat=time.time() - workdir_lock.STALE_SECONDS - 60)
  workdir_lock.acquire(workdir).release()
  err = capsys.readouterr().err
  assert "lock (host other-host, process 12345" in err and "is stale: its last heartbeat was" in err
  _write_lock(workdir, heartbeat=time.time() - 5)
  with pytest.raises(errors.WorkdirInUseError, match=r"host other-host, process 12345, .*last heartbeat \d+ s ago"):
    workdir_lock.acquire(workdir)
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  _write_lock(workdir, host=socket.gethostname(), pid=int(dead.stdout), heartbeat=time.time())
  workdir_lock.acquire(workdir).release()
  assert f"process {int(dead.stdout)} on this host has ended; this run takes it over" in capsys.readouterr().err


def test_a_gcs_lock_holder_beats_and_notices_a_take_over(gcs, tmp_path, capsys):
  import time  # pylint: disable=g-import-not-at-top
  from ensembles import workdir_lock  # pylint: disable=g-import-not-at-top
  workdir = _url(tmp_path, "run")
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  lock = workdir_lock._ObjectStoreLock(workdir, heartbeat_seconds=0.2)  # pylint: disable=protected-access
  first = json.loads(epath.Path(workdir, "run.lock").read_text())["heartbeat"]
  deadline = time.time() + 20
  while json.loads(epath.Path(workdir, "run.lock").read_text())["heartbeat"] == first and time.time() < deadline:
    time.sleep(0.1)
  assert json.loads(epath.Path(workdir, "run.lock").read_text())["heartbeat"] > first
  _write_lock(workdir, token="another run's", heartbeat=time.time())  # taken over (e.g. judged stale)
  lock._thread.join(20)  # pylint: disable=protected-access
  assert "this run's lock was taken over (host other-host, process 12345" in capsys.readouterr().err
  lock.release()
  assert json.loads(epath.Path(workdir, "run.lock").read_text())["token"] == "another run's"  # not ours to delete
