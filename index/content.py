"""Content digests of a series' files, so that a series whose files were only touched or copied is not re-embedded."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Set, Tuple

from ctglip_sdk.io.paths import is_within

from .layout import Item

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

__all__ = ["content_digest", "item_digest", "same_content"]

_CHUNK = 1 << 20  # hashlib releases the GIL for large updates, so worker threads hash in parallel
#: Digests of files already hashed, keyed by what changes whenever a file's bytes do (inode, size, modification
#: and change times in ns; the change time cannot be set back by a user). Why: manifest rows that name one shared
#: folder (a series_uid each) hash the same files once per row, and ingest hashes a touched series in the check
#: and again in the read worker; bounded, cleared when full.
_FILE_DIGESTS: Dict[Tuple[int, int, int, int, int], bytes] = {}
_FILE_DIGESTS_MAX = 200_000
_LOCK = threading.Lock()


def _files(root: Path, rel: str) -> List[str]:
    """Paths (relative to ``root``) of the files at ``rel``: the file itself, or the files below a folder, hidden
    ones (``.name``) left out as the loaders leave them out; linked folders are not entered."""
    path = root / rel
    if path.is_dir():
        out = []
        for dirpath, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            out += [os.path.relpath(os.path.join(dirpath, f), root) for f in files if not f.startswith(".")]
        return out
    return [rel] if path.exists() or path.is_symlink() else []


def _file_digest(full: Path) -> bytes:
    """BLAKE2b-128 of one file's bytes and length, or a marker for what is not a regular file or not readable.

    Opened without blocking and checked with fstat before any read: a FIFO or a device in a series folder (which
    the loaders skip) must not hang the ingest, nor a file be read that changed into something else.
    """
    try:
        fd = os.open(full, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return b"<unreadable>"
    with os.fdopen(fd, "rb", buffering=0) as fh:
        try:
            st = os.fstat(fd)
        except OSError:
            return b"<unreadable>"
        if not stat.S_ISREG(st.st_mode):
            return b"<not a file>"
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev)
        with _LOCK:
            hit = _FILE_DIGESTS.get(key)
        if hit is not None:
            return hit
        h = hashlib.blake2b(digest_size=16)
        size = 0
        try:
            while True:
                block = fh.read(_CHUNK)
                if not block:
                    break
                h.update(block)
                size += len(block)
        except OSError:
            return b"<unreadable>"
        h.update(b"\0" + str(size).encode())  # ends the file: "ab"+"c" differs from "a"+"bc"
        out = h.digest()
    with _LOCK:
        if len(_FILE_DIGESTS) >= _FILE_DIGESTS_MAX:
            _FILE_DIGESTS.clear()
        _FILE_DIGESTS[key] = out
    return out


def content_digest(root: Path, rels: Iterable[Optional[str]]) -> str:
    """BLAKE2b-128 (hex) of the names and bytes of the files at ``rels`` (files or folders, relative to ``root``).

    The same files give the same digest wherever the archive lies and whatever their modification times; a file
    whose real path is outside the root, or that is not a regular readable file, enters by its name and a marker,
    not its bytes.
    """
    h = hashlib.blake2b(digest_size=16)
    base = root.resolve()
    names = sorted({Path(f).as_posix() for rel in rels if rel for f in _files(root, rel)})
    for name in names:
        full = root / name
        h.update(name.encode("utf-8", "surrogateescape") + b"\0")
        if not is_within(base, full.resolve()):  # a link (or a linked folder) out of the archive: never read
            h.update(b"<outside>\0")
            continue
        h.update(_file_digest(full) + b"\0")
    return h.hexdigest()


def item_digest(root: Path, item: Item) -> str:
    """The digest of what one series is read from: its own files when discovery listed them (not the other series
    of a shared folder), else its image path, and its mask."""
    return content_digest(root, [*(item.files or (item.image,)), item.mask])


def _row_part(fingerprint: str) -> str:
    return fingerprint.split(":", 1)[1] if ":" in fingerprint else ""


def same_content(index: "ArchiveIndex", root: Path, items: List[Item], done: Dict[str, str], workers: int,
                 progress: bool, skip: Iterable[str] = ()) -> Set[str]:
    """Keys of the ``items`` whose stored fingerprint differs only because file times changed: the manifest row
    part is the same and the files' bytes hash to the digest stored when the series was embedded.

    Why: a fingerprint of sizes and modification times is cheap to check on every run, but a copy without
    ``-a``, a restore from backup or a ``touch`` changes every time and re-embedded the whole archive (hours on
    CPU). Reading and hashing a series costs a fraction of encoding it, and is done only for such series; not for
    those in ``skip`` (series whose last attempt failed with these same files: ingest does not read them again).
    """
    skipped = set(skip)
    stale = [i for i in items if i.key in done and done[i.key] != i.fingerprint and i.key not in skipped
             and _row_part(done[i.key]) == _row_part(i.fingerprint)]
    if not stale:
        return set()
    stored = index.store.series_digests([i.key for i in stale])
    stale = [i for i in stale if stored.get(i.key)]
    if not stale:
        return set()
    from tqdm.auto import tqdm  # noqa: PLC0415

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        digests = list(tqdm(pool.map(lambda it: item_digest(root, it), stale), total=len(stale),
                            desc="checking touched series", unit="series", disable=not progress))
    return {i.key for i, d in zip(stale, digests) if d == stored[i.key]}
