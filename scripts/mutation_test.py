"""Mutation check: do the tests catch plausible bugs?

Each mutation in `scripts/mutations.py` is a small edit of one library file (a shared key, swapped
arguments, an off-by-one schedule, a dropped mask or reset, a wrong sign or reduction axis, ...).
This script copies the working tree to a scratch folder, applies the mutations there one at a time
and runs the tests named for each; a mutation is *caught* when those tests fail, and *survives*
when they pass. The working tree is never modified.

  python scripts/mutation_test.py                 # all mutations (what `make mutation-test` runs)
  python scripts/mutation_test.py --only dst,ood  # mutations whose name contains one of these
  python scripts/mutation_test.py --list

Exit status 0 only if every mutation is caught (and the unmutated tests pass first).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from mutations import MUTATIONS, Mutation  # noqa: E402  pylint: disable=g-import-not-at-top


def copy_tree(destination: str) -> None:
  """Copies the tracked and untracked-but-not-ignored files of the working tree."""
  listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                          capture_output=True).stdout.decode().split("\0")
  for path in filter(None, listed):
    source = os.path.join(ROOT, path)
    if os.path.isfile(source):
      os.makedirs(os.path.dirname(os.path.join(destination, path)), exist_ok=True)
      shutil.copy2(source, os.path.join(destination, path))


def apply(scratch: str, mutation: Mutation) -> str:
  """Applies ``mutation`` in ``scratch``; returns the original text of the file (to restore)."""
  path = os.path.join(scratch, mutation.file)
  text = open(path).read()
  count = text.count(mutation.before)
  if count != 1:
    raise SystemExit(f"mutation {mutation.name!r}: the text to replace occurs {count} times in {mutation.file} "
                     f"(must be exactly once); update scripts/mutations.py:\n{mutation.before}")
  with open(path, "w") as f:
    f.write(text.replace(mutation.before, mutation.after))
  return text


def run_tests(scratch: str, tests: tuple[str, ...], timeout: int) -> tuple[int | None, str]:
  """pytest's exit status on ``tests`` inside ``scratch`` (None on timeout) and its last lines."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONDONTWRITEBYTECODE": "1"}
  command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
             "-m", "", *tests]
  try:
    out = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return None, "timeout"
  lines = (out.stdout + out.stderr).strip().splitlines()
  return out.returncode, lines[-1] if lines else ""


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--only", default="", help="comma-separated substrings of mutation names to run")
  parser.add_argument("--list", action="store_true", help="list the mutations and exit")
  parser.add_argument("--timeout", type=int, default=900, help="seconds per mutation's test run")
  args = parser.parse_args()
  chosen = [m for m in MUTATIONS if not args.only or any(s in m.name for s in args.only.split(","))]
  if args.list:
    for m in chosen:
      print(f"{m.name:42s} {m.file:40s} {' '.join(m.tests)}")
    return 0
  if not chosen:
    raise SystemExit(f"no mutation name contains any of {args.only!r}; see --list")

  start = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix="mutation-") as scratch:
    copy_tree(scratch)
    where = subprocess.run([sys.executable, "-c", "import ensembles; print(ensembles.__file__)"], cwd=scratch,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not where.startswith(os.path.realpath(scratch)) and not where.startswith(scratch):
      raise SystemExit(f"the scratch copy imports ensembles from {where}, not from {scratch}")
    baseline = sorted({t for m in chosen for t in m.tests})
    code, last = run_tests(scratch, tuple(baseline), args.timeout * 2)
    if code != 0:
      raise SystemExit(f"the unmutated tests do not pass ({last}); fix them before checking mutations")
    print(f"unmutated: {len(baseline)} test targets pass ({last}) [{time.perf_counter() - start:.0f} s]", flush=True)

    survived, caught = [], 0
    for i, mutation in enumerate(chosen, 1):
      tick = time.perf_counter()
      original = apply(scratch, mutation)
      try:
        code, last = run_tests(scratch, mutation.tests, args.timeout)
      finally:
        with open(os.path.join(scratch, mutation.file), "w") as f:
          f.write(original)
      if code == 1 or code is None:  # tests failed (or hung: also a caught bug, reported as such)
        verdict = "caught" if code == 1 else "caught (timeout)"
        caught += 1
      elif code == 0:
        verdict = "SURVIVED"
        survived.append(mutation)
      else:  # collection or usage error: the mutation itself is broken, not caught by a test
        verdict = f"INVALID (pytest exit {code})"
        survived.append(mutation)
      print(f"[{i:2d}/{len(chosen)}] {verdict:18s} {mutation.name} ({mutation.file}) "
            f"[{time.perf_counter() - tick:.0f} s] {last}", flush=True)
  total = time.perf_counter() - start
  print(f"\n{caught}/{len(chosen)} mutations caught, {len(survived)} survived, {total / 60:.1f} min")
  for m in survived:
    print(f"  survived: {m.name} ({m.file}): tests {' '.join(m.tests)}")
  return 0 if not survived else 1


if __name__ == "__main__":
  sys.exit(main())
