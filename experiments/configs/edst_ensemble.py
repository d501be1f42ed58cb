"""EDST Ensemble (FreeTickets), scaled to Fashion-MNIST on CPU: one sparse MLP (S = 0.8) yields
M = 3 tickets.

  python -m experiments.train --config experiments/configs/edst_ensemble.py --workdir runs/edst

Official CIFAR schedule: 150 exploration + 3 x 100 refinement epochs (450) against 250 for a single
dense model. Scaled by the same ratios to our 10-epoch single-model budget: 6 + 3 x 4 = 18 epochs
(reference_epochs = 10 for the FLOPs multiple). Exploration lr 0.1 constant; refinement lr 0.01,
x0.1 at mid-phase; global exploration q = 0.8 (official values). DST updates as in dst_ensemble.py.
"""
import ml_collections

from experiments.configs import dst_ensemble


def get_config():
  c = dst_ensemble.get_config()
  c.method = "edst_ensemble"
  c.num_members = 3                      # M tickets
  c.edst = ml_collections.ConfigDict()
  c.edst.exploration_epochs = 6          # t_ex
  c.edst.refinement_epochs = 4           # t_re, per ticket
  c.edst.exploration_lr = 0.1
  c.edst.refine_lr = 0.01
  c.edst.refine_decay = 0.1              # refine lr multiplier from mid-phase
  c.edst.global_drop_fraction = 0.8      # q: drop fraction of the global exploration
  c.edst.exploration_growth = "random"   # our choice: growth rule of the global exploration
  c.edst.reference_epochs = 10           # the single dense model's epochs, for train FLOPs x dense
  c.edst.drop_schedule = "per_phase"     # our choice: per_phase (drop schedule restarts each phase) | global
  c.edst.refine_stop_fraction = 0.5      # our choice (validation, README): regular updates in each refinement
                                         #   phase's first half only
  c.edst.ticket = "final"                # final (phase's last state) | best_val (lowest validation NLL)
  c.training.epochs = c.edst.exploration_epochs + c.num_members * c.edst.refinement_epochs
  c.training.lr_schedule = "constant"    # unused: EDST builds its own phase schedule from c.edst
  return c
