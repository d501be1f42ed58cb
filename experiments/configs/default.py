"""Default config: deep ensemble of 4 MLPs on offline Fashion-MNIST.

  python -m experiments.train --config experiments/configs/default.py --workdir runs/default

The config lives in the library (`ensembles.defaults.default_config`, every field documented there);
other configs change a few fields. Any field can be overridden on the command line:
--config.num_members=8 --config.training.lr=0.1 ...
"""
from ensembles.defaults import default_config


def get_config():
  return default_config()
