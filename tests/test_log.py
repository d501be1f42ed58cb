"""The training log: TensorBoard event files (decoded with tensorboardX's own protos and CRC), and
the throughput and MFU written at every log step."""
import glob
import json
import struct

import numpy as np
import pytest

from ensembles import api, flops, hardware, tensorboard
from conftest import tiny_config, make_dataset

tensorboardX = pytest.importorskip("tensorboardX")
from tensorboardX.crc32c import crc32c as reference_crc32c  # noqa: E402
from tensorboardX.proto import event_pb2  # noqa: E402


def _read_events(path):
  """Every Event of a TFRecord file, checking both CRCs with tensorboardX's CRC-32C."""
  masked = lambda data: (((reference_crc32c(data) >> 15) | (reference_crc32c(data) << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  data, events, i = open(path, "rb").read(), [], 0
  while i < len(data):
    header = data[i:i + 8]
    (length,), (length_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[i + 8:i + 12])
    payload = data[i + 12:i + 12 + length]
    (payload_crc,) = struct.unpack("<I", data[i + 12 + length:i + 16 + length])
    assert length_crc == masked(header) and payload_crc == masked(payload)
    event = event_pb2.Event()
    event.ParseFromString(payload)
    events.append(event)
    i += 16 + length
  return events


def test_crc32c_known_value():
  assert tensorboard.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
  assert tensorboard.crc32c(b"ensembles") == reference_crc32c(b"ensembles")


def test_event_file_decodes_with_tensorboard_protos(tmp_path):
  writer = tensorboard.EventWriter(str(tmp_path))
  writer.scalars(7, {"train_loss": 0.25, "val_accuracy": 0.875})
  writer.scalars(12, {"train_loss": 0.125})
  events = _read_events(writer.path)
  assert events[0].file_version == "brain.Event:2"
  assert [(e.step, [(v.tag, v.simple_value) for v in e.summary.value]) for e in events[1:]] == [
      (7, [("train_loss", 0.25), ("val_accuracy", 0.875)]), (12, [("train_loss", 0.125)])]


def test_run_logs_tensorboard_scalars_throughput_and_mfu(tmp_path, monkeypatch):
  dataset = make_dataset(n_train=128, n_val=16, n_test=16)
  monkeypatch.setattr(api.data_lib, "load_dataset", lambda _: dataset)
  peak = 1e9
  cfg = tiny_config(**{"peak_flops_per_device": peak, "log_every_steps": 2})
  api.run_config(cfg, str(tmp_path))
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  train = [r for r in records if "train_loss" in r]
  f_dense = flops.forward_flops(flops.layer_costs(api.build_model(cfg, dataset), dataset.image_shape))
  for r in train:
    assert r["images_per_s"] > 0 and r["images_per_s_per_device"] == pytest.approx(r["images_per_s"])
    # mfu = images/s · 3 · f_dense / (devices · peak)
    assert r["mfu"] == pytest.approx(r["images_per_s"] * 3 * f_dense / peak, rel=1e-9)
  files = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  assert len(files) == 1
  logged = {(e.step, v.tag): v.simple_value for e in _read_events(files[0])[1:] for v in e.summary.value}
  for r in train:
    assert logged[(r["step"], "train_loss")] == pytest.approx(r["train_loss"], rel=1e-6)
  val = [r for r in records if "val_accuracy" in r]
  assert val and all(logged[(r["step"], "val_accuracy")] == pytest.approx(r["val_accuracy"]) for r in val)


def test_peak_flops_table():
  class Device:
    def __init__(self, kind):
      self.device_kind = kind

  assert hardware.peak_flops(Device("TPU v5 lite"), "bfloat16") == 197e12
  assert hardware.peak_flops(Device("TPU v5"), "bfloat16") == 459e12
  assert hardware.peak_flops(Device("NVIDIA H100 80GB HBM3"), "bfloat16") == 989e12
  assert hardware.peak_flops(Device("cpu"), "float32") is None
  assert hardware.peak_flops(Device("cpu"), "float32", override=2e11) == 2e11
  assert np.isclose(hardware.peak_flops(Device("NVIDIA A100-SXM4-40GB"), "float32"), 156e12)
