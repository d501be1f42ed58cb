"""Checkpoint-boosted networks (CBNN, our documented design): one MLP run with the single model's
10-epoch budget and schedule, M = 3 checkpoints with SAMME sample reweighting (Fashion-MNIST).

  python -m experiments.train --config experiments/configs/cbnn.py --workdir runs/cbnn

Long-tailed variant: add --config.dataset.imbalance_ratio=100.
Every field of the ``cbnn`` block is our decision (the paper's formulas are not available to us).
"""
import ml_collections

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.method = "cbnn"
  c.num_members = 3               # M checkpoints = equal segments of the budget
  c.cbnn = ml_collections.ConfigDict()
  c.cbnn.rule = "samme"           # samme | samme_r (Zhu et al., 2009)
  c.cbnn.eps = 1e-3               # weighted error clipped into [eps, 1 - 1/K - eps]
  c.cbnn.max_weight_ratio = 2.0   # 0: no cap; r >= 1: max(w)/mean(w) <= r (2.0 chosen on validation, see README)
  c.cbnn.combine = "mean"         # mean (alpha-weighted probabilities) | vote
  return c
