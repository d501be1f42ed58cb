"""Timing helper shared by the benchmarks: best of several calls, robust to a noisy machine."""
from __future__ import annotations

import time
from typing import Callable


def best_time(fn: Callable[[], object], min_time: float = 1.0) -> float:
  """Minimum seconds of one call of ``fn()`` (which must block until done), after a warm-up call
  that compiles. Calls repeat until ``min_time`` has passed and at least 3 were made, except that a
  call slower than ``min_time`` is measured once."""
  fn()
  times: list[float] = []
  while not times or (sum(times) < min_time or len(times) < 3) and times[0] < min_time:
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)
