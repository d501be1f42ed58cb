"""Streaming input on this CPU: how fast the reader delivers batches against how fast the train step
consumes them, and the host memory of a streamed run at two dataset sizes.

  python -m benchmarks.input_pipeline

Throughput, per setting (M = 2 members, batch 128 each, so 256 images per step):
  * lenet5_caffe on Fashion-MNIST ArrayRecord files (experiments/prepare_records.py), 28x28x1,
    no host augmentation;
  * resnet (ResNet-20) on a folder of 64x64 JPEGs (written once, random content) with host
    random-resized crops to 32x32, the ImageNet-style path.
  reader images/s: `streaming.TrainBatches` alone (read, decode, crop, place on the device) over
  ``--steps`` steps from its start (many more than the batches it reads ahead); step images/s: the compiled train step on a batch already on
  the device; reader / step >= 1 means the reader keeps up.

Memory: a fresh process trains ``--memory-steps`` steps of ResNet-20 (M = 1, 64x64 inputs) on a
folder of N and of 10 N JPEGs, once streamed and once held in memory (dataset.input = memory), and
reports its peak resident set size (VmHWM). The streamed run's peak should not grow with N; the
in-memory run's grows by the images it holds (10 N - N) x 64 x 64 x 3 bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jpeg_folder(root: str, n: int, size: int = 64, classes: int = 10, seed: int = 0) -> str:
  """``n`` random JPEGs of size x size in root/train/<class>/ (kept when already there)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  done = os.path.join(root, f".complete_{n}")
  if os.path.exists(done):
    return root
  rng = np.random.default_rng(seed)
  for i in range(n):
    folder = os.path.join(root, "train", f"class{i % classes}")
    os.makedirs(folder, exist_ok=True)
    pixels = rng.integers(0, 256, (size // 8, size // 8, 3), np.uint8).repeat(8, 0).repeat(8, 1)  # blocky: JPEG-like
    Image.fromarray(pixels).save(os.path.join(folder, f"{i}.jpg"), quality=90)
  open(done, "w").close()
  return root


def _config(model: dict, dataset: dict, members: int, batch: int):
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.num_members = members
  c.model = ml_collections.ConfigDict(model)
  for k, v in dataset.items():
    *path, last = k.split(".")
    node = c
    for p in path:
      node = node[p]
    node[last] = v
  c.training.batch_size = batch
  c.training.epochs = 1
  return c


def throughput(name: str, cfg, steps: int) -> dict:
  """Reader and step images/s of one setting."""
  import jax  # pylint: disable=g-import-not-at-top
  from ensembles import api, context, data as data_lib, streaming  # pylint: disable=g-import-not-at-top
  data = data_lib.load_dataset(cfg.dataset)
  cfg.training.epochs = -(-(steps + 2) * cfg.training.batch_size // len(data.y_train)) + 1  # enough steps to read
  run = context.build(cfg, api.build_model(cfg, data), data, None)
  start = time.perf_counter()  # from the reader's start: its first batches and threads included
  reader = streaming.TrainBatches(run, 0)
  for _ in range(steps):
    batch = jax.block_until_ready(next(reader))
  read_s = (time.perf_counter() - start) / steps
  state = run.init_members()
  state, _ = run.batch_step(state, batch)  # compile
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, _ = run.batch_step(state, batch)
  jax.block_until_ready(state)
  step_s = (time.perf_counter() - start) / steps
  images = run.num_members * cfg.training.batch_size
  return {"setting": name, "images_per_step": images, "reader_images_per_s": images / read_s,
          "step_images_per_s": images / step_s, "reader_over_step": step_s / read_s}


def peak_rss_mib() -> float:
  """This process's peak resident set size (VmHWM of /proc/self/status: its own address space;
  ru_maxrss would carry the parent's peak over the exec of a child)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_child(folder: str, input_mode: str, steps: int) -> None:
  """(child) Trains ``steps`` steps of ResNet-20 on the folder; prints the peak RSS in MiB."""
  import jax  # pylint: disable=g-import-not-at-top
  from ensembles import api, context, data as data_lib, trainer  # pylint: disable=g-import-not-at-top
  cfg = _config({"name": "resnet", "depth": 20}, {"dataset.name": "folder", "dataset.data_dir": folder,
                                                   "dataset.image_size": 64, "dataset.val_size": 0,
                                                   "dataset.input": input_mode, "dataset.statistics_examples": 1000},
                1, 64)
  data = data_lib.load_dataset(cfg.dataset)
  run = context.build(cfg, api.build_model(cfg, data), data, None)
  run = run.phase(epochs=1)
  state = run.init_members()
  limit = {"n": 0}
  step = run.batch_step if input_mode == "stream" else run.train_step

  class Done(Exception):
    pass

  def counted(*args):
    if limit["n"] == steps:
      raise Done()
    limit["n"] += 1
    return step(*args)

  import dataclasses  # pylint: disable=g-import-not-at-top
  run = dataclasses.replace(run, batch_step=counted, train_step=counted)
  try:
    trainer.fit(run, state)
  except Done:
    pass
  jax.effects_barrier()
  print(json.dumps({"peak_rss_mib": peak_rss_mib()}), flush=True)
  os._exit(0)  # skip interpreter teardown: after the interrupted fit it crashed now and then (exit 139)


def peak_memory(folder: str, input_mode: str, steps: int) -> float:
  proc = subprocess.run([sys.executable, "-m", "benchmarks.input_pipeline", "--child-memory", folder, input_mode,
                         str(steps)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
  if proc.returncode:
    raise RuntimeError(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--sizes", type=int, nargs=2, default=[2000, 20000], help="the two folder sizes (images)")
  p.add_argument("--memory-steps", type=int, default=20)
  p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ensembles_input_pipeline"))
  p.add_argument("--out", default="benchmarks/results/input_pipeline_cpu.json")
  p.add_argument("--child-memory", nargs=3, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child_memory:
    folder, mode, steps = args.child_memory
    peak_memory_child(folder, mode, int(steps))
    return
  from ensembles import records  # pylint: disable=g-import-not-at-top
  records_dir = os.path.join(args.workdir, "records")
  records.prepare(records_dir)
  small, large = args.sizes
  folders = {n: write_jpeg_folder(os.path.join(args.workdir, f"jpegs_{n}"), n) for n in (small, large)}
  rows = [
      throughput("lenet5_caffe, Fashion-MNIST ArrayRecord", _config(
          {"name": "lenet5_caffe"}, {"dataset.name": "fashion_mnist_records", "dataset.data_dir": records_dir,
                                     "dataset.input": "stream"}, 2, 128), args.steps),
      throughput("resnet20, 64x64 JPEG folder -> 32x32 random-resized crops", _config(
          {"name": "resnet", "depth": 20}, {"dataset.name": "folder", "dataset.data_dir": folders[small],
                                            "dataset.image_size": 32, "dataset.val_size": 0,
                                            "augment.random_resized_crop": True, "augment.flip": True}, 2, 128),
          args.steps)]
  memory = [{"images": n, "input": mode, "peak_rss_mib": peak_memory(folders[n], mode, args.memory_steps)}
            for mode in ("stream", "memory") for n in (small, large)]
  print("| setting | images / step | reader images/s | train step images/s | reader / step |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['setting']} | {r['images_per_step']} | {r['reader_images_per_s']:,.0f} | "
          f"{r['step_images_per_s']:,.0f} | {r['reader_over_step']:.2f} |")
  print("\n| input | images in the folder | peak RSS (MiB) |\n|---|---|---|")
  for m in memory:
    print(f"| {m['input']} | {m['images']:,} | {m['peak_rss_mib']:,.0f} |")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"throughput": rows, "memory": memory, "steps": args.steps, "memory_steps": args.memory_steps,
               "cpu_count": os.cpu_count()}, f, indent=1)


if __name__ == "__main__":
  main()
