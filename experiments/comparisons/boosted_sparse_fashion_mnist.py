"""Beyond the papers: boosted sparse ensembles (EDST's tickets with CBNN's reweighting between them)
against EDST, CBNN, the single model and the deep ensemble, balanced and long-tailed (ρ = 100)
Fashion-MNIST (MLP, M = 3, S = 0.8), three seeds.

  python -m experiments.compare --comparison experiments/comparisons/boosted_sparse_fashion_mnist.py \
      --workdir runs/compare_boosted_sparse

Validation and test sets stay balanced.
"""

LT = {"dataset.imbalance_ratio": 100.0}


def get_comparison():
  return {
      "title": "Boosted sparse ensembles on Fashion-MNIST, balanced and long-tailed (MLP, M = 3, S = 0.8)",
      "description": ("boosted_edst: the EDST run (6 + 3 x 4 epochs, S = 0.8) with CBNN's SAMME reweighting "
                      "(weight cap 2) at each ticket, tickets weighted by α; the others at their own recipes. "
                      "`_lt100` rows train on a long-tailed training set and test on the balanced test set."),
      "seeds": [0, 1, 2],
      "runs": [
          ("single", "experiments/configs/single.py", {}),
          ("deep_ensemble", "experiments/configs/deep_ensemble.py", {"num_members": 3}),
          ("cbnn", "experiments/configs/cbnn.py", {}),
          ("edst_ensemble", "experiments/configs/edst_ensemble.py", {}),
          ("boosted_edst", "experiments/configs/boosted_edst.py", {}),
          ("single_lt100", "experiments/configs/single.py", LT),
          ("deep_ensemble_lt100", "experiments/configs/deep_ensemble.py", {"num_members": 3, **LT}),
          ("cbnn_lt100", "experiments/configs/cbnn.py", LT),
          ("edst_ensemble_lt100", "experiments/configs/edst_ensemble.py", LT),
          ("boosted_edst_lt100", "experiments/configs/boosted_edst.py", LT),
      ],
  }
