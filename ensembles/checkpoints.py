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


def save_member(directory: str, index: int, tree: PyTree, meta: dict) -> None:
  """Saves one collected ensemble member (an EDST ticket, a CBNN checkpoint, a snapshot) as item
  ``index`` of ``directory``; all items are kept. An existing item ``index`` (written before a
  resumed run replayed the same step) is replaced."""
  manager = ocp.CheckpointManager(os.path.abspath(directory),
                                  options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True))
  if index in manager.all_steps():
    manager.delete(index)
  save(manager, index, tree, meta)
  manager.wait_until_finished()
  manager.close()


def load_members(directory: str, like: PyTree) -> tuple[PyTree, list[dict]]:
  """All members saved by `save_member` in ``directory``, stacked as one tree with leaves
  [M, ...] (in index order), and their metas. ``like`` is one member's tree."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No saved members in {directory}.")
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f"No saved members in {directory}.")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  trees, metas = [], []
  for step in steps:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    trees.append(restored.state)
    metas.append(dict(restored.meta))
  manager.close()
  return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *trees), metas


def save_ensemble(directory: str, tree: PyTree, meta: dict) -> None:
  """Saves the evaluated ensemble (stacked members [M, ...]) and its ``meta`` as the single item of
  ``directory``, replacing an earlier one (the write is atomic: a crash keeps the old item)."""
  manager = ocp.CheckpointManager(os.path.abspath(directory),
                                  options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
  step = (max(manager.all_steps()) + 1) if manager.all_steps() else 0
  save(manager, step, tree, meta)
  manager.wait_until_finished()
  manager.close()


def _ensemble_manager(directory: str) -> tuple[ocp.CheckpointManager, int]:
  manager = ocp.CheckpointManager(os.path.abspath(directory)) if os.path.isdir(directory) else None
  step = manager.latest_step() if manager else None
  if step is None:
    raise FileNotFoundError(f"No saved ensemble members in {directory}: a finished run writes them there "
                            "(runs trained before this was added have none; train again to get them).")
  return manager, step


def read_ensemble_meta(directory: str) -> dict:
  """The meta saved with the ensemble in ``directory`` (FileNotFoundError when there is none)."""
  manager, step = _ensemble_manager(directory)
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  manager.close()
  return dict(meta)


def load_ensemble(directory: str, like: PyTree) -> PyTree:
  """The stacked members saved by `save_ensemble`, restored into the structure of ``like``."""
  manager, step = _ensemble_manager(directory)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
  manager.close()
  return state
