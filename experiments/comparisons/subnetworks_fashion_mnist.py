"""Subnetwork ensembles and MC dropout on Fashion-MNIST (MLP, CPU scale), beside the single model,
the deep ensemble and the efficient ensembles the paper compares with (BatchEnsemble, MIMO),
three seeds (same protocol as freetickets_fashion_mnist.py).

  python -m experiments.compare --comparison experiments/comparisons/subnetworks_fashion_mnist.py \
      --workdir runs/compare_subnetworks

About 5 minutes on a 2-core CPU.
"""
from experiments.comparisons.freetickets_fashion_mnist import MIMO_STUDY


def get_comparison():
  return {
      "title": "Subnetwork ensembles and MC dropout on Fashion-MNIST (MLP, M = 3)",
      "description": ("Subnetwork ensembles: parent 5 epochs, children 5 epochs (our recipe); both granularities "
                      "keep the input and output layers whole in every child (`_split`: every layer partitioned). "
                      "MC dropout: dropout 0.2, 10 test-time passes."),
      "seeds": [0, 1, 2],
      "runs": [
          ("single", "experiments/configs/single.py", {}),
          ("deep_ensemble", "experiments/configs/deep_ensemble.py", {"num_members": 3}),
          ("subnetwork_weight", "experiments/configs/subnetwork_ensemble.py", {}),
          ("subnetwork_unit", "experiments/configs/subnetwork_ensemble.py",
           {"subnetwork.granularity": "unit"}),
          ("mc_dropout", "experiments/configs/mc_dropout.py", {}),
          ("batch_ensemble", "experiments/configs/batch_ensemble.py", {"num_members": 3}),
          ("mimo", "experiments/configs/mimo.py", MIMO_STUDY),
          # ablation: every layer partitioned at weight level (the default before issue 35)
          ("subnetwork_weight_split", "experiments/configs/subnetwork_ensemble.py",
           {"subnetwork.share_input_output": False}),
      ],
  }
