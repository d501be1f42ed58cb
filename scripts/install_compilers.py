"""Installs the TPU and GPU compilers that pre-flight needs, pinned to the installed jax, into a
folder of their own (not the virtual environment), for the tests:

  python scripts/install_compilers.py .venv/compilers

libtpu (the version jax's ``tpu`` extra pins), the CUDA 12 plugin of the same version as jax with
its PJRT library, and NVIDIA's ptxas and libdevice (``nvidia-cuda-nvcc-cu12``), which compiling for
a GPU calls. Kept out of the environment on purpose: with libtpu or the CUDA plugin importable,
every JAX process on a machine without that hardware prints warnings at start-up. The pre-flight
tests put the folder on PYTHONPATH for their own subprocesses only. A user who pre-flights installs
the extras instead: ``pip install -e ".[tpu]"`` or ``".[cuda12]"``.
"""
from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys


def pinned(extra: str, package: str) -> str:
  """The requirement jax's metadata gives ``package`` under ``extra`` (e.g. 'libtpu==0.0.42.*')."""
  for requirement in importlib.metadata.requires("jax") or []:
    name, _, marker = requirement.partition(";")
    if re.match(rf"{re.escape(package)}\b", name.strip()) and f'extra == "{extra}"' in marker:
      return re.sub(r"\[.*?\]", "", name.strip()).replace(" ", "")
  raise SystemExit(f"jax {importlib.metadata.version('jax')} declares no {package} for its {extra!r} extra.")


def main(target: str) -> None:
  version = importlib.metadata.version("jax")
  requirements = [pinned("tpu", "libtpu"), f"jax-cuda12-plugin=={version}", f"jax-cuda12-pjrt=={version}",
                  "nvidia-cuda-nvcc-cu12"]
  print(f"Installing {', '.join(requirements)} into {target} (for pre-flight tests) ...", flush=True)
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, *requirements],
                 check=True)


if __name__ == "__main__":
  main(sys.argv[1])
