"""Estimate of the device memory a run's train step needs: whether S seeds fit as S·M members.

  bytes per device ≈ (2 · state + activations) / devices + training set
    state       = the stacked train state of the run's S·M members (params, optimizer and model
                  state, method state: the shapes of `Run.init_members`), counted twice (the
                  gradients, and the donated state in flight);
    activations = S·M · B · R · Σ_l out_l · 4 bytes · 3, out_l the output elements per example of
                  conv/dense layer l (`flops.layer_costs`), R the rows one example costs a network of
                  several members, 3 the copies a layer's backward pass keeps (pre-activation,
                  normalised, activated);
    training set: held whole on every device (the in-memory input).
A heuristic (ours), not XLA's count; `seeds_fit` keeps it under a fraction of one device's memory.
"""
from __future__ import annotations

import math

import jax
import numpy as np

from ensembles import flops as flops_lib
from ensembles.context import Run
from ensembles.models import multi_member

HEADROOM = 0.8  # the estimate must stay under this fraction of a device's memory


def step_bytes(run: Run) -> float:
  """The estimate above for ``run`` (all its seeds' members), in bytes per device."""
  state = jax.eval_shape(run.init_members)
  state_bytes = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
  costs = flops_lib.layer_costs(run.model, run.data.image_shape)
  outputs = sum(c.macs // max(math.prod(c.kernel_shape[:-1]), 1) for c in costs)
  rows = run.total_members * run.config.training.batch_size * multi_member.rows_per_example(run.model)
  activations = rows * outputs * 4 * 3
  data = getattr(run.data.x_train, "nbytes", 0)
  return (2 * state_bytes + activations) / run.mesh.size + data


def seeds_fit(run: Run) -> tuple[bool, str]:
  """(whether ``run``'s step fits in HEADROOM of one device's memory, the numbers in words)."""
  limit = run.target.memory_bytes()
  need = step_bytes(run)
  words = f"about {need / 2**30:.2f} GiB per device for seeds {list(run.seeds)}"
  if limit is None:
    return True, words + " (device memory unknown)"
  return need <= HEADROOM * limit, words + f" of {limit / 2**30:.1f} GiB"
