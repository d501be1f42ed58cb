"""MC dropout: one MLP trained with dropout 0.2 after each hidden layer (our choice of rate), 10
stochastic test-time passes (Fashion-MNIST).

  python -m experiments.train --config experiments/configs/mc_dropout.py --workdir runs/mc_dropout
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("mc_dropout")  # the method's defaults and option blocks (documented in the library)
