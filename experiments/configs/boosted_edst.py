"""Boosted EDST (ours, beyond the papers): the EDST run of edst_ensemble.py (one sparse MLP, S = 0.8,
6 + 3 x 4 epochs) with CBNN's sample reweighting at each ticket, tickets combined by their α.

  python -m experiments.train --config experiments/configs/boosted_edst.py --workdir runs/boosted_edst

Long-tailed variant: add --config.dataset.imbalance_ratio=100.
"""
from ensembles.defaults import method_config


def get_config():
  return method_config("boosted_edst")  # the method's defaults and option blocks (documented in the library)
