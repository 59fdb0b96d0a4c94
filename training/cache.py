"""Preprocessing cache: each study's resampled image and organ weights, keyed by model spec and source files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ctglip_sdk.errors import ConfigError, InputError

__all__ = ["CachedStudy", "PreprocessCache", "default_cache_dir", "preprocess_spec", "CACHE_FORMAT"]

log = logging.getLogger(__name__)
#: Bump when the stored layout, or which studies may be stored, changes; old entries are then simply not found
#: (new key). 2: a mask on another grid than its image is refused (check_mask_grid), so an entry a format-1 build
#: made from such a mask is never read again; the tensors of every other entry are the same as in format 1.
CACHE_FORMAT = 2


def default_cache_dir() -> Path:
    """$CTGLIP_CACHE_DIR, else $XDG_CACHE_HOME/ctglip/preprocess, else ~/.cache/ctglip/preprocess."""
    env = os.environ.get("CTGLIP_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ctglip" / "preprocess"


def preprocess_spec(model: Any) -> Dict[str, Any]:
    """What decides a cached entry's content: the model's preprocessing config and its network geometry."""
    from ctglip_sdk.model.preprocess import STATS_VERSION

    spec = {"format": CACHE_FORMAT, "preprocess": model.config.preprocess.to_dict(),
            "feature_stride": int(model.vision.feature_stride), "size_divisor": int(model.vision.size_divisor)}
    if model.config.preprocess.n_stats:  # the stats are code, not config: a change to them is a new cache
        spec["stats_version"] = STATS_VERSION
    return spec


def _fingerprint(path: Path) -> Tuple[str, ...]:
    """(path, size, mtime_ns, ctime_ns) of a file; of a DICOM series folder, (path, a digest of every file's
    relative name, size, mtime_ns and ctime_ns).

    Why every file and ctime: a folder used to be summed into (total size, newest mtime), so a slice replaced by
    one of the same size with an older mtime (``cp -p``, ``rsync -a`` from a backup) kept the key and training read
    the old pixels; replacing a file always sets its ctime.

    Raises:
        InputError: the file (or a file of the folder) is missing or cannot be looked at, naming it; a raw
            OSError here used to end a whole training run from the cache key alone.
    """
    try:
        if path.is_dir():
            h = hashlib.sha256()
            for dirpath, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(dirpath, name)
                    st = os.stat(full)
                    h.update(f"{os.path.relpath(full, path)}\x1f{st.st_size}\x1f{st.st_mtime_ns}\x1f"
                             f"{st.st_ctime_ns}\x1e".encode())
            return str(path.resolve()), h.hexdigest()
        st = path.stat()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or type(exc).__name__}", path=exc.filename or path) from None
    return str(path.resolve()), str(st.st_size), str(st.st_mtime_ns), str(st.st_ctime_ns)


#: A temp entry older than this belongs to a build that was killed (a live one writes for seconds).
_STALE_TEMP_S = 3600.0


def _sweep_temp_files(folder: Path) -> None:
    """Remove temp entries that killed builds left (each holds a study's preprocessed pixels, ~10 MB)."""
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TEMP_S:
                tmp.unlink()
        except OSError:  # another process's sweep got it first, or it is not ours to remove
            continue


@dataclass
class CachedStudy:
    """A study as the network sees it: image [C, X, Y, Z] and COO organ weights on the feature grid."""

    image: torch.Tensor
    grid: Tuple[int, int, int]
    names: List[str]
    rows: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor
    #: ``[N, bins]`` HU-histogram fractions per organ when the model's preprocessing has ``hu_histogram``.
    stats: Optional[torch.Tensor] = None

    def select(self, organs: Sequence[str]) -> "CachedStudy":
        """Only these organs (in this order), rows renumbered 0..len(organs)-1."""
        index = {n: i for i, n in enumerate(self.names)}
        old = torch.tensor([index[o] for o in organs], dtype=torch.long)
        remap = torch.full((len(self.names),), -1, dtype=torch.long)
        remap[old] = torch.arange(len(organs))
        new_rows = remap[self.rows]
        keep = new_rows >= 0
        stats = self.stats[old] if self.stats is not None else None
        return CachedStudy(self.image, self.grid, list(organs), new_rows[keep], self.cols[keep], self.vals[keep],
                           stats)


class PreprocessCache:
    """One safetensors file per study under ROOT/<spec hash>/, written atomically; safe to share across runs.

    The key covers the preprocessing spec and each source file's path, size, mtime and ctime, so an edited scan or
    mask, or a model with another spacing/window/stride, never reads a stale entry. Images are stored as
    float16 (windowed to [0, 1] or [-1, 1]: < 0.05% of the window width lost) to halve disk and I/O.

    Example:
        >>> cache = PreprocessCache.for_model(model)                              # doctest: +SKIP
        >>> study = cache.get(image_path, mask_path)                               # doctest: +SKIP
    """

    def __init__(self, root: Optional[Path], spec: Dict[str, Any]) -> None:
        from ctglip_sdk.model.config import PreprocessConfig

        self.spec = spec
        self.preprocess = PreprocessConfig.from_dict(spec["preprocess"])
        self.stride = int(spec["feature_stride"])
        self.divisor = int(spec["size_divisor"])
        canon = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        self.spec_hash = hashlib.sha256(canon.encode()).hexdigest()[:16]
        self.dir = Path(root or default_cache_dir()) / self.spec_hash
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, a read-only or missing mount: name the option and the folder
            raise ConfigError(f"cannot create the preprocessing cache folder (cache_dir; {exc.strerror or exc})",
                              path=self.dir) from None
        spec_file = self.dir / "spec.json"
        if not spec_file.exists():
            spec_file.write_text(canon + "\n")
        _sweep_temp_files(self.dir)

    def key(self, image: Path, mask: Path, series: Optional[str] = None) -> str:
        """Hex key of a (scan, mask) pair under this spec; ``series`` names one series of a DICOM folder.

        Why the series enters the key: two reconstructions in one folder (soft tissue and bone kernel) share
        their grid and so can share a mask, and must not share an entry. NIfTI files and calls without a series
        keep the key they always had.
        """
        parts = [self.spec_hash, *map(str, _fingerprint(Path(image))), *map(str, _fingerprint(Path(mask)))]
        if series:
            parts.append(f"series={series}")
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]

    def path(self, image: Path, mask: Path, series: Optional[str] = None) -> Path:
        """The entry's file."""
        return self.dir / f"{self.key(image, mask, series)}.safetensors"

    def has(self, image: Path, mask: Path, series: Optional[str] = None) -> bool:
        """True when the entry exists (built by this or an earlier run) and is whole; a damaged one is removed."""
        return _intact(self.path(image, mask, series))

    @classmethod
    def for_model(cls, model: Any, root: Optional[Path] = None) -> "PreprocessCache":
        """The cache matching a model's preprocessing (root: default_cache_dir())."""
        return cls(root, preprocess_spec(model))

    def build(self, image: Path, mask: Path, series: Optional[str] = None) -> Path:
        """Load, preprocess and store one study (no-op when present); ``series``: as ``load_listed_volume``.

        Raises:
            GeometryError: the mask is not on the image's grid ("mask mismatch", ``check_mask_grid``): it is
                refused as ingest refuses it, never resampled onto the image.
            InputError: an unreadable image or mask, or a mask with no labelled organ.
        """
        target = self.path(image, mask, series)
        if _intact(target):
            return target
        from ctglip_sdk.io import load_listed_volume, load_segmentation
        from ctglip_sdk.model.preprocess import prepare_study

        vol = load_listed_volume(image, series)
        seg = load_segmentation(mask, like=vol, check_grid=True)
        p = prepare_study(vol, seg, None, self.preprocess, self.stride, self.divisor)
        if not p.names:
            raise InputError("no labelled organ in the mask", path=mask)
        tensors = {"image": p.image.to(torch.float16).contiguous(), "rows": p.rows.to(torch.int32),
                   "cols": p.cols.to(torch.int64), "vals": p.vals.to(torch.float32)}
        if p.stats is not None:
            tensors["stats"] = p.stats.to(torch.float32).contiguous()
        meta = {"names": json.dumps(p.names), "grid": json.dumps(list(p.grid))}
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            save_file(tensors, str(tmp), metadata=meta)
            with open(tmp, "rb") as fh:  # on disk before the rename: a power cut must not leave a short entry
                os.fsync(fh.fileno())
            os.replace(tmp, target)  # atomic: a killed build leaves a temp file, never a half entry
        finally:
            tmp.unlink(missing_ok=True)
        return target

    @contextmanager
    def _open(self, image: Path, mask: Path, series: Optional[str]) -> Iterator[Any]:
        """``safe_open`` of an entry; a missing or damaged entry is an InputError naming the file."""
        target = self.path(image, mask, series)
        if not target.is_file():
            raise InputError("study is not in the preprocessing cache; build it first", path=image)
        try:
            with safe_open(str(target), framework="pt") as fh:
                yield fh
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise InputError(f"damaged preprocessing cache entry ({exc}); delete it and run again: it is rebuilt",
                             path=target) from None

    def names(self, image: Path, mask: Path, series: Optional[str] = None) -> List[str]:
        """An entry's organ names in row order, from its header alone (no tensor is read)."""
        with self._open(image, mask, series) as fh:
            return json.loads(fh.metadata()["names"])

    def stats(self, image: Path, mask: Path, series: Optional[str] = None) -> Optional[torch.Tensor]:
        """An entry's ``[organs, n_stats]`` stats alone (None when the spec has none); the image is not read.

        Why not ``load(...).stats``: reading 600 images of ~20 MB each only to drop them left glibc's heap
        fragmented by the small tensors kept in between, and the training process's resident size grew by
        ~5 MB per study (3.4 GB for 600) before its first step (docs/training.md, "Memory")."""
        with self._open(image, mask, series) as fh:
            return fh.get_tensor("stats") if "stats" in fh.keys() else None

    def load(self, image: Path, mask: Path, series: Optional[str] = None) -> CachedStudy:
        """Read an entry (InputError when absent: build it first)."""
        with self._open(image, mask, series) as fh:
            meta = fh.metadata()
            t = {k: fh.get_tensor(k) for k in fh.keys()}
        return CachedStudy(t["image"].float(), tuple(json.loads(meta["grid"])), json.loads(meta["names"]),
                           t["rows"].long(), t["cols"], t["vals"], t.get("stats"))


