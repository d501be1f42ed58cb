"""TensorBoard event files written directly: scalars, no TensorFlow and no writer library.

An event file is a sequence of TFRecords (uint64 length, masked CRC-32C of the length, the bytes,
masked CRC-32C of the bytes), each holding a serialized `Event` protocol buffer: the first one
``file_version = "brain.Event:2"``, then one per logged step with ``Summary.value`` entries
(tag, simple_value). The few protobuf fields needed are encoded here by hand (field numbers from
TensorBoard's event.proto and summary.proto), which avoids importing a writer library (about a
second of start-up for tensorboardX). tests/test_log.py decodes the files with tensorboardX's protos.
"""
from __future__ import annotations

import os
import socket
import struct
import time

from ensembles import files


def _crc32c_table() -> list[int]:
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli polynomial, reflected
    table.append(c)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
  return _varint(number << 3 | wire_type)


def _bytes_field(number: int, payload: bytes) -> bytes:
  return _field(number, 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, scalars: dict[str, float] | None = None,
          file_version: str | None = None) -> bytes:
  """A serialized Event: wall_time (1, double), step (2, int64), file_version (3, string),
  summary (5, Summary) with one Value (tag 1, simple_value 2 as float) per scalar."""
  out = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(step)
  if file_version is not None:
    out += _bytes_field(3, file_version.encode())
  if scalars:
    values = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", value))
                      for tag, value in scalars.items())
    out += _bytes_field(5, values)
  return out


def record(data: bytes) -> bytes:
  """``data`` in TFRecord framing."""
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


class EventWriter:
  """Appends scalar events to a new event file in ``directory`` (one file per process start, as
  TensorBoard expects; a resumed run adds a file and TensorBoard merges them by step). In a remote
  ``directory`` the file is rewritten every few seconds (`files.GrowingFile`); TensorBoard reads
  the grown file on from where it stopped."""

  def __init__(self, directory: str):
    files.make_dirs(directory)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.ensembles"
    self.file = files.growing(files.join(directory, name), binary=True)
    self.path = self.file.path
    self._write(event(time.time(), file_version="brain.Event:2"))

  def _write(self, data: bytes) -> None:
    self.file.append(record(data))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if values:
      self._write(event(time.time(), int(step), {k: float(v) for k, v in values.items()}))
