"""Stored vectors: an append-only float16 record file keyed by id, plus the atomic file helpers of the index."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Callable, Iterable, Optional, Tuple

import numpy as np

from ctglip_sdk.errors import IndexStateError

__all__ = ["VectorStore", "atomic_write", "fsync_dir", "file_checksum", "unit_rows"]

log = logging.getLogger(__name__)

_MAGIC = b"CTGLIPV1"
_HEADER = 64  # magic, dim, record size, reserved: room to grow without breaking old readers


def fsync_dir(folder: Path) -> None:
    """fsync a folder so that a rename inside it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)``: temp file in the same folder, fsync, ``os.replace``, fsync folder.

    A crash at any moment leaves either the old file or the new one, never a torn file.

    Example:
        >>> atomic_write(Path("x.bin"), lambda p: p.write_bytes(b"data"))  # doctest: +SKIP
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def file_checksum(path: Path) -> str:
    """CRC32 of a file (detects torn or swapped files; not a security hash)."""
    crc = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            crc = zlib.crc32(chunk, crc)
    return f"crc32:{crc:08x}"


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit norm (zero rows stay zero).

    The norm is taken in float64: in float32 a row of 1e20 values overflowed to an infinite norm (stored as an
    all-zero vector) and one of 1e-24 values underflowed to zero.
    """
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-300)).astype(np.float32)


class VectorStore:
    """Append-only file of ``(int64 id, float16[dim])`` records: the raw vectors FAISS is derived from.

    Records are appended in increasing id order and fsynced before the SQL rows that reference them are
    committed. A crash can therefore leave (a) a partial trailing record and (b) whole records whose ids SQL
    never committed, always at the tail; ``open_for_write`` truncates both. Records of organs deleted from SQL
    (a series re-ingested after its files changed) stay in the file until ``compact``; readers look ids up
    and never use the position.

    Example:
        >>> vs = VectorStore.create(Path("idx/vectors.f16"), dim=4)      # doctest: +SKIP
        >>> vs.append(np.array([1, 2]), np.eye(2, 4, dtype=np.float32))  # doctest: +SKIP
    """

    def __init__(self, path: Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = int(dim)
        self.dtype = np.dtype([("id", "<i8"), ("v", "<f2", (self.dim,))])

    # -- files ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, dim: int) -> "VectorStore":
        """Create an empty record file (atomically, so a crash never leaves a header-less file)."""
        store = cls(path, dim)
        header = _MAGIC + struct.pack("<II", store.dim, store.dtype.itemsize)
        atomic_write(store.path, lambda p: p.write_bytes(header.ljust(_HEADER, b"\0")))
        return store

    @classmethod
    def open(cls, path: Path, dim: int) -> "VectorStore":
        """Open an existing file, checking its header against the index's dimension."""
        path = Path(path)
        if not path.exists():
            raise IndexStateError("stored vectors file is missing; run `ctglip verify --repair` "
                                  "(organs without vectors are re-ingested)", path=path)
        with open(path, "rb") as fh:
            head = fh.read(_HEADER)
        if len(head) < 16 or head[:8] != _MAGIC:
            raise IndexStateError("not a ctglip vector file (bad header)", path=path)
        fdim, recsize = struct.unpack("<II", head[8:16])
        store = cls(path, dim)
        if fdim != store.dim or recsize != store.dtype.itemsize:
            raise IndexStateError(f"vector file has dimension {fdim}, the index manifest says {dim}", path=path)
        return store

    @property
    def n_records(self) -> int:
        """Whole records in the file (a partial trailing record is not counted)."""
        return max(0, (self.path.stat().st_size - _HEADER) // self.dtype.itemsize)

    def _records(self) -> np.ndarray:
        # One open file for both the size and the map: a compaction (ArchiveIndex.remove) may replace the path
        # between a stat and a second open, and a map longer than the new file fails.
        with open(self.path, "rb") as fh:
            n = max(0, (os.fstat(fh.fileno()).st_size - _HEADER) // self.dtype.itemsize)
            if n == 0:
                return np.zeros(0, dtype=self.dtype)
            return np.memmap(fh, dtype=self.dtype, mode="r", offset=_HEADER, shape=(n,))

    def _records_valid(self) -> np.ndarray:
        """The records up to the first id that does not increase.

        Appends are fsynced before SQL commits, so what follows such an id was never committed: the tail of a
        write torn by a power loss (zeros or garbage). It is ignored here and truncated by the next writer.
        """
        rec = self._records()
        if rec.size < 2:
            return rec
        ids = np.asarray(rec["id"])
        bad = np.flatnonzero(np.diff(ids) <= 0)
        if bad.size:
            log.debug("ignoring %d stored vector record(s) after a non-increasing id", rec.size - bad[0] - 1)
            return rec[: bad[0] + 1]
        return rec

    def read(self, live: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Return ``(ids, float16 vectors)`` in id order, restricted to ``live`` ids when given."""
        rec = self._records_valid()
        ids = np.asarray(rec["id"])
        if live is None:
            return ids.copy(), rec["v"]
        keep = np.isin(ids, live, assume_unique=True)
        return ids[keep], rec["v"][keep]

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """float32 vectors for ``ids`` (all must be stored); raises IndexStateError for a missing one."""
        rec = self._records_valid()
        stored = np.asarray(rec["id"])
        ids = np.asarray(ids, dtype=np.int64)
        if stored.size == 0:
            pos, ok = np.zeros(ids.shape, np.int64), np.zeros(ids.shape, bool)
        else:
            pos = np.minimum(np.searchsorted(stored, ids), stored.size - 1)
            ok = stored[pos] == ids
        if not np.all(ok):
            raise IndexStateError(f"{int((~ok).sum())} vector(s) missing from the stored vectors; run "
                                  "`ctglip verify --repair`", path=self.path)
        return np.asarray(rec["v"][pos], dtype=np.float32)

    def max_id(self) -> int:
        """Largest stored id (−1 when empty)."""
        rec = self._records_valid()
        return int(rec["id"][-1]) if rec.size else -1

    # -- writing (the caller holds the writer lock) ------------------------------------------------------
    def truncate_uncommitted(self, next_id: int) -> int:
        """Drop a partial trailing record and every record with ``id >= next_id`` (written, never committed).

        Returns the number of whole records dropped.
        """
        size = self.path.stat().st_size
        n = self.n_records
        valid = self._records_valid()
        keep = int(np.searchsorted(np.asarray(valid["id"]), next_id, side="left")) if valid.size else 0
        new_size = _HEADER + keep * self.dtype.itemsize
        if new_size != size:
            with open(self.path, "r+b") as fh:
                fh.truncate(new_size)
                fh.flush()
                os.fsync(fh.fileno())
            log.info("dropped %d uncommitted vector record(s) from the tail of %s", n - keep, self.path.name)
        return n - keep

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Append records (ids increasing and above every stored id) and fsync before returning."""
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors)
        if vectors.shape != (ids.size, self.dim):
            raise IndexStateError(f"expected vectors of shape ({ids.size}, {self.dim}), got {vectors.shape}",
                                  path=self.path)
        if ids.size == 0:
            return
        if np.any(np.diff(ids) <= 0) or ids[0] <= self.max_id():
            raise IndexStateError("vector ids must increase and follow the stored ones", path=self.path)
        rec = np.empty(ids.size, dtype=self.dtype)
        rec["id"] = ids
        rec["v"] = vectors.astype(np.float16)
        with open(self.path, "ab") as fh:
            fh.write(rec.tobytes())
            fh.flush()
            os.fsync(fh.fileno())

    def compact(self, live: Iterable[int]) -> int:
        """Rewrite the file with only ``live`` ids (atomically); returns the number of records dropped."""
        total = self.n_records
        rec = self._records_valid()
        ids = np.asarray(rec["id"])
        live_arr = np.unique(np.fromiter(live, dtype=np.int64))
        # Keep the last copy of a duplicated id: it is the one written after the earlier copy was abandoned.
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        last = np.ones(sorted_ids.size, bool)
        last[:-1] = sorted_ids[1:] != sorted_ids[:-1]
        order = order[last]
        order = order[np.isin(ids[order], live_arr)]
        header = _MAGIC + struct.pack("<II", self.dim, self.dtype.itemsize)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                fh.write(header.ljust(_HEADER, b"\0"))
                for start in range(0, order.size, 65536):
                    fh.write(np.ascontiguousarray(rec[order[start:start + 65536]]).tobytes())

        dropped = total - order.size
        atomic_write(self.path, write)
        return int(dropped)
