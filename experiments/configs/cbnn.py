"""Checkpoint-boosted networks (CBNN, our documented design): one MLP run with the single model's
10-epoch budget and schedule, M = 3 checkpoints with SAMME sample reweighting (Fashion-MNIST).

  python -m experiments.train --config experiments/configs/cbnn.py --workdir runs/cbnn

Long-tailed variant: add --config.dataset.imbalance_ratio=100.
Every field of the ``cbnn`` block is our decision (the paper's formulas are not available to us).
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("cbnn")  # the method's defaults and option blocks (documented in the library)
