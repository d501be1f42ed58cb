"""Shared pieces of the sparse recipes (DST, static sparse, EDST): config checks, mask set-up for
M members, the all-members topology update and the FLOPs summary."""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from ensembles import members as members_lib
from ensembles import sparse
from ensembles import train as train_lib
from ensembles.errors import ConfigError, is_int, is_number

_TOPOLOGY_SALT = 0x7090  # folds into a member's rng so topology keys differ from augmentation keys


def validate(config: Any) -> None:
  """Checks the config's ``sparse`` block (fields documented in experiments/configs/dst_ensemble.py)."""
  if "sparse" not in config:
    raise ConfigError(f"method {config.method!r} needs a config.sparse block; start from "
                      "experiments/configs/dst_ensemble.py.")
  s = config.sparse
  if not (is_number(s.sparsity) and 0.0 <= s.sparsity < 1.0):
    raise ConfigError(f"config.sparse.sparsity must be in [0, 1), got {s.sparsity!r}.")
  if s.density_rule not in sparse.DENSITY_RULES:
    raise ConfigError(f"config.sparse.density_rule must be one of {sparse.DENSITY_RULES}, got {s.density_rule!r}.")
  if s.init_rule not in sparse.INIT_RULES:
    raise ConfigError(f"config.sparse.init_rule must be one of {sparse.INIT_RULES}, got {s.init_rule!r}.")
  if s.growth not in sparse.GROWTH_RULES:
    raise ConfigError(f"config.sparse.growth must be one of {sparse.GROWTH_RULES}, got {s.growth!r}.")
  if not (is_int(s.update_every) and s.update_every >= 1):
    raise ConfigError(f"config.sparse.update_every (ΔT) must be an integer >= 1, got {s.update_every!r}.")
  if not (is_number(s.drop_fraction) and 0.0 < s.drop_fraction < 1.0):
    raise ConfigError(f"config.sparse.drop_fraction must be in (0, 1), got {s.drop_fraction!r}.")
  if s.drop_schedule not in ("constant", "cosine"):
    raise ConfigError(f"config.sparse.drop_schedule must be 'constant' or 'cosine', got {s.drop_schedule!r}.")
  if not (is_number(s.drop_fraction_min) and 0.0 <= s.drop_fraction_min <= s.drop_fraction):
    raise ConfigError(f"config.sparse.drop_fraction_min must be in [0, drop_fraction], got {s.drop_fraction_min!r}.")
  if not (is_number(s.stop_fraction) and 0.0 < s.stop_fraction <= 1.0):
    raise ConfigError(f"config.sparse.stop_fraction must be in (0, 1], got {s.stop_fraction!r}.")
  if not isinstance(s.allow_regrow, bool):
    raise ConfigError(f"config.sparse.allow_regrow must be True or False, got {s.allow_regrow!r}.")


def init_member_masks(state: train_lib.TrainState, inner: optax.GradientTransformation,
                      plan: sparse.SparsityPlan, rule: str, key: jax.Array) -> train_lib.TrainState:
  """Gives each member its own exact-count masks (keys split from ``key``), masks its params and
  puts the masks in its `sparse.masked` optimizer state."""

  def one(k, params):
    return sparse.init_sparse(k, params, inner, plan, rule)

  m = members_lib.num_members(state.params)
  params, opt_state = jax.jit(jax.vmap(one))(jax.random.split(key, m), state.params)
  return state.replace(params=params, opt_state=opt_state)


def make_topology_update(model, inner: optax.GradientTransformation, plan: sparse.SparsityPlan, cfg: Any, *,
                         execution: str | members_lib.Execution, mean, std, crop_padding: int = 0, flip: bool = False,
                         max_drop_fraction: float | None = None) -> Callable:
  """Returns jitted ``update(state, images, labels, idx, drop_fraction) -> state`` for all members:
  one `sparse.update_topology` per member, with the gradient of its batch ``idx`` for RigL growth,
  executed as the run's train step is (``execution``: mode, mesh, conv flag).
  drop_fraction may not exceed ``max_drop_fraction`` (default cfg.drop_fraction, the schedule's max)."""
  max_drop_fraction = cfg.drop_fraction if max_drop_fraction is None else max_drop_fraction
  gradients = train_lib.make_member_gradients(model, mean=mean, std=std, crop_padding=crop_padding, flip=flip)
  execution = members_lib.as_execution(execution, model)

  def member_update(state, idx, images, labels, drop_fraction):
    key = jax.random.fold_in(jax.random.fold_in(state.rng, _TOPOLOGY_SALT), state.step)
    grads = gradients(state, idx, images, labels)[0] if cfg.growth == "gradient" else None
    params, opt_state = sparse.update_topology(key, state.params, state.opt_state, grads, drop_fraction, plan,
                                               inner, cfg.growth, cfg.allow_regrow, max_drop_fraction)
    return state.replace(params=params, opt_state=opt_state)

  @functools.partial(jax.jit, donate_argnums=0)
  def update(state, images, labels, idx, drop_fraction):
    state = members_lib.constrain(state, execution.mesh, members_lib.MEMBER_AXIS)
    idx = members_lib.constrain(idx, execution.mesh, members_lib.MEMBER_AXIS, members_lib.DATA_AXIS)
    state = execution.map(member_update, num_shared=3)(state, idx, images, labels, drop_fraction)
    return members_lib.constrain(state, execution.mesh, members_lib.MEMBER_AXIS)

  return update


def update_steps(cfg: Any, total_steps: int) -> list[int]:
  """Steps after which `topology_hook` prunes and grows: multiples of ΔT before the stop fraction."""
  stop = int(cfg.stop_fraction * total_steps)
  return [done for done in range(cfg.update_every, total_steps + 1, cfg.update_every) if done < stop]


def topology_hook(update: Callable, cfg: Any, total_steps: int) -> Callable:
  """Trainer hook: prune-and-grow every cfg.update_every steps until cfg.stop_fraction of training,
  with the drop fraction of `sparse.drop_fraction_schedule` at that step."""
  stop = int(cfg.stop_fraction * total_steps)
  schedule = sparse.drop_fraction_schedule(cfg.drop_fraction, cfg.drop_schedule, stop, cfg.drop_fraction_min)
  steps = set(update_steps(cfg, total_steps))  # the same steps the FLOPs count charges

  def hook(state, done, images, labels, idx):
    if done not in steps:
      return state
    return update(state, images, labels, idx, jnp.float32(schedule(done)))

  return hook
