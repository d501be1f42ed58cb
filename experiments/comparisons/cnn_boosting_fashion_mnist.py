"""Checkpoint boosting at CNN scale: CBNN beside the single LeNet and the checkpoint baselines its
paper compares with (snapshot ensemble, Snapshot Boosting, FGE, SWA), all at one model's 10-epoch
budget, and the boosted EDST ensemble (EDST's tickets with CBNN's reweighting, README "Beyond the
papers"), on balanced and long-tailed (ρ = 100) Fashion-MNIST with random crops and flips, three
seeds, and the ablation CBNN without the weight cap. The network:
experiments/comparisons/cnn_fashion_mnist.py.

  python -m experiments.compare --comparison experiments/comparisons/cnn_boosting_fashion_mnist.py \\
      --workdir runs/cnn_study

Report: runs/cnn_study/boosting/report.md. Validation and test sets stay balanced.
"""
from experiments.comparisons import cnn_fashion_mnist as cnn

METHODS = [("single", "single"), ("snapshot_ensemble", "snapshot_ensemble"), ("cbnn", "cbnn"),
           ("snapshot_boosting", "snapshot_boosting"), ("fge", "fge"), ("swa", "swa"), ("boosted_edst", "boosted_edst")]
NO_CAP = {"cbnn.max_weight_ratio": 0.0}
NO_REWEIGHTING = {"cbnn.max_weight_ratio": 1.0}  # every weight capped at the mean: all stay 1


def get_comparison():
  return cnn.comparison(
      "boosting", "Checkpoint ensembles at CNN scale on Fashion-MNIST, balanced and long-tailed "
      "(LeNet 6-16-500, crop + flip, M = 3)",
      "Same budget for every checkpoint method (10 epochs); boosted_edst: the EDST run (6 + 3 x 4 epochs, "
      "S = 0.8). `_lt100` rows train on a long-tailed training set (n_c = n_max·100^(−c/9)) and test on the "
      "balanced test set. `cbnn_nocap`: CBNN without its sample-weight cap (ablation). `checkpoint_ensemble`: "
      "CBNN's run without reweighting (control: its checkpoints, combined by α).",
      [cnn.SINGLE] + [cnn.run(label, method) for label, method in METHODS[1:]]
      + [cnn.run(f"{label}_lt100", method, cnn.LT) for label, method in METHODS]
      # ablation (README): CBNN without the weight cap. The default cap, max(w) <= 2·mean(w), was chosen on
      # the balanced MLP; SAMME's factor for a misclassified image, exp(α), is 27 at a weighted error of
      # 0.25 with K = 10 (α = log 3 + log 9), so the cap decides how far the rare classes are raised
      + [cnn.run("cbnn_nocap", "cbnn", NO_CAP), cnn.run("cbnn_nocap_lt100", "cbnn", {**cnn.LT, **NO_CAP})]
      # control (README): the same checkpoints with every sample weight 1, what reweighting adds
      + [cnn.run("checkpoint_ensemble", "cbnn", {**cnn.QUICK, **NO_REWEIGHTING}),
         cnn.run("checkpoint_ensemble_lt100", "cbnn", {**cnn.QUICK, **cnn.LT, **NO_REWEIGHTING})])
