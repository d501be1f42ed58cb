"""CBNN's new options on the CNN study's setup, read on validation (issue 35): the study's CBNN (SAMME,
weights capped at 2x their mean), the same run without reweighting (cap 1: a plain checkpoint
ensemble, the control), each checkpoint after a low-lr stretch (`cbnn.segment_decay_fraction` 0.25:
lr x 0.1 over each segment's last quarter; ours), the batch loss normalised by its weights
(`training.weighted_loss = normalized`), and uncapped SAMME shrunk by ν = 0.1 and 0.3
(`cbnn.shrinkage`); on the balanced and the long-tailed (ρ = 100) training set, three seeds. No OoD
or corruption evaluation (not what is chosen here).

  python -m experiments.compare --comparison experiments/comparisons/cbnn_options_cnn_fashion_mnist.py \\
      --workdir runs/cbnn_options
"""
from experiments.comparisons import cnn_fashion_mnist as cnn

QUICK = {"evaluation.corruptions": (), "evaluation.ood_datasets": ()}
VARIANTS = {
    "cbnn": {},
    "cbnn_control": {"cbnn.max_weight_ratio": 1.0},
    "cbnn_segdecay": {"cbnn.segment_decay_fraction": 0.25},
    "cbnn_normalized": {"training.weighted_loss": "normalized"},
    "cbnn_nocap_nu0.1": {"cbnn.max_weight_ratio": 0.0, "cbnn.shrinkage": 0.1},
    "cbnn_nocap_nu0.3": {"cbnn.max_weight_ratio": 0.0, "cbnn.shrinkage": 0.3},
}


def get_comparison():
  runs = [cnn.run(f"{name}{suffix}", "cbnn", {**QUICK, **extra, **overrides})
          for suffix, extra in (("", {}), ("_lt100", cnn.LT)) for name, overrides in VARIANTS.items()]
  return cnn.comparison("cbnn_options", "CBNN's options, read on validation (LeNet 6-16-500)",
                        "CBNN (M = 3) with the CNN study's setup; validation metrics decide.", runs)
