"""Path confinement: resolve manifest paths inside a root and walk trees without following escaping symlinks."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, List, Tuple, Type, Union

from ctglip_sdk.errors import CTGlipError, InputError

__all__ = ["resolve_within", "is_within", "walk_files", "require_path", "strip_root"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


def require_path(value: Any, name: str, expected: str = "a file or folder path",
                 error: Type[CTGlipError] = InputError) -> str:
    """``os.fspath(value)`` for a str or path-like; anything else (None, a number) raises ``error``.

    Without it ``Path(None)`` or ``os.fspath(None)`` raises a bare TypeError from deep inside pathlib. The
    message has the shape ``load_volume(None)`` and the index use: ``"<name>: expected <expected>, got NoneType"``.

    Example:
        >>> require_path(None, "root", "an archive folder path")  # doctest: +SKIP
        Traceback (most recent call last):
        ctglip_sdk.errors.InputError: root: expected an archive folder path, got NoneType
    """
    if not isinstance(value, (str, os.PathLike)):
        raise error(f"{name}: expected {expected}, got {type(value).__name__}")
    return os.fspath(value)


def is_within(root: Path, path: Path) -> bool:
    """True when resolved ``path`` is ``root`` or lies below it (both must already be resolved Paths)."""
    if not isinstance(root, Path) or not isinstance(path, Path):
        # A str would compare unequal and have no .parents: answer the question that was meant, or say why not.
        raise InputError(f"is_within: expected two resolved Paths, got {type(root).__name__} and "
                         f"{type(path).__name__}")
    return path == root or root in path.parents


def resolve_within(root: PathLike, relative_path: PathLike) -> Path:
    """Resolve ``relative_path`` against ``root`` and refuse anything that escapes it.

    Absolute paths, ``..`` components that climb out of ``root`` and symlinks that resolve outside ``root``
    raise InputError. Use it for every path that comes from a manifest, an index row or user data.

    Example:
        >>> resolve_within("/data/archive", "p001/ct.nii.gz")  # doctest: +SKIP
        PosixPath('/data/archive/p001/ct.nii.gz')
        >>> resolve_within("/data/archive", "../etc/passwd")  # doctest: +SKIP
        Traceback (most recent call last):
        ctglip_sdk.errors.InputError: ../etc/passwd: path escapes the root folder /data/archive
    """
    require_path(root, "root", "a root folder path")
    rel = require_path(relative_path, "relative_path", "a path relative to the root folder")
    if not isinstance(rel, str) or not rel.strip():
        raise InputError("empty path; expected a path relative to the root folder", path=str(root))
    if "\0" in rel:
        raise InputError("path holds a NUL character", path=rel.replace("\0", "\\0"))
    if os.path.isabs(rel) or Path(rel).drive or rel.startswith(("/", "\\")):
        raise InputError(f"absolute paths are not allowed here; expected a path relative to {os.fspath(root)}",
                         path=rel)
    root_resolved = Path(root).resolve()
    candidate = (root_resolved / rel).resolve()  # resolves '..' and symlinks alike
    if not is_within(root_resolved, candidate):
        raise InputError(f"path escapes the root folder {root_resolved}", path=rel)
    return candidate


def walk_files(root: PathLike, follow_symlinks: bool = False) -> Tuple[List[Path], List[str]]:
    """All regular files below ``root`` (sorted) and the symlinks refused because they leave ``root``.

    Symlinks that resolve outside ``root`` are never followed: they are returned in the second list (paths
    relative to ``root``) and logged as warnings. Symlinks that stay inside ``root`` are followed only when
    ``follow_symlinks`` is True (directory loops are cut). Hidden files and folders (``.name``) are skipped.
    """
    base = Path(require_path(root, "root", "a folder path"))
    root_resolved = base.resolve()
    files: List[Path] = []
    refused: List[str] = []
    seen_dirs = {root_resolved}

    def rel(p: Path) -> str:
        return os.path.relpath(p, base)

    stack = [base]  # depth-first, files of a folder in name order
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError as exc:
            log.warning("cannot list %s (%s); skipped", rel(folder), exc.strerror or type(exc).__name__)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                target = path.resolve()
                if not is_within(root_resolved, target):
                    log.warning("refused symlink %s: it resolves outside the root folder", rel(path))
                    refused.append(rel(path))
                elif not follow_symlinks:
                    log.debug("skipped symlink %s (follow_symlinks=False)", rel(path))
                elif target.is_dir():
                    if target not in seen_dirs:  # cut symlink loops
                        seen_dirs.add(target)
                        stack.append(path)
                elif target.is_file():
                    files.append(path)
            elif entry.is_dir(follow_symlinks=False):
                seen_dirs.add(path.resolve())
                stack.append(path)
            elif entry.is_file(follow_symlinks=False):
                files.append(path)
    if follow_symlinks:  # a followed link may reach a file that is also listed under its own name
        unique = {}
        for path in sorted(files, key=lambda p: (p.is_symlink(), str(p))):
            unique.setdefault(path.resolve(), path)
        files = list(unique.values())
    files.sort()
    refused.sort()
    return files, refused


def strip_root(text: str, root: PathLike) -> str:
    """``text`` with the archive root removed where it starts a path: made relative below it, "." for itself.

    Only as a path prefix (after the start, a space, a quote or "=") and followed by "/" (or, for the absolute
    form, a path's end): a root named "a" must not turn "cannot read" into "c.nnot re.d". The resolved form goes
    first because the root as given may be a suffix of it. Ingest's recorded reasons and training's skipped
    studies both use it, so a reason reads the same wherever it is stored.
    """
    root = Path(root)
    bases = sorted({str(root.resolve()).rstrip("/"), str(root).rstrip("/")}, key=len, reverse=True)
    for base in bases:
        if not base or base == ".":
            continue
        lead = r"(?:(?<=^)|(?<=[\s'\"(=]))"
        text = re.sub(lead + re.escape(base) + "/", "", text)
        if os.path.isabs(base):  # a bare relative root ("a") cannot be told from a word
            text = re.sub(lead + re.escape(base) + r"(?=$|[\s'\")*,;:])", ".", text)
    return text
