"""The run's metrics log: one JSON object per line in WORKDIR/metrics.jsonl (and its numbers as
TensorBoard scalars in WORKDIR/tensorboard/), or a list in memory."""
from __future__ import annotations

import json
import numbers
import os

import jax

from ensembles import files
from ensembles import tensorboard


class MetricsLog:
  """Appends records to ``path`` (kept across resumed runs); with ``path`` None keeps them in
  ``records`` (a run without a workdir), marked with ``phase`` when given. With a path and
  ``tensorboard``, every number of a record with a ``step`` is also a TensorBoard scalar (tag: the
  field's name) in the folder ``tensorboard`` beside the file. ``path`` may be a URL (gs://...): the
  file is then rewritten every few seconds, see `files.GrowingFile`."""

  def __init__(self, path: str | None, records: list | None = None, phase: str | None = None,
               tensorboard: bool = False):
    if path is not None:
      path = files.absolute(path)
      files.make_dirs(os.path.dirname(path))
    self.path = path
    self.tensorboard_dir = files.join(os.path.dirname(path), "tensorboard") if path is not None and tensorboard else None
    self._events = None
    self.records: list[dict] = [] if records is None else records
    self.phase = phase

  def tagged(self, phase: str) -> "MetricsLog":
    """An in-memory log writing to the same records, each marked with ``phase`` (e.g. a subnetwork
    run's "parent" and "children", whose steps restart)."""
    return MetricsLog(None, self.records, phase)

  def write(self, record: dict) -> None:
    if jax.process_index() != 0:  # one writer across hosts
      return
    if self.path is None:
      self.records.append(record if self.phase is None else {"phase": self.phase, **record})
      return
    files.growing(self.path).append(json.dumps(record) + "\n")
    if self.tensorboard_dir is not None and "step" in record:
      scalars = {k: v for k, v in record.items() if k not in ("step", "epoch") and isinstance(v, numbers.Real)
                 and not isinstance(v, bool)}
      if scalars:
        self._events = self._events or tensorboard.EventWriter(self.tensorboard_dir)
        self._events.scalars(int(record["step"]), scalars)
