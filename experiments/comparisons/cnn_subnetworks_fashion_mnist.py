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
      "Subnetwork ensembles: parent 5 epochs, children 5 epochs (our recipe); unit granularity (channels "
      "and classifier units) shares the input and output layers, weight granularity partitions every layer. "
      "MC dropout: dropout 0.2 after the classifier layer, 10 test-time passes.",
      [cnn.SINGLE, cnn.DEEP_ENSEMBLE,
       cnn.run("subnetwork_weight", "subnetwork_ensemble"),
       cnn.run("subnetwork_unit", "subnetwork_ensemble",
               {"subnetwork.granularity": "unit", "subnetwork.share_input_output": True}),
       cnn.MC_DROPOUT, cnn.BATCH_ENSEMBLE, cnn.MIMO])
