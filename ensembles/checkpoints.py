"""Orbax checkpoints of the run state (all members) with metadata, saved atomically.

Orbax writes each step into a temporary folder and renames it when complete, so a crash during a
save leaves the previous checkpoints intact; `latest_complete` only ever returns finished steps.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any


def make_manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """A manager over ``directory`` (created if needed) keeping the last ``max_to_keep`` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: PyTree, meta: dict) -> None:
  """Saves ``state`` (any pytree of arrays) and a JSON-serialisable ``meta`` dict at ``step``."""
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)), force=True)


def restore_latest(manager: ocp.CheckpointManager, like: PyTree) -> tuple[PyTree, dict] | None:
  """(state, meta) of the newest complete checkpoint, restored into the structure of ``like``;
  None when there is none."""
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  return restored.state, dict(restored.meta)
