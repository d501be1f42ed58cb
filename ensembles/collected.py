"""Members collected from ONE training run: snapshots, CBNN checkpoints and EDST tickets.

The run (one member, leaves [1, ...]) is cut into M segments. At the end of segment k (or, for a
ticket chosen on validation, at any step of segment k) the member is saved as item k with its
metadata: in a folder with the checkpoint fingerprint (a replayed step after a resume overwrites
it), or in memory for a run without a workdir. After training, the M items are loaded back stacked
[M, ...] with their metadata, each checked against its fingerprint.

A run of S seeds as members (`context.Run`) holds one member per seed; every item is saved for each
seed (in ``seed_<seed>`` subfolders), and loading gives the S·M items seed-major.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax

from ensembles import checkpoints
from ensembles import members as members_lib
from ensembles import train as train_lib

PyTree = Any


def segment_ends(total_steps: int, num_segments: int) -> list[int]:
  """Steps at which the M equal segments of a ``total_steps`` run end (the last one at total):
  end_k = round((k + 1) · total / M)."""
  return [int(round((k + 1) * total_steps / num_segments)) for k in range(num_segments)]


def at_segment_ends(total_steps: int, num_segments: int) -> dict[int, int]:
  """{step ending segment k: k} for the M equal segments (`segment_ends`)."""
  return {end: k for k, end in enumerate(segment_ends(total_steps, num_segments))}


def member_tree(state: train_lib.TrainState, **extra: Callable[[train_lib.TrainState], PyTree]) -> dict:
  """What a collected member keeps of the single-member run state: params and model_state
  (BatchNorm statistics) of member 0, plus ``extra`` fields, each read from the state."""
  tree = {"params": members_lib.member(state.params, 0), "model_state": members_lib.member(state.model_state, 0)}
  return {**tree, **{name: read(state) for name, read in extra.items()}}


@dataclasses.dataclass(frozen=True)
class Collection:
  """Item k is member k; ``ends`` maps the step ending segment k to k. ``directory``: where items
  are saved (None: kept in ``memory``). ``extra``: fields besides params and model_state (see
  `member_tree`). ``seeds``: the run's seeds, one member each (items of seed s under
  ``directory/seed_<s>`` when there are several)."""

  directory: str | None
  ends: dict[int, int]
  extra: dict[str, Callable[[train_lib.TrainState], PyTree]] = dataclasses.field(default_factory=dict)
  seeds: tuple[int, ...] = (0,)
  memory: dict[tuple[int, int], tuple[PyTree, dict]] = dataclasses.field(default_factory=dict)

  def _directory(self, s: int) -> str:
    return self.directory if len(self.seeds) == 1 else os.path.join(self.directory, f"seed_{self.seeds[s]}")

  def member(self, state: train_lib.TrainState, s: int = 0) -> dict:
    """What item k keeps of seed s's member (`member_tree` of the state's member s)."""
    return member_tree(jax.tree.map(lambda x: x[s:s + 1], state), **self.extra)

  def save(self, state: train_lib.TrainState, index: int, meta: dict | list[dict]) -> None:
    """Saves every seed's member of the state as item ``index`` with ``meta`` (JSON-serialisable;
    or one per seed)."""
    for s in range(len(self.seeds)):
      self.save_seed(state, index, s, meta[s] if isinstance(meta, (list, tuple)) else meta)

  def save_seed(self, state: train_lib.TrainState, index: int, s: int, meta: dict) -> None:
    """Saves seed s's member of the state as its item ``index`` with ``meta``."""
    if self.directory is None:
      self.memory[(s, index)] = (jax.device_get(self.member(state, s)), dict(meta))
    else:
      checkpoints.save_member(self._directory(s), index, self.member(state, s), meta)

  def meta(self, index: int, s: int = 0) -> dict | None:
    """The meta seed s saved with item ``index``, or None when there is none yet."""
    if self.directory is None:
      return self.memory[(s, index)][1] if (s, index) in self.memory else None
    return checkpoints.member_meta(self._directory(s), index)

  def load(self, state: train_lib.TrainState) -> tuple[dict, list[dict]]:
    """All saved members stacked [S·M, ...] seed-major (``state``: any state of the run, for the
    structure) and their S·M metas, in the same order."""
    trees, metas = [], []
    expected = len(set(self.ends.values()))
    for s in range(len(self.seeds)):
      if self.directory is None:
        items = [self.memory[key] for key in sorted(self.memory) if key[0] == s]
        meta = [m for _, m in items]
        tree = members_lib.stack([t for t, _ in items]) if items else None
      else:
        tree, meta = checkpoints.load_members(self._directory(s), self.member(state))
      if len(meta) != expected:
        raise ValueError(f"Seed {self.seeds[s]} collected {len(meta)} of the run's {expected} members "
                         f"({self.directory or 'in memory'}); a member was never saved (e.g. no ticket "
                         "candidate with a finite validation NLL).")
      trees.append(tree)
      metas += meta
    return (trees[0] if len(trees) == 1 else jax.tree.map(lambda *xs: jax.numpy.concatenate(xs), *trees)), metas
