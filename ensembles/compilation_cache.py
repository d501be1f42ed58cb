"""JAX's persistent compilation cache: compiled programs written to a folder and read back by the
next process, so a rerun of the same command compiles nothing (the CLI turns it on by default).

The folder is the config's ``compilation_cache_dir`` ('' = off), unless the environment variable
``ENSEMBLES_COMPILATION_CACHE`` says otherwise: a folder, or ``off``. Every program is cached (JAX's
defaults skip programs that compile in under a second: most of ours on CPU). The cache holds XLA
executables keyed by the program, the devices and the compiler flags, so a cached program is the
one the compiler would build again; results do not change.
"""
from __future__ import annotations

import os

import jax

ENV = "ENSEMBLES_COMPILATION_CACHE"


def cache_dir(configured: str) -> str | None:
  """The folder to use: the environment variable's, else ``configured``; None when off."""
  value = os.environ.get(ENV, configured)
  if value.strip().lower() in ("", "off", "0", "none"):
    return None
  return os.path.abspath(os.path.expanduser(value))


def enable(configured: str) -> str | None:
  """Turns the persistent cache on in `cache_dir(configured)` (created if needed); returns it, or
  None when the cache is off."""
  directory = cache_dir(configured)
  if directory is None:
    return None
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory
