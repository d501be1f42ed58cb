"""Method options as frozen dataclasses: every field's default, allowed values and check in one place.

A method's options are one dataclass whose fields are declared with `option(default, allowed, ok)`;
`from_block` reads them from a config block (or keyword fields), refusing unknown fields and every
value ``ok`` rejects with ``ConfigError("config.<block>.<field> must be <allowed>, got <value>.")``.
Checks between a block's fields live in the class's ``check()``; checks across blocks (e.g. EDST's
epoch budget) in the method's ``check(config, options)`` (`methods.base.Method`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import ml_collections

from ensembles.errors import ConfigError, is_int, is_number, require


def option(default: Any, allowed: str, ok: Callable[[Any], bool]) -> Any:
  """A dataclass field with its default, the allowed values in words, and the check ``ok(value)``."""
  return dataclasses.field(default=default, metadata={"allowed": allowed, "ok": ok})


def choice(default: str, choices: tuple[str, ...]) -> Any:
  """An option that takes one of ``choices``."""
  return option(default, f"one of {tuple(choices)}", lambda v: v in choices)


def flag(default: bool) -> Any:
  return option(default, "True or False", lambda v: isinstance(v, bool))


def integer(default: int, minimum: int) -> Any:
  return option(default, f"an integer >= {minimum}", lambda v: is_int(v) and v >= minimum)


def number(default: float, low: float, high: float, closed: str = "[)") -> Any:
  """A number in the interval low..high; ``closed`` says which ends are included ("[)", "(]", ...)."""
  def ok(v):
    return (is_number(v) and (v >= low if closed[0] == "[" else v > low)
            and (v <= high if closed[1] == "]" else v < high))
  return option(default, f"in {closed[0]}{low}, {high}{closed[1]}", ok)


def from_block(cls: type, block: Mapping | None, name: str) -> Any:
  """An instance of the option dataclass ``cls`` from a config ``block`` (missing fields take their
  defaults); ``name`` is the block's name in error messages."""
  values = dict(block or {})
  known = [f.name for f in dataclasses.fields(cls)]
  for key in values:
    if key not in known:
      raise ConfigError(f"config.{name}.{key} is not a field of the {name} block; its fields: {known}.")
  for f in dataclasses.fields(cls):
    value = values.get(f.name, f.default)
    require(f.metadata["ok"](value), f"{name}.{f.name}", f.metadata["allowed"], value)
    values[f.name] = value
  instance = cls(**values)
  if hasattr(instance, "check"):  # rules between the block's fields
    instance.check()
  return instance


def as_block(cls_or_instance: Any) -> ml_collections.ConfigDict:
  """The options (a dataclass or an instance: its values) as a config block."""
  if isinstance(cls_or_instance, type):
    values = {f.name: f.default for f in dataclasses.fields(cls_or_instance)}
  else:
    values = dataclasses.asdict(cls_or_instance)
  return ml_collections.ConfigDict(values)
