"""One live run per workdir: the file WORKDIR/run.lock names the run that holds the folder.

A second run started on a held folder is refused at once (`WorkdirInUseError`, one line naming the
folder, the holder's host and process id and since when). How a holder is known to be alive:

* **Local folders** (also network file systems with POSIX locks): the run holds an exclusive
  `fcntl.flock` on the file for its whole life. The kernel drops it when the process ends, by a
  kill too, so a lock left by a killed run never blocks: the next run finds the file unlocked, says
  that the holder ended without releasing it, and takes it over.
* **Object stores** (gs://...): there are no locks, only conditional writes. The lock object is
  created only if absent (GCS's ``ifGenerationMatch=0``, fsspec's ``mode="create"``), and the holder
  rewrites its ``heartbeat`` every `HEARTBEAT_SECONDS` from a background thread (also while XLA
  compiles). A lock is stale, and taken over with a message, when its holder ran on this host and
  that process is gone (checked by pid and the process's start time, so a reused pid does not
  count), or when its heartbeat is older than `STALE_SECONDS` (a holder on another host).

Multi-host runs take the lock once per run: process 0 takes it and tells the others the outcome
(`acquire_for_run`, one broadcast), so every host is refused together or none is.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid

from ensembles import files
from ensembles.errors import WorkdirInUseError

LOCK_FILE = "run.lock"
HEARTBEAT_SECONDS = 30.0  # how often an object-store lock's holder rewrites its heartbeat
STALE_SECONDS = 180.0  # an object-store lock from another host whose heartbeat is older is stale


def _process_start(pid: int) -> str | None:
  """The start time of process ``pid`` in clock ticks since boot (/proc/PID/stat field 22; None
  where /proc is missing or the process is gone): with the pid it names one process, not a reused
  pid."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except OSError:
    return None
  return stat[stat.rindex(")") + 2:].split()[19]  # fields after the command name, from field 3


def _holder_record(token: str) -> dict:
  now = time.time()
  return {
      "host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()), "token": token,
      "started": now, "heartbeat": now, "command": " ".join(sys.argv)[:500]
  }


def _describe(holder: dict) -> str:
  since = datetime.datetime.fromtimestamp(holder.get("started", 0)).strftime("%Y-%m-%d %H:%M:%S")
  return f"host {holder.get('host', '?')}, process {holder.get('pid', '?')}, since {since}"


def _in_use(workdir: str, holder: dict, extra: str = "") -> WorkdirInUseError:
  return WorkdirInUseError(f"{workdir} is in use by another run ({_describe(holder)}{extra}); wait for it to end "
                           f"or choose another workdir (lock: {files.join(workdir, LOCK_FILE)}).")


def _parse(text: str | bytes) -> dict:
  try:
    holder = json.loads(text)
  except ValueError:
    return {}
  return holder if isinstance(holder, dict) else {}


def holder_is_gone(holder: dict, now: float | None = None, stale_seconds: float = STALE_SECONDS) -> str | None:
  """Why ``holder`` (a lock record) no longer runs, or None while it may: its process on this host
  has ended, or its heartbeat is older than ``stale_seconds`` (a holder on another host)."""
  now = time.time() if now is None else now
  if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
    start = _process_start(holder["pid"])
    if start is None or (holder.get("process_start") is not None and start != holder["process_start"]):
      return f"process {holder['pid']} on this host has ended"
    return None
  age = now - float(holder.get("heartbeat", 0))
  if age > stale_seconds:
    return f"its last heartbeat was {age:.0f} s ago (stale after {stale_seconds:.0f} s)"
  return None


class _LocalLock:
  """The flock on WORKDIR/run.lock (see the module docstring)."""

  def __init__(self, workdir: str):
    import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)
    self.path = files.join(workdir, LOCK_FILE)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _parse(os.pread(fd, 65536, 0))
        os.close(fd)
        raise _in_use(workdir, holder) from None
      try:  # the file may have been released (unlinked) between our open and our lock: lock the current one
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    previous = _parse(os.pread(fd, 65536, 0))
    if previous:
      print(
          f"note: {workdir}: the previous run ({_describe(previous)}) ended without releasing its lock (killed?); "
          "this run takes it over.", file=sys.stderr)
    self.fd = fd
    record = json.dumps(_holder_record(uuid.uuid4().hex)).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)
    os.fsync(fd)

  def release(self) -> None:
    if self.fd is None:
      return
    with contextlib.suppress(FileNotFoundError):
      os.unlink(self.path)  # while still locked: a run that opened it meanwhile re-checks the inode
    os.close(self.fd)
    self.fd = None


