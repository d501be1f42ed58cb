"""Single MLP on Fashion-MNIST with the same schedule as the deep ensemble.

  python -m experiments.train --config experiments/configs/single.py --workdir runs/single
"""
from experiments.configs import default


def get_config():
  c = default.get_config()
  c.method = "single"
  c.num_members = 1
  return c
