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
