"""Tests the lowest versions setup.cfg declares: a virtual environment with every dependency at its
lower bound (``name>=X`` pinned to ``name==X`` as a pip constraint), then a representative part of
the test suite in it. Used by `make test-min-versions` and the slow test
tests/test_dependencies.py; the default suite runs on the newest versions `make install` resolves.

  python scripts/check_min_versions.py [--venv .venv-min] [pytest arguments ...]

Needs PyPI (the first run downloads the old wheels; later runs reuse the environment while
setup.cfg is unchanged).
"""
from __future__ import annotations

import argparse
import configparser
import hashlib
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what the lowest versions must pass: the library's core (sparse masks and updates, boosting,
# metrics, FLOPs), training and resume, every method through `ensembles.fit`, the CLI, checkpoints
TESTS = [
    "tests/test_sparse.py", "tests/test_boosting.py", "tests/test_metrics.py", "tests/test_flops.py",
    "tests/test_trainer.py", "tests/test_api.py", "tests/test_members.py", "tests/test_workdir_lock.py"
]


def requirements(setup_cfg: str = os.path.join(ROOT, "setup.cfg")) -> list[str]:
  """setup.cfg's install_requires, one requirement string each."""
  parser = configparser.ConfigParser()
  parser.read(setup_cfg)
  return [line.strip() for line in parser["options"]["install_requires"].splitlines() if line.strip()]


def lowest(requirement: str) -> str | None:
  """``name==X`` for a requirement with a lower bound ``>=X`` (None without one)."""
  m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)\s*.*?>=\s*([0-9][^,;\s]*)", requirement)
  if not m:
    return None
  name = re.sub(r"\[.*\]", "", m.group(1))  # extras are not part of a constraint
  return f"{name}=={m.group(2)}"


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--venv", default=os.path.join(ROOT, ".venv-min"))
  args, pytest_args = parser.parse_known_args(argv)
  pins = [p for p in map(lowest, requirements()) if p]
  stamp = hashlib.sha256("\n".join(pins).encode()).hexdigest()[:16]
  python = os.path.join(args.venv, "bin", "python")
  marker = os.path.join(args.venv, f".installed-{stamp}")
  if not os.path.exists(marker):
    subprocess.run([sys.executable, "-m", "venv", "--clear", args.venv], check=True)
    constraints = os.path.join(args.venv, "constraints.txt")
    with open(constraints, "w") as f:
      f.write("\n".join(pins) + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]", "-c", constraints], check=True)
    open(marker, "w").close()
  installed = subprocess.run([python, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
  names = {p.split("==")[0].lower().replace("_", "-") for p in pins}
  print("Lowest declared versions:",
        ", ".join(line for line in installed.splitlines() if line.split("==")[0].lower().replace("_", "-") in names))
  return subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(pytest_args or TESTS)],
                        cwd=ROOT).returncode


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
