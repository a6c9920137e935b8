"""One writer per run directory: an exclusive lock on ``RUN/writer.lock``.

Every process that changes a run (``alray loop``, a resume, ``alray labels import``,
``alray online queue``, a sweep's trial) holds the lock from opening the run until it is
done; a second one is refused with the holder named, instead of interleaving writes
(checkpoints of one pruned by the other, label rows of committed steps lost). Readers (the
online service's poller, reports) take no lock and change nothing.

Why ``fcntl.flock`` on a file rather than a file that exists-or-not: the kernel drops
the lock when the holding process ends, however it ends (SIGKILL, out of memory, power
cut), so a lock left by a dead process never blocks a run and needs no timeout. The file
also records its holder (pid, host, start time, JSON) for the messages; a holder that
ended without releasing leaves that record behind, which is how a taken-over stale lock is
recognised and reported. A clean release empties the record.

Within one process, writers of one run share the lock (a CLI command that opens the run
twice, tests); it is released when the last ``RunDir`` holding it is closed or dropped.
A child made by ``fork`` does not inherit it: it must take the lock itself, and is
refused while its parent holds it. The lock works where ``flock`` does: local
filesystems, and NFS on Linux (emulated with byte-range locks, which are shared between
clients).
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import weakref
from datetime import datetime, timezone
from pathlib import Path

from alray.errors import StateError

LOCK_NAME = "writer.lock"
log = logging.getLogger(__name__)

_held: dict[tuple[int, str], weakref.ref] = {}  # (pid, lock path) -> RunLock
_registry_lock = threading.Lock()


class RunLock:
    """The exclusive lock of one run directory, held by this process."""

    def __init__(self, fd: int, path: Path, holder: dict):
        self.fd, self.path, self.holder = fd, path, holder
        self._finalizer = weakref.finalize(self, _release, fd, holder["pid"])

    @classmethod
    def acquire(cls, run_path: str | os.PathLike) -> "RunLock":
        """This process's lock on ``run_path`` (shared if it already holds one); a
        ``StateError`` naming the holder when another live process holds it."""
        path = Path(run_path) / LOCK_NAME
        key = (os.getpid(), os.path.realpath(path))
        with _registry_lock:
            for dead in [k for k, ref in _held.items() if ref() is None]:
                del _held[dead]
            found = _held.get(key)
            lock = found() if found is not None else None
            if lock is None or not lock.held:
                lock = cls._take(path, Path(run_path))
                _held[key] = weakref.ref(lock)
            return lock

    @classmethod
    def _take(cls, path: Path, run_path: Path) -> "RunLock":
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateError(f"{path}: cannot open the run's lock file: {exc.strerror}"
                             ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateError(f"{path}: cannot lock the run: {exc.strerror}") from None
            holder = read_holder(run_path)
            who = describe(holder) if holder else "another process (starting up)"
            raise StateError(f"{run_path}: the run is in use by {who}; wait for it to "
                             "finish or stop it (one process at a time writes a run)"
                             ) from None
        stale = _read(fd)
        if stale:
            log.warning("%s: took over the run's lock left by %s, which ended without "
                        "releasing it", run_path, describe(stale))
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        os.fsync(fd)
        return cls(fd, path, holder)

    def moved_to(self, run_path: str | os.PathLike) -> None:
        """The run directory was renamed (``RunDir.create`` locks the run while it is
        built aside): the lock, on the same file, is found under the new name."""
        with _registry_lock:
            for key, ref in list(_held.items()):
                if ref() is self:
                    del _held[key]
            self.path = Path(run_path) / LOCK_NAME
            _held[(os.getpid(), os.path.realpath(self.path))] = weakref.ref(self)

    @property
    def held(self) -> bool:
        return self._finalizer.alive and self.holder["pid"] == os.getpid()

    def release(self) -> None:
        """Empty the holder record and unlock, for every ``RunDir`` of this process
        sharing it (dropping the last of them does the same)."""
        self._finalizer()


def _release(fd: int, owner: int) -> None:
    try:
        if os.getpid() == owner:  # not in a forked child: the record is the parent's
            os.ftruncate(fd, 0)  # a clean end: nothing stale for the next holder
    except OSError:
        pass
    finally:
        os.close(fd)  # closing the last descriptor of the open file drops the flock


def _read(fd: int) -> dict | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
    except ValueError:
        return {"pid": "?", "host": "?", "started": "?"}  # cut short by a crash
    return data if isinstance(data, dict) else None


def read_holder(run_path: str | os.PathLike) -> dict | None:
    """What the lock file of ``run_path`` says about its holder (None: free or unknown).
    Only the flock says whether that holder still holds it."""
    try:
        fd = os.open(Path(run_path) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read(fd)
    finally:
        os.close(fd)


def describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
            f"(since {holder.get('started', '?')})")


__all__ = ["LOCK_NAME", "RunLock", "describe", "read_holder"]
