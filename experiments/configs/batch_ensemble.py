"""BatchEnsemble: M = 4 members sharing one MLP's weights with rank-1 fast weights per layer,
trained for the single model's 10 epochs on the batch repeated M times (Fashion-MNIST).

  python -m experiments.train --config experiments/configs/batch_ensemble.py --workdir runs/batch_ensemble

Any model: add e.g. --config.model.name=lenet (every dense and conv layer gets fast weights).
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("batch_ensemble")  # the method's defaults and option blocks (documented in the library)
