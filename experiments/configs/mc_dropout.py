"""MC dropout: one MLP trained with dropout 0.2 after each hidden layer (our choice of rate), 10
stochastic test-time passes (Fashion-MNIST).

  python -m experiments.train --config experiments/configs/mc_dropout.py --workdir runs/mc_dropout
"""
import ml_collections

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.method = "mc_dropout"
  c.num_members = 1
  c.model.dropout_rate = 0.2
  c.mc_dropout = ml_collections.ConfigDict()
  c.mc_dropout.num_passes = 10   # T stochastic passes at test time
  return c
