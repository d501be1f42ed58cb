"""Members collected from ONE training run: snapshots, CBNN checkpoints and EDST tickets.

The run (one member, leaves [1, ...]) is cut into M segments. At the end of segment k (or, for a
ticket chosen on validation, at any step of segment k) the member is saved as item k with its
metadata: in a folder with the checkpoint fingerprint (a replayed step after a resume overwrites
it), or in memory for a run without a workdir. After training, the M items are loaded back stacked
[M, ...] with their metadata, each checked against its fingerprint.
"""
from __future__ import annotations

import dataclasses
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
  `member_tree`)."""

  directory: str | None
  ends: dict[int, int]
  extra: dict[str, Callable[[train_lib.TrainState], PyTree]] = dataclasses.field(default_factory=dict)
  memory: dict[int, tuple[PyTree, dict]] = dataclasses.field(default_factory=dict)

  def member(self, state: train_lib.TrainState) -> dict:
    return member_tree(state, **self.extra)

  def save(self, state: train_lib.TrainState, index: int, meta: dict) -> None:
    """Saves the state's member as item ``index`` with ``meta`` (JSON-serialisable)."""
    if self.directory is None:
      self.memory[index] = (jax.device_get(self.member(state)), dict(meta))
    else:
      checkpoints.save_member(self.directory, index, self.member(state), meta)

  def meta(self, index: int) -> dict | None:
    """The meta saved with item ``index``, or None when there is none yet."""
    if self.directory is None:
      return self.memory[index][1] if index in self.memory else None
    return checkpoints.member_meta(self.directory, index)

  def load(self, state: train_lib.TrainState) -> tuple[dict, list[dict]]:
    """All saved members stacked [M, ...] (``state``: any state of the run, for the structure) and
    their metas, in index order."""
    if self.directory is None:
      items = [self.memory[k] for k in sorted(self.memory)]
      return members_lib.stack([tree for tree, _ in items]), [meta for _, meta in items]
    return checkpoints.load_members(self.directory, self.member(state))
