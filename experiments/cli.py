"""Command-line config: ``--config FILE`` and ``--config.a.b=value`` overrides, with one-line errors.

Rules (applied in this order, before any work):
  * ``--config`` must name an existing config file defining ``get_config()``;
  * ``--config.model.name=NAME`` replaces the model block by NAME's fields and their defaults
    (`models.model_fields`), so every registered model's fields can be set on the command line,
    e.g. ``--config.model.name=lenet --config.model.features='(6,16)'``;
  * every other override must name an existing field; values are Python literals (``0.1``,
    ``'(6,16)'``, ``True``, ``()``) or plain strings (``cifar10``), and must have the field's type
    (ints are accepted for float fields, lists become tuples).
Mistakes raise `CliError` with a single line that names the field, the block it was looked up in,
the valid fields and the closest match.
"""
from __future__ import annotations

import ast
import difflib
import glob
import importlib.util
import os
from typing import Any, Sequence

import ml_collections

from ensembles import defaults

PREFIX = "--config."


class CliError(ValueError):
  """A command-line mistake, explained in one line."""


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """(the other arguments, [(dotted field, raw value)]) from ``--config.a.b=value`` and
  ``--config.a.b value`` arguments."""
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(PREFIX):
      field, eq, value = arg[len(PREFIX):].partition("=")
      if not eq:
        if i + 1 >= len(argv):
          raise CliError(f"{arg} needs a value: {arg}=VALUE.")
        value, i = argv[i + 1], i + 1
      overrides.append((field, value))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of the Python file at ``path``."""
  if not os.path.isfile(path):
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
    shipped = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.py"))
                     if not p.endswith("__init__.py"))
    where = "experiments/configs" if os.path.samefile(os.path.dirname(os.path.dirname(folder)), ".") else folder
    raise CliError(f"--config: no config file {path!r}; the shipped ones are {where}/"
                   f"{{{', '.join(shipped)}}}.")
  spec = importlib.util.spec_from_file_location("_cli_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise CliError(f"--config: {path} defines no get_config() function.")
  return module.get_config()


def parse_value(raw: str) -> Any:
  """A Python literal, or the raw string when it is not one."""
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def _kind(value: Any) -> str:
  name = type(value).__name__
  return ("an " if name[0] in "aeiou" else "a ") + name


def _coerce(field: str, old: Any, new: Any) -> Any:
  if isinstance(new, list):
    new = tuple(new)
  if old is None or new is None:
    return new
  if isinstance(old, bool) != isinstance(new, bool):
    raise CliError(f"config.{field} must be True or False like its default, got {new!r}."
                   if isinstance(old, bool) else f"config.{field} must be {_kind(old)} like its "
                   f"default ({old!r}), got {new!r}.")
  if isinstance(old, float) and isinstance(new, int):
    return float(new)
  if isinstance(old, tuple) and not isinstance(new, tuple):
    new = (new,)
  if not isinstance(new, type(old)):
    raise CliError(f"config.{field} must be {_kind(old)} like its default ({old!r}), got {new!r}.")
  return new


def _node(config: ml_collections.ConfigDict, field: str) -> tuple[ml_collections.ConfigDict, str]:
  """The block holding ``field`` (dotted) and its last name; unknown names are refused, naming the
  block they were looked up in, its valid fields and the closest match."""
  names = field.split(".")
  node, where = config, "config"
  for depth, name in enumerate(names):
    if not isinstance(node, ml_collections.ConfigDict):
      raise CliError(f"config.{field}: {where} is a value, not a block.")
    if name not in node:
      valid = sorted(node.keys())
      close = difflib.get_close_matches(name, valid, n=1)
      hint = f"; did you mean {close[0]!r}?" if close else "."
      raise CliError(f"config.{field}: no field {name!r} in {where}; valid fields: {', '.join(valid)}{hint}")
    if depth == len(names) - 1:
      return node, name
    node, where = node[name], f"{where}.{name}"
  raise CliError("empty --config. field")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str]]) -> ml_collections.ConfigDict:
  """``config`` with the command-line overrides applied (see the module docstring)."""
  config = config.copy_and_resolve_references()
  names = [value for field, value in overrides if field == "model.name"]
  if names:
    try:
      defaults.replace_model(config, parse_value(names[-1]))
    except ValueError as err:
      raise CliError(str(err)) from err
  for field, raw in overrides:
    if field == "model.name":
      continue
    node, last = _node(config, field)
    value = parse_value(raw)
    if isinstance(node[last], ml_collections.ConfigDict):
      raise CliError(f"config.{field} is a block; set its fields (config.{field}.NAME=VALUE).")
    try:
      node[last] = _coerce(field, node[last], value)
    except TypeError as err:
      raise CliError(f"config.{field}: {err}") from err
  return config
