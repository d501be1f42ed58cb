"""MIMO: one MLP with M = 3 input and output heads, each member trained on its own examples,
for the single model's 10 epochs (Fashion-MNIST).

  python -m experiments.train --config experiments/configs/mimo.py --workdir runs/mimo

Input and batch repetition: --config.mimo.input_repetition=0.5 --config.mimo.batch_repetitions=2.
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("mimo")  # the method's defaults and option blocks (documented in the library)
