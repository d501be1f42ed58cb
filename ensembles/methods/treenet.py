"""TreeNet (Lee et al., 2015): M members that share their first layers (the trunk) and own every
later layer (their branches), trained together on the same batches (`ensembles.models.treenet`).

The recipe trains the TreeNet as one model with the configured optimizer and schedule; its loss is
the mean of the members' cross-entropies. Cost (FLOPs, DESIGN §5 rules): the trunk once and each
branch M times per example, forward 1x and training 3x (`treenet.tree_flops`); the trunk is in fact
executed on the M copies of the batch (see the model's docstring), which costs wall time, not FLOPs
of the algorithm. Fields of the ``treenet`` block (`TreeNetOptions`).
"""
from __future__ import annotations

import dataclasses

from ensembles import flops as flops_lib
from ensembles.context import Run
from ensembles.methods.base import Method, Trained, register
from ensembles.methods.member_network import programs, train_member_network
from ensembles.models import treenet
from ensembles.options import integer


@dataclasses.dataclass(frozen=True)
class TreeNetOptions:
  """The ``treenet`` block. Ours: the paper found sharing the lowest layers best, as we read it;
  the default shares the first dense or conv layer."""

  shared_layers: int = integer(1, 1)  # dense/conv layers (in call order) in the shared trunk


def network(model, config, options) -> treenet.TreeNet:
  return treenet.TreeNet(model, config.num_members, options.treenet.shared_layers)


def train(run: Run, options) -> list[Trained]:
  m = run.num_members

  def report(run, members, info):  # M full members per example, then the trunk counted once
    flops = run.flops(m, info["steps"])
    member = flops["forward_flops_dense"]
    tree = treenet.tree_flops(flops_lib.layer_costs(run.model, run.data.image_shape), m)
    reference = flops["train_flops"] / flops["train_x_dense"]
    train_flops = flops["train_flops"] * tree / (m * member)
    flops.update(inference_flops=tree, inference_x_dense=tree / member, train_flops=train_flops,
                 train_x_dense=train_flops / reference, flops_rule="treenet: trunk once, M branches")
    return flops, {"treenet": {"shared_layers": options.treenet.shared_layers}}

  return train_member_network(run, report)


METHOD = register(Method("treenet", train, {"treenet": TreeNetOptions}, defaults={"num_members": 3},
                         network=network, trains_seeds=True,
                         trains_one_network=True, programs=programs))
