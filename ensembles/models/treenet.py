"""TreeNet (Lee et al., 2015) around any Flax model: the first layers shared by all members (the
trunk), every later layer one copy per member (the branches), trained together.

`TreeNet(inner, M, shared_layers)` repeats the input batch M times (member-major rows [M·B, ...])
and runs ``inner`` under a Flax method interceptor (`branch_layers`) that counts the dense and conv
calls in call order: the first ``shared_layers`` (and the BatchNorm layers called before the next
one) run as they are, with one set of weights; every later dense, conv or BatchNorm layer reads its
input as [M, B, ...] and runs M copies of itself (a lifted `nn.vmap`, weights and BatchNorm
statistics [M, ...] under the layer's ``branches`` scope). Member m is the network made of the trunk
and branch m; the loss is the sum of the members' losses (``member_loss = "sum"``): each branch gets
the gradient it would get trained alone, and the trunk the sum of what every branch asks of it.

Other layers with weights of their own (e.g. `nn.LayerNorm`, `nn.DenseGeneral`) after the trunk are
refused with an error naming them, since they would be shared by every branch.

Ours: which layers are shared (``shared_layers``, a count of the model's dense and conv layers in
call order); the trunk is executed on the M copies of the batch (M times the trunk's arithmetic
per step, where a split model would run it once): that keeps every model whole, residual
shortcuts that cross the split included. The FLOPs count the trunk once (`tree_flops`), as TreeNet.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import flax.linen as nn

from ensembles.models import layers, multi_member

BRANCHED_TYPES = (nn.Dense, nn.Conv, layers.Conv)
BRANCHES = "branches"


def branch_layers(num_members: int, shared_layers: int, calls: list, next_fun, args, kwargs, context):
  """Flax method interceptor: the first ``shared_layers`` dense/conv calls (and BatchNorm calls
  before the next one) run unchanged; later ones run M per-member copies on rows [M·B, ...].
  ``calls`` counts the dense/conv calls of this forward pass."""
  module = context.module
  if context.method_name != "__call__" or module.name == BRANCHES:
    return next_fun(*args, **kwargs)
  if not isinstance(module, (*BRANCHED_TYPES, nn.BatchNorm)):
    out = next_fun(*args, **kwargs)
    if len(calls) > shared_layers and _own_weights(module):
      raise ValueError(f"TreeNet: layer {'/'.join(module.scope.path)} ({type(module).__name__}) has weights of its own "
                       "after the shared trunk and would be shared by every branch; TreeNet branches nn.Dense, "
                       "nn.Conv, layers.Conv and nn.BatchNorm layers (raise treenet.shared_layers past it).")
    return out
  if isinstance(module, BRANCHED_TYPES):
    calls.append(module.name)
  if len(calls) <= shared_layers:
    return next_fun(*args, **kwargs)
  x, rest, m = args[0], args[1:], num_members
  fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.init and f.name not in ("parent", "name")}
  layer = type(module)(**fields, name=BRANCHES)  # the layer's copy, vmapped over M below

  def call(layer, xm):  # the call's other arguments (e.g. use_running_average) as the caller gave them
    return layer(xm, *rest, **kwargs)

  y = nn.vmap(call, variable_axes={"params": 0, "batch_stats": 0}, split_rngs={"params": True}, in_axes=0,
              out_axes=0, axis_size=m)(layer, x.reshape(m, -1, *x.shape[1:]))
  return y.reshape(-1, *y.shape[2:])


def _own_weights(module: nn.Module) -> bool:
  """Whether ``module`` holds parameters itself (not only in its submodules)."""
  return any(not isinstance(v, Mapping) for v in module.variables.get("params", {}).values())


class TreeNet(multi_member.RepeatedBatchNetwork):
  """``inner`` (any Flax model called as ``inner(x, train=...)`` -> logits [B, K]) as a TreeNet of
  ``num_members`` branches after its first ``shared_layers`` dense/conv layers: inputs [B, ...] ->
  logits [B, M, K]. Every member trains on the whole batch (`training_batch`)."""

  shared_layers: int = 1

  member_loss = "sum"

  @nn.nowrap
  def interceptor(self, calls: list):
    return functools.partial(branch_layers, self.num_members, self.shared_layers, calls)

  @nn.nowrap
  def check_layers(self, calls: list) -> None:
    if len(calls) <= self.shared_layers:
      raise ValueError(f"treenet.shared_layers ({self.shared_layers}) must be below the model's {len(calls)} dense and "
                       "conv layers, so that every member has a branch.")


def tree_flops(costs: Sequence, num_members: int) -> float:
  """Forward FLOPs per example of the whole TreeNet: the trunk once, each branch layer M times
  (``costs``: `flops.layer_costs` of the TreeNet, one member's layers, branch kernels under
  ``branches``)."""
  return float(sum(c.flops * (num_members if f"['{BRANCHES}']" in c.path else 1) for c in costs))
