"""Weight averaging (SWA) as pure functions: the running average of members' weights, and the
BatchNorm statistics of averaged weights recomputed from the data.

Shapes: every leaf is stacked over M members [M, ...]; ``count`` [M] is how many weights each
member's average holds.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ensembles import augment as augment_lib
from ensembles import members as members_lib
from ensembles import train as train_lib

PyTree = Any


def running_average(average: PyTree, params: PyTree, count: jax.Array) -> tuple[PyTree, jax.Array]:
  """(average', count + 1) with average' = average + (params - average) / (count + 1): the mean
  of the count + 1 weights seen so far, per member."""
  n = count.astype(jnp.float32) + 1.0

  def update(a, p):
    scale = (1.0 / n).reshape((-1,) + (1,) * (p.ndim - 1))
    return a + (p - a) * scale

  return jax.tree.map(update, average, params), count + 1


def make_batch_moments(model: Any, *, execution: str | members_lib.Execution, mean: np.ndarray, std: np.ndarray,
                       compute_dtype: str = "float32") -> Callable:
  """Returns ``moments(params, model_state, images) -> batch_stats`` [M, ...]: every BatchNorm
  layer's mean and variance over the batch ``images`` [B, ...] in training mode, per member.

  flax updates a running statistic r as r' = μ r + (1 - μ) s with the batch's s. Applied once from
  r = 0 and once from r = 1 this gives r'_0 = (1 - μ) s and r'_1 = μ + (1 - μ) s, so s is read
  without knowing the layer's momentum: μ = r'_1 - r'_0 and s = r'_0 / (1 - μ). Dropout, if the
  model has it, runs with a fixed key."""
  mean, std = jnp.asarray(mean), jnp.asarray(std)
  execution = members_lib.as_execution(execution, model)

  @jax.jit
  def moments(params, model_state, images):
    x = augment_lib.normalize(images, mean, std)

    def one(p, ms, x):
      p, x = train_lib.in_compute_dtype(p, x, compute_dtype)

      def updated(fill):
        start = {**ms, "batch_stats": jax.tree.map(lambda s: jnp.full_like(s, fill), ms["batch_stats"])}
        _, new = model.apply({"params": p, **start}, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)},
                             mutable=["batch_stats"])
        return new["batch_stats"]

      from_zero, from_one = updated(0.0), updated(1.0)
      return jax.tree.map(lambda r0, r1: r0 / (1.0 - (r1 - r0)), from_zero, from_one)

    return execution.map(one, num_shared=1)(params, model_state, x)

  return moments


def recompute_batch_stats(moments: Callable, params: PyTree, model_state: dict, images: Any,
                          batch_size: int) -> dict:
  """``model_state`` with its ``batch_stats`` replaced by the mean over the full batches of
  ``images`` of each batch's moments (`make_batch_moments`), per member: the statistics the
  averaged ``params`` produce on the training data. Without BatchNorm, ``model_state`` as it is."""
  if "batch_stats" not in model_state:
    return model_state
  batches = max(len(images) // batch_size, 1)
  total = None
  for k in range(batches):
    stats = moments(params, model_state, np.asarray(images[k * batch_size:(k + 1) * batch_size]))
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
  return {**model_state, "batch_stats": jax.tree.map(lambda s: s / batches, total)}
