"""The curated mutations of `scripts/mutation_test.py` stay applicable: every entry's text occurs
exactly once in its file, the mutated file still parses, and the tests it names exist. A refactor
that moves mutated code fails here, in the default suite, not at the next manual `make mutation-test`."""
from __future__ import annotations

import ast
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from mutations import MUTATIONS  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_each_mutation_applies_once_and_names_existing_tests(mutation):
  text = open(os.path.join(ROOT, mutation.file)).read()
  assert text.count(mutation.before) == 1, f"update scripts/mutations.py: {mutation.before!r} is not once in {mutation.file}"
  mutated = text.replace(mutation.before, mutation.after)
  assert mutated != text
  ast.parse(mutated)  # a mutation is a plausible bug, not a syntax error
  for test in mutation.tests:
    path, _, name = test.partition("::")
    assert os.path.isfile(os.path.join(ROOT, path)), test
    if name:
      assert re.search(rf"^def {re.escape(name)}\(", open(os.path.join(ROOT, path)).read(), re.M), test


def test_mutation_names_are_unique():
  names = [m.name for m in MUTATIONS]
  assert len(names) == len(set(names))
