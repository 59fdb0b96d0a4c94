"""Files the user names for output (exports, cohort CSVs, montages): checked against the index, written whole."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from ctglip_sdk.errors import InputError, QueryError
from ctglip_sdk.io.paths import is_within

from .engine import database_file

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex
    from .results import CohortResult

__all__ = ["check_output_path", "write_cohort_csv", "EXPORT_SUFFIXES", "COHORT_SUFFIXES", "MONTAGE_SUFFIXES"]

EXPORT_SUFFIXES = (".csv", ".parquet", ".jsonl")
COHORT_SUFFIXES = (".csv",)
#: Image types a montage is saved as (matplotlib writes them without extra packages).
MONTAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def _protected(index: Union["ArchiveIndex", str, "os.PathLike[str]"]) -> "list[Path]":
    """The index folder and, when it lies elsewhere (``database_url=sqlite:///...``), its SQLite database files."""
    folder = Path(getattr(index, "folder", index))
    out = [folder.resolve()]
    url = getattr(getattr(index, "store", None), "url", None)
    if isinstance(url, str) and url.startswith("sqlite"):
        db = database_file(url)
        if db:
            out += [Path(db + tail).resolve() for tail in ("", "-wal", "-shm", "-journal")]
    return out


def check_output_path(path: Any, index: Union["ArchiveIndex", str, "os.PathLike[str]"], *,
                      suffixes: Sequence[str], what: str) -> Path:
    """``path`` as a Path, refused when it would write into the index: inside its folder (the SQL database, the
    vectors, the pseudonym key live there) or over its SQLite database elsewhere, or without one of ``suffixes``.

    Why: ``ctglip cohort --output idx/index.sqlite`` replaced the index's database with a CSV and exited 0; every
    later command on the index failed. Every writer of a user-named file calls this before writing (or querying).

    Raises:
        QueryError: not a path, or a suffix not among ``suffixes``.
        InputError: the path is a folder, or lies inside the index (naming the path).

    Example:
        >>> check_output_path("out/cohort.csv", "idx/", suffixes=(".csv",), what="cohort CSV")
        PosixPath('out/cohort.csv')
    """
    if not isinstance(path, (str, os.PathLike)):
        raise QueryError(f"{what}: expected a file path, got {type(path).__name__}")
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        choices = f"{', '.join(suffixes[:-1])} or {suffixes[-1]}" if len(suffixes) > 1 else suffixes[0]
        raise QueryError(f"the {what} is written to a {choices} file; got {out.suffix or 'no extension'!r}",
                         path=out)
    if out.is_dir():
        raise InputError(f"cannot write the {what}: the path is a folder", path=out)
    target = out.resolve()  # links followed: a link to the database is the database
    for protected in _protected(index):
        if is_within(protected, target):
            raise InputError(f"refusing to write the {what} into the index ({protected}): it would replace or "
                             "mix with the index's own files (its database, vectors and key); write it elsewhere",
                             path=out)
    return out


def write_cohort_csv(index: "ArchiveIndex", result: "CohortResult", path: Any,
                     conditions: Optional[Sequence[str]] = None, escape_formulas: bool = True) -> Path:
    """Write a cohort's members to a CSV file (``patient``, ``studies``, [``study_uid``], ``p:<condition>``...).

    The columns do not depend on who is a member, and an empty cohort still gets its header (pandas and csv
    readers fail on a file with none). The file is written beside the target and renamed when complete; a path
    inside the index is refused (:func:`check_output_path`). Text cells a spreadsheet would run as a formula get a
    leading ``'`` unless ``escape_formulas=False`` (``export.csv_safe``). ``conditions`` names the evidence columns when the
    result has no ``scored`` names (default: its all_of and any_of conditions).

    Example:
        >>> write_cohort_csv(idx, idx.cohort(all_of=["renal_cyst"]), "cohort.csv")  # doctest: +SKIP
        PosixPath('cohort.csv')
    """
    out = check_output_path(path, index, suffixes=COHORT_SUFFIXES, what="cohort CSV")
    if not out.parent.is_dir():
        raise InputError(f"cannot write the cohort CSV: folder {str(out.parent)!r} does not exist", path=out)
    scored = result.scored or list(conditions if conditions is not None else [
        *result.conditions.get("all_of", []), *result.conditions.get("any_of", [])])
    frame = result.to_pandas()
    cols = ["patient", "studies", *(["study_uid"] if result.level == "study" else []),
            *dict.fromkeys(f"p:{str(c).strip()}" for c in scored)]
    cols += [c for c in frame.columns if c not in cols]
    tmp: Optional[str] = None
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        frame = frame.reindex(columns=cols)
        if escape_formulas:  # text a spreadsheet would run as a formula (export.csv_safe)
            from .export import csv_safe  # noqa: PLC0415

            frame = frame.apply(lambda col: col.map(csv_safe) if col.dtype == object else col)
        frame.to_csv(tmp, index=False)
        os.replace(tmp, out)
        tmp = None
    except OSError as exc:  # no permission, a full disk: a user error naming the file
        raise InputError(f"cannot write the cohort CSV ({exc.strerror or str(exc) or type(exc).__name__})",
                         path=out) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return out
