"""Subnetwork ensemble (Ex uno plures, our recipe): a dense MLP parent trained for half of the
10-epoch budget, split into M = 3 disjoint children that train for the other half (Fashion-MNIST).

  python -m experiments.train --config experiments/configs/subnetwork_ensemble.py --workdir runs/subnet

Every field of the ``subnetwork`` block is our decision (the paper's rule is not available to us).
"""
import ml_collections

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.method = "subnetwork_ensemble"
  c.num_members = 3
  c.subnetwork = ml_collections.ConfigDict()
  c.subnetwork.parent_fraction = 0.5     # parent epochs = round(fraction x training.epochs); children the rest
  c.subnetwork.granularity = "weight"    # weight | unit (neurons / channels)
  c.subnetwork.score = "magnitude"       # magnitude (|w| or a unit's L1 norm) | random
  c.subnetwork.share_input_output = False  # True: first and last prunable layers kept whole by every child
  return c
