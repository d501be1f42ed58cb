"""Checkpoint ensembles on Fashion-MNIST, balanced and long-tailed (ρ = 100): single model, snapshot
ensemble, CBNN and the baselines the CBNN paper compares with (Snapshot Boosting, FGE, SWA), all with
the same 10-epoch budget (MLP, M = 3), three seeds.

  python -m experiments.compare --comparison experiments/comparisons/boosting_fashion_mnist.py \
      --workdir runs/compare_boosting

About 6 minutes on a 2-core CPU. Validation and test sets stay balanced.
"""

LT = {"dataset.imbalance_ratio": 100.0}


def get_comparison():
  return {
      "title": "Checkpoint ensembles on Fashion-MNIST, balanced and long-tailed (MLP, M = 3)",
      "description": ("Same budget for every run (10 epochs); `_lt100` rows train on a long-tailed training set "
                      "(n_c = n_max·100^(−c/9)) and test on the balanced test set."),
      "seeds": [0, 1, 2],
      "runs": [
          ("single", "experiments/configs/single.py", {}),
          ("snapshot_ensemble", "experiments/configs/snapshot_ensemble.py", {}),
          ("cbnn", "experiments/configs/cbnn.py", {}),
          ("snapshot_boosting", "experiments/configs/snapshot_boosting.py", {}),
          ("fge", "experiments/configs/fge.py", {}),
          ("swa", "experiments/configs/swa.py", {}),
          ("single_lt100", "experiments/configs/single.py", LT),
          ("snapshot_ensemble_lt100", "experiments/configs/snapshot_ensemble.py", LT),
          ("cbnn_lt100", "experiments/configs/cbnn.py", LT),
          ("snapshot_boosting_lt100", "experiments/configs/snapshot_boosting.py", LT),
          ("fge_lt100", "experiments/configs/fge.py", LT),
          ("swa_lt100", "experiments/configs/swa.py", LT),
          # control: CBNN's run with every sample weight 1 (its checkpoints combined by α)
          ("checkpoint_ensemble", "experiments/configs/cbnn.py", {"cbnn.max_weight_ratio": 1.0}),
          ("checkpoint_ensemble_lt100", "experiments/configs/cbnn.py", {**LT, "cbnn.max_weight_ratio": 1.0}),
      ],
  }
