"""Writes Fashion-MNIST as a tfds dataset of ArrayRecord files, `fashion_mnist_records`, so the
streaming input path can be run (and tested) on real data read from disk, without TensorFlow.

    python -m experiments.prepare_records --data_dir /tmp/records

reads the offline IDX files (Debian's dataset-fashion-mnist, or --idx_dir) and writes
DATA_DIR/fashion_mnist_records/1.0.0/ (train 60,000 and test 10,000 examples, about 45 MB); then
train with dataset.name = 'fashion_mnist_records', dataset.data_dir = DATA_DIR (`ensembles.records`).
"""
from __future__ import annotations

import argparse
import os


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", required=True, help="tfds data folder to write into")
  parser.add_argument("--idx_dir", default="", help="folder of the four IDX .gz files (default: Debian's)")
  args = parser.parse_args(argv)
  os.makedirs(args.data_dir, exist_ok=True)
  from ensembles import records  # pylint: disable=g-import-not-at-top
  print(records.prepare(args.data_dir, args.idx_dir))


if __name__ == "__main__":
  main()
