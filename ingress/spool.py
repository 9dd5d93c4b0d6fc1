"""The ingress's local journal that holds payloads while Redis cannot take them (``status`` counts it too).

Each ingress process appends to a file of its own (``<start>-<host>-<pid>.spool``), fsyncing before the
answer goes out, so several processes never interleave writes.  Records are length-prefixed pickles of
``Payload`` dicts with a CRC, so a record torn by a crash is detected and dropped: it was never answered.
Draining moves whole files, oldest first: a file is deleted only after every payload in it is on the queue.
A process drains its own file and any file whose owner process is gone (a lock on the file says so).
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from shared.errors import SpoolError
from shared.types import Payload

logger = logging.getLogger(__name__)

_HEADER = struct.Struct(">II")  # length, crc32


class Spool:
    """An append-only, fsynced journal in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._file: int | None = None
        self._path: Path | None = None
        self._count = 0

    def _open(self) -> int:
        if self._file is None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                # creation time first, so that sorting names drains older files first
                name = f"{time.time_ns()}-{socket.gethostname()}-{os.getpid()}.spool"
                self._path = self.directory / name
                self._file = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                self._file = None
                raise SpoolError(f"cannot open a spool file in {self.directory}: {exc}") from exc
        return self._file

    def append(self, payloads: list[Payload]) -> None:
        """Write ``payloads`` and fsync; raises ``SpoolError`` when the disk cannot take them."""
        data = memoryview(b"".join(_record(p) for p in payloads))
        fd = self._open()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:  # a short write (disk full, file size limit) must not pass for a stored record
                written = os.write(fd, data)
                data = data[written:]
            os.fsync(fd)
        except OSError as exc:
            try:  # leave no torn record behind: it was never answered, and later records must stay readable
                os.ftruncate(fd, start)
            except OSError:
                logger.error("cannot truncate spool file %s after a failed write", self._path)
            raise SpoolError(f"cannot write to spool file {self._path}: {exc}") from exc
        self._count += len(payloads)

    @property
    def backlog(self) -> int:
        """Payloads this process spooled and has not drained yet."""
        return self._count

    def writable(self) -> bool:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            return os.access(self.directory, os.W_OK)
        except OSError:
            return False

    def drain(self, enqueue: Callable[[list[Payload], str], object], chunk: int = 200) -> int:
        """Hand every spooled payload to ``enqueue(payloads, chunk_id)`` in arrival order; return how many.

        ``enqueue`` raising stops the drain with the rest kept on disk (it is tried again later).  Progress
        is recorded after each chunk (``<file>.done`` holds the byte offset reached), and each chunk has an
        id (file and offset) that stays the same when a drain that stopped half-way, or a process killed
        mid-drain, hands the chunk over again: ``enqueue`` uses it to put each chunk on the queue once.
        """
        moved = 0
        self.close()
        for path in sorted(self.directory.glob("*.spool")):
            fd = os.open(path, os.O_RDWR)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # another live process owns it
                progress = path.with_suffix(".done")
                start = _done_offset(progress)
                batch: list[Payload] = []
                for payload, end in _read(path, start):
                    batch.append(payload)
                    if len(batch) >= chunk:
                        enqueue(batch, f"{path.name}:{start}")
                        _record_progress(progress, end)
                        moved += len(batch)
                        batch, start = [], end
                if batch:
                    enqueue(batch, f"{path.name}:{start}")
                    moved += len(batch)
                path.unlink()
                progress.unlink(missing_ok=True)
            finally:
                os.close(fd)
        self._count = 0
        if moved:
            logger.info("drained %d spooled payloads onto the queue", moved)
        return moved

    def pending_files(self) -> int:
        try:
            return sum(1 for _ in self.directory.glob("*.spool"))
        except OSError:
            return 0

    def close(self) -> None:
        if self._file is not None:
            os.close(self._file)
            self._file = None


def _record(payload: Payload) -> bytes:
    data = pickle.dumps(dict(payload), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data), zlib.crc32(data)) + data


def _done_offset(progress: Path) -> int:
    try:
        return int(progress.read_text() or 0)
    except (OSError, ValueError):
        return 0


def _record_progress(progress: Path, offset: int) -> None:
    tmp = progress.with_suffix(".done-tmp")
    tmp.write_text(str(offset))
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    tmp.replace(progress)


def _read(path: Path, offset: int = 0) -> Iterator[tuple[Payload, int]]:
    """Each payload from ``offset`` on, with the offset just past it."""
    blob = path.read_bytes()
    while offset + _HEADER.size <= len(blob):
        length, crc = _HEADER.unpack_from(blob, offset)
        data = blob[offset + _HEADER.size : offset + _HEADER.size + length]
        if len(data) < length or zlib.crc32(data) != crc:
            logger.warning("spool file %s ends in a torn record at byte %d (never answered); dropped", path, offset)
            return
        offset += _HEADER.size + length
        yield pickle.loads(data), offset  # our own file, written by this program


def count_records(directory: Path) -> int:
    """Payloads waiting in the spool files of ``directory`` (all processes'), less what drains recorded as done."""
    total = 0
    try:
        paths = sorted(directory.glob("*.spool"))
    except OSError:
        return 0
    for path in paths:
        try:
            total += sum(1 for _ in _read(path, _done_offset(path.with_suffix(".done"))))
        except OSError:
            continue  # drained and deleted meanwhile
    return total
