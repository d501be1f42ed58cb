"""TreeNet: M = 3 members sharing the MLP's first layer (the trunk), each with its own later layers,
trained together for the single model's 10 epochs on the same batches (Fashion-MNIST).

  python -m experiments.train --config experiments/configs/treenet.py --workdir runs/treenet

Any model: add e.g. --config.model.name=lenet (the first conv layer is the trunk; --config.treenet.shared_layers=2 for more).
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("treenet")  # the method's defaults and option blocks (documented in the library)
