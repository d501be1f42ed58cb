"""The benchmark scripts run end to end on a tiny setting (their numbers are not checked here)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_member_throughput_runs(tmp_path):
  out = tmp_path / "mt.json"
  args = ["--models", "mlp", "--members", "2", "--modes", "python_loop,vmap,sharded", "--min-time", "0.05",
          "--batch", "16", "--out", str(out)]
  proc = subprocess.run([sys.executable, "-m", "benchmarks.member_throughput", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.load(open(out))["rows"]
  assert {r["mode"] for r in rows} == {"python_loop", "vmap", "sharded"}
  assert all(r["step_ms"] > 0 and r["x_loop"] > 0 for r in rows)
  assert "| mlp | 2 |" in proc.stdout


def test_sparse_overhead_runs(tmp_path):
  out = tmp_path / "so.json"
  proc = subprocess.run([sys.executable, "-m", "benchmarks.sparse_overhead", "--models", "mlp", "--min-time",
                         "0.05", "--batch", "16", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  row = json.load(open(out))["rows"][0]
  assert row["masked_over_dense"] > 0 and row["update_in_dense_steps"] > 0


def test_end_to_end_runs(tmp_path):
  out = tmp_path / "e2e.json"
  proc = subprocess.run([sys.executable, "-m", "benchmarks.end_to_end", "--models", "lenet_300_100", "--threads", "2",
                         "--epochs", "3", "--train-subset", "1024", "--out", str(out)], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  row = json.load(open(out))["rows"][0]
  assert row["steps_s"] > 0 and row["step_gflops"] > 0 and row["startup_s_rerun"] > 0
  assert row["compile_s_rerun"] < row["compile_s_first"]  # the rerun reads the compiled programs from the cache
  assert "| lenet_300_100 | 2 |" in proc.stdout


@pytest.mark.slow  # about 2 minutes: four fresh processes compile ResNet-20 for the memory part
def test_input_pipeline_runs(tmp_path):
  out = tmp_path / "ip.json"
  proc = subprocess.run([sys.executable, "-m", "benchmarks.input_pipeline", "--steps", "3", "--sizes", "100", "300",
                         "--memory-steps", "2", "--workdir", str(tmp_path / "data"), "--out", str(out)], cwd=ROOT,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.load(open(out))
  assert all(r["reader_images_per_s"] > 0 and r["step_images_per_s"] > 0 for r in result["throughput"])
  assert {(m["input"], m["images"]) for m in result["memory"]} == {("stream", 100), ("stream", 300),
                                                                  ("memory", 100), ("memory", 300)}


@pytest.mark.slow  # about 5 minutes on this CPU: ResNet-18 and -50 (reduced) compiled several times
def test_accelerator_benchmark_runs(tmp_path):
  """benchmarks/accelerator.py, --quick on the CPU: every part runs and the JSON holds its numbers."""
  out = tmp_path / "acc.json"
  proc = subprocess.run([sys.executable, "-m", "benchmarks.accelerator", "--quick", "--no-tests", "--min-time", "0.05",
                         "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.load(open(out))
  assert {r["model"] for r in result["members_rows"]} == {"mlp", "resnet18_cifar", "resnet50_224"}
  assert all(r["step_ms"] > 0 and r["x_separate"] > 0 for r in result["members_rows"])
  assert result["resnet50_bf16"]["images_per_s"] > 0 and result["seeds_as_members"]["speedup"] > 0
  assert "| resnet50_224 | 4 | vmap |" in proc.stdout
