"""FreeTickets at CNN scale: single dense LeNet, deep ensemble, static sparse, DST and EDST ensembles
(M = 3, S = 0.8) and the efficient ensembles the paper compares them with (MC dropout, TreeNet,
BatchEnsemble, MIMO), on Fashion-MNIST with random crops and flips, three seeds. The network and
budgets: experiments/comparisons/cnn_fashion_mnist.py.

  python -m experiments.compare --comparison experiments/comparisons/cnn_freetickets_fashion_mnist.py \\
      --workdir runs/cnn_study

Report: runs/cnn_study/freetickets/report.md.
"""
from experiments.comparisons import cnn_fashion_mnist as cnn


def get_comparison():
  return cnn.comparison(
      "freetickets", "FreeTickets at CNN scale on Fashion-MNIST (LeNet 6-16-500, crop + flip, M = 3, S = 0.8)",
      "Every run uses the configs in experiments/configs with the CNN setup of "
      "experiments/comparisons/cnn_fashion_mnist.py; training FLOPs are a multiple of one dense LeNet "
      "trained for 10 epochs.",
      [cnn.SINGLE, cnn.DEEP_ENSEMBLE,
       cnn.run("static_sparse_ensemble", "static_sparse_ensemble"),
       cnn.run("dst_ensemble", "dst_ensemble"),
       cnn.run("edst_ensemble", "edst_ensemble"),
       cnn.MC_DROPOUT,
       # TreeNet: the two convolutions are the shared trunk, the classifier layers the M branches (our choice,
       # for this CPU: branches from conv2 make conv2 a vmapped, i.e. grouped, convolution, and a first attempt
       # ran at 310 ms per step of three seeds against the single model's 40 ms; README). One epoch of lr
       # warm-up, as for BatchEnsemble: without it seed 1 died at step 50 (loss stuck at ln 10, README)
       cnn.run("treenet", "treenet", {"treenet.shared_layers": 2, "training.warmup_epochs": 1.0}),
       cnn.BATCH_ENSEMBLE, cnn.MIMO,
       # ablation (README): MIMO at the library's defaults, ρ = 0 and r = 1 (the study's first setting)
       cnn.run("mimo_r1", "mimo", cnn.QUICK),
       # ablation (README): EDST with room to prune. At S = 0.8, ERK leaves conv2 at 37% density and the
       # classifier at 16.5%; at S = 0.5 both convolutions stay dense and the classifier keeps 47%
       cnn.run("edst_s50", "edst_ensemble", {"sparse.sparsity": 0.5})])