class _ObjectStoreLock:
  """The conditional-create lock object with a heartbeat (see the module docstring)."""

  def __init__(self, workdir: str, heartbeat_seconds: float = HEARTBEAT_SECONDS, stale_seconds: float = STALE_SECONDS):
    from etils import epath  # pylint: disable=g-import-not-at-top
    self.path = files.join(workdir, LOCK_FILE)
    self.fs = epath.backend.fsspec_backend.fs(self.path)
    self.record = _holder_record(uuid.uuid4().hex)
    for _ in range(2):  # a stale lock is deleted once, then created again
      try:
        self.fs.pipe_file(self.path, json.dumps(self.record).encode(), mode="create")
        break
      except FileExistsError:
        holder = self._read()
        if holder is None:  # released between our write and our read
          continue
        gone = holder_is_gone(holder, stale_seconds=stale_seconds)
        if gone is None:
          raise _in_use(workdir, holder, f", last heartbeat {time.time() - float(holder.get('heartbeat', 0)):.0f} s "
                        "ago") from None
        print(
            f"note: {workdir}: the previous run's lock ({_describe(holder)}) is stale: {gone}; this run takes "
            "it over.", file=sys.stderr)
        with contextlib.suppress(FileNotFoundError):
          self.fs.rm_file(self.path)
    else:
      raise _in_use(workdir, self._read() or {})
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, args=(heartbeat_seconds,), daemon=True,
                                    name=f"heartbeat {self.path}")
    self._thread.start()

  def _read(self) -> dict | None:
    self.fs.invalidate_cache(self.path)
    try:
      return _parse(self.fs.cat_file(self.path))
    except FileNotFoundError:
      return None

  def _beat(self, seconds: float) -> None:
    while not self._stop.wait(seconds):
      holder = self._read()
      if holder is None or holder.get("token") != self.record["token"]:
        print(
            f"warning: {self.path}: this run's lock was taken over ({_describe(holder or {})}); two runs may now "
            "write this folder.", file=sys.stderr)
        return
      self.record["heartbeat"] = time.time()
      with contextlib.suppress(OSError):  # a failed beat is retried at the next one
        self.fs.pipe_file(self.path, json.dumps(self.record).encode())

  def release(self) -> None:
    if self._stop.is_set():
      return
    self._stop.set()
    self._thread.join()
    holder = self._read()
    if holder is not None and holder.get("token") == self.record["token"]:
      with contextlib.suppress(FileNotFoundError):
        self.fs.rm_file(self.path)


def acquire(workdir: str):
  """Takes the lock of ``workdir`` for this process (the folder is created first); returns an
  object whose ``release()`` gives it back. Raises `WorkdirInUseError` when a live run holds it."""
  files.make_dirs(workdir)
  return _ObjectStoreLock(workdir) if files.is_remote(workdir) else _LocalLock(workdir)


def acquire_for_run(workdir: str):
  """`acquire` once per run: on process 0 of a multi-host run; the other processes learn whether
  it succeeded (one broadcast) and raise the same error when it did not. Returns the lock (None
  on the other processes)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return acquire(workdir)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = acquire(workdir)
    except WorkdirInUseError as e:
      error = e
  ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
  if error is not None:
    raise error
  if not ok:
    holder = {}
    with contextlib.suppress(OSError):
      holder = _parse(files.read_text(files.join(workdir, LOCK_FILE)))
    raise _in_use(workdir, holder, "; refused on process 0")
  return lock


_HELD: dict[str, list] = {}  # folder -> [its lock (None off process 0), nesting depth] in this process


def _leave(key: str) -> None:
  entry = _HELD[key]
  entry[1] -= 1
  if entry[1] == 0:
    del _HELD[key]
    if entry[0] is not None:
      entry[0].release()


@contextlib.contextmanager
def held(*workdirs: str | None):
  """Holds the lock of each folder of ``workdirs`` (None skipped) for the ``with`` block, once per
  run (`acquire_for_run`); released when the block ends, by an error too. Re-entrant within a
  process: a block inside another on the same folder (the CLI around `ensembles.api.fit_config`)
  shares the outer block's lock."""
  with contextlib.ExitStack() as stack:
    for workdir in workdirs:
      if workdir is None:
        continue
      key = files.absolute(workdir)
      if key in _HELD:
        _HELD[key][1] += 1
      else:
        _HELD[key] = [acquire_for_run(workdir), 1]
      stack.callback(_leave, key)
    yield
