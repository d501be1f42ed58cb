"""Ex uno plures at CNN scale: subnetwork ensembles (weight and unit granularity) beside the single
LeNet, the deep ensemble, MC dropout, BatchEnsemble and MIMO (M = 3), on Fashion-MNIST with random
crops and flips, three seeds. The network and budgets: experiments/comparisons/cnn_fashion_mnist.py.

  python -m experiments.compare --comparison experiments/comparisons/cnn_subnetworks_fashion_mnist.py \\
      --workdir runs/cnn_study

Report: runs/cnn_study/subnetworks/report.md. The rows it shares with the FreeTickets comparison are
the same runs (one workdir).
"""
from experiments.comparisons import cnn_fashion_mnist as cnn


def get_comparison():
  return cnn.comparison(
      "subnetworks", "Subnetwork ensembles at CNN scale on Fashion-MNIST (LeNet 6-16-500, crop + flip, M = 3)",
      "Subnetwork ensembles: parent 5 epochs, children 5 epochs (our recipe); both granularities (weights; "
      "channels and classifier units) keep the input and output layers whole in every child. Ablations: "
      "`_split` partitions every layer; `_pf30` a 3-epoch parent and 7-epoch children; `_children10` "
      "a 5-epoch parent and 10-epoch children (15 epochs in all). "
      "MC dropout: dropout 0.2 after the classifier layer, 10 test-time passes.",
      [cnn.SINGLE, cnn.DEEP_ENSEMBLE,
       cnn.run("subnetwork_weight", "subnetwork_ensemble"),
       cnn.run("subnetwork_unit", "subnetwork_ensemble", {"subnetwork.granularity": "unit"}),
       cnn.MC_DROPOUT, cnn.BATCH_ENSEMBLE, cnn.MIMO,
       # ablations (README), weight level: every layer partitioned (the default before issue 35); the
       # parent's share of the budget; children trained twice as long (a larger budget)
       cnn.run("subnetwork_weight_split", "subnetwork_ensemble", {**cnn.QUICK, "subnetwork.share_input_output": False}),
       cnn.run("subnetwork_weight_pf30", "subnetwork_ensemble", {**cnn.QUICK, "subnetwork.parent_fraction": 0.3}),
       cnn.run("subnetwork_weight_children10", "subnetwork_ensemble",
               {**cnn.QUICK, "training.epochs": 15, "subnetwork.parent_fraction": 1 / 3,
                "subnetwork.reference_epochs": 10})])  # FLOPs x the single model's 10 epochs
