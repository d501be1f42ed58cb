"""File calls for a run's folder, local or remote (``gs://bucket/...``, any URL etils epath knows).

Local paths use the os calls; remote ones go through `etils.epath` (for gs://, gcsfs: install
``ensembles[gcs]``). Orbax takes the same paths for the checkpoints (tensorstore writes gs://
directly). Object stores differ from a local disk in two ways that matter here:

* an object is replaced whole by one upload, so `write_atomic` needs no temporary file there;
* nothing can be appended, so a growing file (the metrics log, a TensorBoard event file) is a
  `GrowingFile`: its text is kept in memory and the object is rewritten with all of it at most every
  ``flush_seconds`` (and at every checkpoint and the end of training); a killed process loses at
  most the records since the last rewrite, never the ones written before.
"""
from __future__ import annotations

import importlib
import os
import shutil
import time

from etils import epath

REMOTE_FLUSH_SECONDS = 30.0  # how often a remote growing file is rewritten (see GrowingFile)


def is_remote(path: str | os.PathLike) -> bool:
  """Whether ``path`` is a URL (scheme://...) rather than a local path."""
  return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
  """``path`` made absolute when local; a URL as it is (os.path.abspath would turn gs://b/x into
  ./gs:/b/x)."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def join(path: str | os.PathLike, *parts: str) -> str:
  return os.path.join(os.fspath(path), *parts)  # '/'-joined on POSIX: the same for URLs


def check_client(path: str | os.PathLike) -> None:
  """Raises ImportError naming the package to install when a gs:// ``path`` has no client (epath
  reads gs:// through gcsfs, or tf.io.gfile where TensorFlow is installed)."""
  if not os.fspath(path).startswith("gs://"):
    return
  for module in ("gcsfs", "tensorflow"):
    try:
      importlib.import_module(module)
      return
    except ImportError:
      continue
  raise ImportError(f"{os.fspath(path)}: gs:// paths need gcsfs; install it with pip install -e \".[gcs]\" "
                    "(or pip install gcsfs).")


def make_dirs(path: str | os.PathLike) -> None:
  """Creates folder ``path`` and its parents (object stores: nothing to create)."""
  if is_remote(path):
    check_client(path)
    epath.Path(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def exists(path: str | os.PathLike) -> bool:
  return epath.Path(path).exists() if is_remote(path) else os.path.exists(path)


def is_dir(path: str | os.PathLike) -> bool:
  return epath.Path(path).is_dir() if is_remote(path) else os.path.isdir(path)


def read_text(path: str | os.PathLike) -> str:
  if is_remote(path):
    return epath.Path(path).read_text()
  with open(path) as f:
    return f.read()


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes ``data`` so that readers see the old file or the new one, never half of one: locally
  through a temporary file renamed over ``path``; on an object store by one upload."""
  mode = "wb" if isinstance(data, bytes) else "w"
  if is_remote(path):
    with epath.Path(path).open(mode) as f:
      f.write(data)
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, mode) as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def move(source: str | os.PathLike, target: str | os.PathLike) -> None:
  """Moves file or folder ``source`` to ``target``. On an object store: copies every object, then
  deletes the originals one by one, through the fsspec filesystem that epath uses for the URL (so
  its listings stay current; epath's own rename wants ``target``'s folder to exist, and an object
  store has no empty folders)."""
  if not is_remote(source):
    shutil.move(source, target)
    return
  source, target = os.fspath(source), os.fspath(target)
  fs = epath.backend.fsspec_backend.fs(source)
  fs.copy(source, target, recursive=True)
  for name in fs.find(source):
    fs.rm_file(name)
  fs.invalidate_cache(source)


class GrowingFile:
  """A file that only grows: `append` adds text. Locally every append goes to the disk at once
  (open in append mode). Remotely the whole text (what the object held when opened, plus the
  appends) is kept and the object rewritten by `flush`, which `append` calls when
  ``flush_seconds`` have passed since the last rewrite (the trainer also flushes at every
  checkpoint and when training ends, by an error too). Open one path through `growing` to share
  one writer per path in a process."""

  def __init__(self, path: str, binary: bool = False, flush_seconds: float = REMOTE_FLUSH_SECONDS):
    self.path, self.binary, self.flush_seconds = os.fspath(path), binary, flush_seconds
    self.remote = is_remote(self.path)
    self._parts: list = []
    self._dirty = False
    self._flushed_at = time.monotonic()
    if self.remote:
      target = epath.Path(self.path)
      if target.exists():
        self._parts.append(target.read_bytes() if binary else target.read_text())

  def append(self, data: str | bytes) -> None:
    if not self.remote:
      with open(self.path, "ab" if self.binary else "a") as f:
        f.write(data)
      return
    self._parts.append(data)
    self._dirty = True
    if time.monotonic() - self._flushed_at >= self.flush_seconds:
      self.flush()

  def flush(self) -> None:
    """Rewrites the remote object with all the text (nothing to do locally or when unchanged)."""
    if not self.remote or not self._dirty:
      return
    joined = (b"" if self.binary else "").join(self._parts)
    self._parts = [joined]
    write_atomic(self.path, joined)
    self._dirty = False
    self._flushed_at = time.monotonic()


_OPEN: dict[str, GrowingFile] = {}


def growing(path: str | os.PathLike, binary: bool = False) -> GrowingFile:
  """The process's one `GrowingFile` for ``path`` (two writers of one remote object would each
  rewrite it without the other's text)."""
  path = absolute(path)
  if path not in _OPEN:
    _OPEN[path] = GrowingFile(path, binary)
  return _OPEN[path]


def flush_all() -> None:
  """Flushes every open `GrowingFile` (at each checkpoint)."""
  for f in _OPEN.values():
    f.flush()


def close_all() -> None:
  """Flushes and forgets every open `GrowingFile` (at the end of a run: a later run in the same
  process, e.g. after the folder was deleted, reads the objects afresh)."""
  flush_all()
  _OPEN.clear()
