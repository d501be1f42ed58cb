"""Peak FLOP/s and memory of accelerator chips: the model FLOPs utilisation (MFU) in the training log,
and whether seeds fit on a device as members (`memory_bytes`).

Vendors' dense peak per chip (no structured sparsity), in FLOP/s, for the compute dtype of the
step: bfloat16, and for float32 the TF32 tensor-core peak on NVIDIA GPUs (XLA's default matmul
precision there). These are datasheet numbers, not measurements; `config.peak_flops_per_device`
overrides them, and a device not listed here (a CPU) gets no MFU.
"""
from __future__ import annotations

import os
from typing import Any

# device_kind substring -> {compute dtype: FLOP/s}; the longest matching key wins
PEAK_FLOPS = {
    "TPU v4": {"bfloat16": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12},   # v5e
    "TPU v5": {"bfloat16": 459e12},        # v5p
    "TPU v6 lite": {"bfloat16": 918e12},   # v6e (Trillium)
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "H100": {"bfloat16": 989e12, "float32": 494e12},  # SXM
    "H200": {"bfloat16": 989e12, "float32": 494e12},
}


def peak_flops(device: Any, compute_dtype: str = "float32", override: float = 0.0) -> float | None:
  """Peak FLOP/s of one ``device`` (its ``device_kind``) for ``compute_dtype``; ``override`` > 0 is
  returned as it is; None when unknown."""
  if override:
    return float(override)
  kind = getattr(device, "device_kind", "")
  matches = [key for key in PEAK_FLOPS if key in kind]
  if not matches:
    return None
  return PEAK_FLOPS[max(matches, key=len)].get(compute_dtype)


def memory_bytes(device: Any) -> int | None:
  """Memory of one ``device`` in bytes: the accelerator's allocator limit (``memory_stats``), or
  for a CPU the machine's physical memory; None when unknown."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  if getattr(device, "platform", "") == "cpu":
    try:
      return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
      return None
  return None
