"""Import order, as this codebase writes it (`make check`): a module's top-level imports come in
sections, in this order, each section's statements sorted:

  1. ``from __future__ import annotations``
  2. the standard library            (``sys.stdlib_module_names``)
  3. third-party packages            (jax, flax, numpy, absl, ...)
  4. our packages                    (`FIRST_PARTY`)
  5. the tests' own helper modules   (`LOCAL`: conftest, test_*, ...)

Within a section, ``import x`` statements come first, sorted by module, then ``from x import ...``
statements, sorted by module (case-insensitively). Unlike isort this never merges or splits
statements (the library writes one ``from ensembles import x`` per line, the tests often several
names in one); imports inside functions, and those after the first other statement, are left alone. A statement marked ``# noqa: I001``
is exempt (the method registry, whose import order is the registry's order).

  python scripts/check_imports.py FILE ...      # exit status 1 and one line per misplaced import
"""
from __future__ import annotations

import ast
import sys

FIRST_PARTY = ("ensembles", "experiments", "benchmarks", "scripts")
LOCAL = ("conftest", "reads_probe", "test_")
SECTIONS = ("__future__", "standard library", "third-party", "first-party", "test helpers")


def section(module: str) -> int:
  top = module.split(".")[0]
  if top == "__future__":
    return 0
  if top in sys.stdlib_module_names:
    return 1
  if top in FIRST_PARTY:
    return 3
  if top in LOCAL or top.startswith("test_"):
    return 4
  return 2


def sort_key(node: ast.Import | ast.ImportFrom) -> tuple:
  """(section, plain import before from-import, module lowercased)."""
  module = node.names[0].name if isinstance(node, ast.Import) else "." * node.level + (node.module or "")
  return section(module.lstrip(".") or "."), isinstance(node, ast.ImportFrom), module.lower()


def problems(path: str) -> list[str]:
  """One line per top-level import that is out of order in ``path``."""
  with open(path) as f:
    source = f.read()
  lines = source.splitlines()
  out, previous = [], None
  body = ast.parse(source, path).body
  if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
    body = body[1:]  # the docstring
  for node in body:
    if not isinstance(node, (ast.Import, ast.ImportFrom)):
      break  # the leading block only: later imports (after an importorskip, a sys.path entry) are left alone
    if "noqa: I001" in lines[node.lineno - 1] or "I001" in lines[node.lineno - 1].split("noqa:")[-1]:
      continue
    key = sort_key(node)
    if previous is not None and key < previous[0]:
      out.append(f"{path}:{node.lineno}: `{lines[node.lineno - 1].strip()}` ({SECTIONS[key[0]]}) belongs before "
                 f"line {previous[1]} `{lines[previous[1] - 1].strip()}`")
    previous = (key, node.lineno)
  return out


def main(paths: list[str]) -> int:
  found = [p for path in paths for p in problems(path)]
  print("\n".join(found) if found else f"imports in order: {len(paths)} files")
  return 1 if found else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