_ENTRY_TENSORS = frozenset(("image", "rows", "cols", "vals"))


def _intact(target: Path) -> bool:
    """Whether a cache entry exists and opens whole (header, organ names, grid, every tensor's bytes on disk).

    A damaged entry (a disk that filled, a power cut before the entry reached the disk, a copy cut short) is
    removed with a warning, so that the cache build makes it again instead of training stopping on it later.
    safetensors checks that the file covers every tensor the header lists, so a short file never opens.
    """
    if not target.is_file():
        return False
    try:
        with safe_open(str(target), framework="pt") as fh:
            meta = fh.metadata() or {}
            if "names" not in meta or "grid" not in meta or not _ENTRY_TENSORS <= set(fh.keys()):
                raise ValueError("the entry lacks its organ names, grid or tensors")
        return True
    except (SafetensorError, OSError, ValueError) as exc:
        log.warning("damaged preprocessing cache entry %s (%s): removed; the study is preprocessed again", target, exc)
        try:
            target.unlink(missing_ok=True)
        except OSError as gone:  # a read-only shared cache: say which entry to remove, no traceback
            raise InputError(f"damaged preprocessing cache entry ({exc}) that cannot be removed "
                             f"({gone.strerror or gone}); delete it, or point cache_dir at a writable folder",
                             path=target) from None
        return False
