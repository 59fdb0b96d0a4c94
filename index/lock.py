"""The single-writer lock of an index folder: an fcntl file lock across processes, re-entrant within one."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Optional, Type

from ctglip_sdk.errors import IndexStateError

try:  # POSIX only; on other systems the lock degrades to a per-process lock (documented in docs/index.md).
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["WriterLock", "RWLock", "LOCK_NAME"]

log = logging.getLogger(__name__)

LOCK_NAME = "writer.lock"


class WriterLock:
    """Exclusive writer lock on ``DIR/writer.lock``; readers never take it.

    The lock is held by an open file description (``flock``), so the kernel releases it when a writer dies,
    even by ``kill -9``: a crashed ingest never leaves a stale lock behind. Within one process the lock is
    re-entrant for the thread that holds it and excludes other threads.

    Example:
        >>> lock = WriterLock("idx/")          # doctest: +SKIP
        >>> with lock:                          # doctest: +SKIP
        ...     pass  # ingest, score, rebuild or repair
    """

    def __init__(self, folder: "os.PathLike[str] | str", timeout: float = 10.0) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.timeout = timeout
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: Optional[int] = None

    def acquire(self, timeout: Optional[float] = None) -> None:
        """Take the lock, waiting up to ``timeout`` seconds for another writer to finish."""
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        if not self._thread_lock.acquire(timeout=max(wait, 0.0)):
            raise IndexStateError(f"another thread is writing to this index (waited {wait:g} s)", path=self.path.parent)
        if self._depth > 0:
            self._depth += 1
            return
        try:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except PermissionError:
                raise IndexStateError("the index folder is read-only: searching, cohorts and exports work, but "
                                      "ingest, score, rebuild and repair need write access",
                                      path=self.path.parent) from None
            while True:
                try:
                    if fcntl is not None:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = self._holder(fd)
                        os.close(fd)
                        raise IndexStateError(
                            f"another process{holder} is writing to this index (waited {wait:g} s); "
                            "wait for it to finish or stop it", path=self.path.parent) from None
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._fd = fd
            self._depth = 1
        except BaseException:
            self._thread_lock.release()
            raise

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            pid = os.pread(fd, 32, 0).decode().strip()
        except OSError:
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def release(self) -> None:
        """Release one level of the lock; the file lock goes when the outermost level is released."""
        if self._depth <= 0:
            return
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            try:
                if fcntl is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
        self._thread_lock.release()

    @property
    def held(self) -> bool:
        """True while this object holds the lock (in any thread)."""
        return self._depth > 0

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.release()


class RWLock:
    """Many readers or one writer, within a process (FAISS searches run concurrently; adds are exclusive)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()
