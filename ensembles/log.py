"""The run's metrics log: one JSON object per line in WORKDIR/metrics.jsonl, or a list in memory."""
from __future__ import annotations

import json
import os

import jax


class MetricsLog:
  """Appends records to ``path`` (kept across resumed runs); with ``path`` None keeps them in
  ``records`` (a run without a workdir), marked with ``phase`` when given."""

  def __init__(self, path: str | None, records: list | None = None, phase: str | None = None):
    if path is not None:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.path = path
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
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
