"""FreeTickets on Fashion-MNIST (MLP 784-512-512-10, CPU scale): single dense model, deep ensemble,
static sparse, DST and EDST ensembles (M = 3, S = 0.8), and the efficient ensembles the paper
compares them with (MC dropout, TreeNet, BatchEnsemble, MIMO; M = 3), three seeds.

  python -m experiments.compare --comparison experiments/comparisons/freetickets_fashion_mnist.py \
      --workdir runs/compare_freetickets

About 12 minutes on a 2-core CPU.
"""


# MIMO at input repetition ρ = 0.5, batch repetition r = 2 in the studies (issue 35; the library's
# defaults, ρ = 0 and r = 1, give each member a third of the network with independent inputs)
MIMO_STUDY = {"mimo.input_repetition": 0.5, "mimo.batch_repetitions": 2}


def get_comparison():
  return {
      "title": "FreeTickets and efficient-ensemble baselines on Fashion-MNIST (MLP, M = 3, S = 0.8)",
      "description": ("Every run uses the configs in experiments/configs with the overrides listed here; "
                      "training FLOPs are a multiple of one dense MLP trained for 10 epochs."),
      "seeds": [0, 1, 2],
      "runs": [
          ("single", "experiments/configs/single.py", {}),
          ("deep_ensemble", "experiments/configs/deep_ensemble.py", {"num_members": 3}),
          ("static_sparse_ensemble", "experiments/configs/static_sparse_ensemble.py", {}),
          ("dst_ensemble", "experiments/configs/dst_ensemble.py", {}),
          ("edst_ensemble", "experiments/configs/edst_ensemble.py", {}),
          # the paper's efficient-ensemble baselines, each at its own default recipe and M = 3
          ("mc_dropout", "experiments/configs/mc_dropout.py", {}),
          ("treenet", "experiments/configs/treenet.py", {}),
          ("batch_ensemble", "experiments/configs/batch_ensemble.py", {"num_members": 3}),
          ("mimo", "experiments/configs/mimo.py", MIMO_STUDY),
          # ablations of our EDST choices: best-on-validation tickets; the schedule before them
          # (one drop-fraction decay over the whole run, updates up to each ticket)
          ("edst_best_val", "experiments/configs/edst_ensemble.py", {"edst.ticket": "best_val"}),
          ("edst_global_nostop", "experiments/configs/edst_ensemble.py",
           {"edst.drop_schedule": "global", "edst.refine_stop_fraction": 1.0}),
      ],
  }
