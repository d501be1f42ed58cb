"""EDST's exploration lr on the CNN study's setup, chosen on validation (issue 35): the official 0.1,
the study's lr for every other method (``edst.exploration_lr = 0``: training.lr = 0.05), and 0.1 after
one epoch of linear warm-up; each on the balanced and the long-tailed (ρ = 100) training set, three
seeds. The choice reads the validation split (5,000 images held out of the training split, balanced),
never the test set. No OoD or corruption evaluation (not what is chosen here).

  python -m experiments.compare --comparison experiments/comparisons/edst_exploration_lr_cnn_fashion_mnist.py \\
      --workdir runs/edst_exploration_lr
"""
from experiments.comparisons import cnn_fashion_mnist as cnn

QUICK = {"evaluation.corruptions": (), "evaluation.ood_datasets": ()}
# edst.warmup_epochs (1 by default since this study chose it) is set explicitly in each row
SETTINGS = {"lr0.1": {"edst.warmup_epochs": 0.0}, "lr_training": {"edst.exploration_lr": 0.0, "edst.warmup_epochs": 0.0},
            "lr0.1_warmup1": {"edst.warmup_epochs": 1.0}}


def get_comparison():
  runs = []
  for data, extra in (("", {}), ("_lt100", cnn.LT)):
    for name, overrides in SETTINGS.items():
      runs.append(cnn.run(f"edst_{name}{data}", "edst_ensemble", {**QUICK, **extra, **overrides}))
  return cnn.comparison("edst_exploration_lr", "EDST's exploration lr, chosen on validation (LeNet 6-16-500)",
                        "EDST (M = 3, S = 0.8) with the CNN study's setup; validation metrics decide.", runs)
