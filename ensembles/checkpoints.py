"""Orbax checkpoints of the run state (all members) with metadata, saved atomically and verified.

Orbax writes each step into a temporary folder and renames it when complete, so a crash (even
SIGKILL) during a save leaves the previous checkpoints intact and the partial one is never listed.
Each checkpoint's meta also holds a fingerprint of the state (CRC32 of every leaf's bytes);
`restore_latest` checks it, and a checkpoint that cannot be read or does not match is moved to
``<dir>_corrupt/`` with a message, and the next older one is tried: never loaded silently.
"""
from __future__ import annotations

import sys
import time
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ensembles import files
from ensembles.errors import CorruptCheckpointError

PyTree = Any


def make_manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """A manager over ``directory`` (created if needed) keeping the last ``max_to_keep`` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(files.absolute(directory), options=options)


def fingerprint(state: PyTree) -> str | None:
  """CRC32 over every leaf's shape, dtype and bytes, in tree order (hex); None when some leaf is
  not fully addressable from this process (multi-host arrays: Orbax's own checks apply)."""
  leaves = jax.tree.leaves(state)
  if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in leaves):
    return None
  crc = 0
  for x in leaves:
    x = np.ascontiguousarray(np.asarray(x))
    crc = zlib.crc32(f"{x.shape}{x.dtype}".encode(), crc)
    crc = zlib.crc32(x.tobytes(), crc)
  return f"{crc:08x}"


def save(manager: ocp.CheckpointManager, step: int, state: PyTree, meta: dict) -> None:
  """Saves ``state`` (any pytree of arrays) and a JSON-serialisable ``meta`` dict (plus the
  state's `fingerprint`) at ``step``."""
  meta = {**meta, "fingerprint": fingerprint(state)}
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)), force=True)


def _restore_verified(manager: ocp.CheckpointManager, step: int, abstract: PyTree) -> tuple[PyTree, dict]:
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  meta = dict(restored.meta)
  expected = meta.get("fingerprint")
  if expected is not None:
    found = fingerprint(restored.state)
    if found is not None and found != expected:
      raise CorruptCheckpointError(f"fingerprint {found} does not match the saved {expected}")
  return restored.state, meta


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves step ``step``'s folder to ``<directory>_corrupt/`` (out of Orbax's view, kept for
  inspection) and returns where it went."""
  directory = str(manager.directory)
  source = files.join(directory, str(step))
  target_dir = directory.rstrip("/") + "_corrupt"
  files.make_dirs(target_dir)
  target = files.join(target_dir, f"{step}-{int(time.time())}")
  files.move(source, target)
  manager.reload()
  return target


def restore_latest(manager: ocp.CheckpointManager, like: PyTree) -> tuple[PyTree, dict] | None:
  """(state, meta) of the newest complete and intact checkpoint, restored into the structure (and
  shardings) of ``like``; None when there is none. Unreadable or mismatching checkpoints are set
  aside with a message on stderr, and older ones are tried."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return _restore_verified(manager, step, abstract)
    except Exception as err:  # pylint: disable=broad-except  (any failure means: do not use it)
      reason = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
      if jax.process_index() == 0:
        target = _set_aside(manager, step)
        print(f"Checkpoint step {step} in {manager.directory} is unreadable or corrupted ({reason}); "
              f"moved to {target}, trying an older one.", file=sys.stderr)
      else:
        manager.reload()
  return None


def save_member(directory: str, index: int, tree: PyTree, meta: dict) -> None:
  """Saves one collected ensemble member (an EDST ticket, a CBNN checkpoint, a snapshot) as item
  ``index`` of ``directory``; all items are kept. An existing item ``index`` (written before a
  resumed run replayed the same step) is replaced."""
  manager = ocp.CheckpointManager(files.absolute(directory),
                                  options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True))
  if index in manager.all_steps():
    manager.delete(index)
  save(manager, index, tree, meta)
  manager.wait_until_finished()
  manager.close()


def member_meta(directory: str, index: int) -> dict | None:
  """The meta saved with item ``index`` by `save_member`, or None when there is no such item."""
  if not files.is_dir(directory):
    return None
  manager = ocp.CheckpointManager(files.absolute(directory))
  try:
    if index not in manager.all_steps():
      return None
    return dict(manager.restore(index, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
  finally:
    manager.close()


def load_members(directory: str, like: PyTree) -> tuple[PyTree, list[dict]]:
  """All members saved by `save_member` in ``directory``, stacked as one tree with leaves
  [M, ...] (in index order), and their metas. ``like`` is one member's tree. Each member is checked
  against the fingerprint saved with it (CorruptCheckpointError naming the member otherwise)."""
  if not files.is_dir(directory):
    raise FileNotFoundError(f"No saved members in {directory}.")
  manager = ocp.CheckpointManager(files.absolute(directory))
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f"No saved members in {directory}.")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  trees, metas = [], []
  for step in steps:
    try:
      tree, meta = _restore_verified(manager, step, abstract)
    except CorruptCheckpointError as err:
      raise CorruptCheckpointError(f"Saved member {step} in {directory}: {err}; it cannot be used (delete "
                                   "the run's folder and train again).") from err
    trees.append(tree)
    metas.append(meta)
  manager.close()
  return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *trees), metas


def save_ensemble(directory: str, tree: PyTree, meta: dict) -> None:
  """Saves the evaluated ensemble (stacked members [M, ...]) and its ``meta`` as the single item of
  ``directory``, replacing an earlier one (the write is atomic: a crash keeps the old item)."""
  manager = ocp.CheckpointManager(files.absolute(directory),
                                  options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
  step = (max(manager.all_steps()) + 1) if manager.all_steps() else 0
  save(manager, step, tree, meta)
  manager.wait_until_finished()
  manager.close()


def _ensemble_manager(directory: str) -> tuple[ocp.CheckpointManager, int]:
  manager = ocp.CheckpointManager(files.absolute(directory)) if files.is_dir(directory) else None
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
