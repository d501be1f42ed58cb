"""Members collected from ONE training run: snapshots, CBNN checkpoints and EDST tickets.

The run (one member, leaves [1, ...]) is cut into M segments. At the end of segment k (or, for a
ticket chosen on validation, at any step of segment k) the member is saved as item k of a folder
with its metadata and the checkpoint fingerprint; a replayed step after a resume overwrites it.
After training, the M items are loaded back stacked [M, ...] with their metadata, each checked
against its fingerprint.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ensembles import checkpoints
from ensembles import members as members_lib
from ensembles import train as train_lib

PyTree = Any


def segment_ends(total_steps: int, num_segments: int) -> list[int]:
  """Steps at which the M equal segments of a ``total_steps`` run end (the last one at total):
  end_k = round((k + 1) · total / M)."""
  return [int(round((k + 1) * total_steps / num_segments)) for k in range(num_segments)]


def member_tree(state: train_lib.TrainState, **extra: Callable[[train_lib.TrainState], PyTree]) -> dict:
  """What a collected member keeps of the single-member run state: params and model_state
  (BatchNorm statistics) of member 0, plus ``extra`` fields, each read from the state."""
  tree = {"params": members_lib.member(state.params, 0), "model_state": members_lib.member(state.model_state, 0)}
  return {**tree, **{name: read(state) for name, read in extra.items()}}


@dataclasses.dataclass(frozen=True)
class Collection:
  """Item k of ``directory`` is member k; ``ends`` maps the step ending segment k to k.
  ``extra``: fields besides params and model_state (see `member_tree`)."""

  directory: str
  ends: dict[int, int]
  extra: dict[str, Callable[[train_lib.TrainState], PyTree]] = dataclasses.field(default_factory=dict)

  @classmethod
  def at_segment_ends(cls, directory: str, total_steps: int, num_segments: int, **extra) -> "Collection":
    return cls(directory, {end: k for k, end in enumerate(segment_ends(total_steps, num_segments))}, extra)

  def member(self, state: train_lib.TrainState) -> dict:
    return member_tree(state, **self.extra)

  def save(self, state: train_lib.TrainState, index: int, meta: dict) -> None:
    """Saves the state's member as item ``index`` with ``meta`` (JSON-serialisable)."""
    checkpoints.save_member(self.directory, index, self.member(state), meta)

  def load(self, state: train_lib.TrainState) -> tuple[dict, list[dict]]:
    """All saved members stacked [M, ...] (``state``: any state of the run, for the structure) and
    their metas, in index order."""
    return checkpoints.load_members(self.directory, self.member(state))
