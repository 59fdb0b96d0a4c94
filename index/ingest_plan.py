"""Which series an ingest run embeds: fingerprints with the manifest row, touched series, refusals, upgrades."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from ctglip_sdk.errors import CTGlipError

from .content import same_content
from .filters import to_date
from .ingest_read import ArchivePlan, backfill_shown_paths, checked_age
from .layout import Item
from .results import IngestReport

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

__all__ = ["plan_run", "with_row_hash"]


def plan_run(index: "ArchiveIndex", root: Path, plan: ArchivePlan, report: IngestReport, retry_errors: bool,
             workers: int, progress: Optional[bool]) -> Tuple[List[Item], List[Dict[str, Any]]]:
    """Which planned series this run embeds (``todo``) and the outcomes already known (plan errors, refusals);
    skipped and upgraded series are counted in ``report`` and their new fingerprints recorded."""
    t0 = time.perf_counter()
    items = [with_row_hash(index, i) for i in plan.items]
    plan_errors = plan.errors
    done = index.store.series_fingerprints()
    failed = index.store.last_errors()
    report.timings["plan"] = plan.seconds + time.perf_counter() - t0
    todo: List[Item] = []
    upgrade: Dict[str, str] = {}
    outcomes: List[Dict[str, Any]] = []
    for key, reason in plan_errors:
        report.errors.append({"series": key, "reason": reason})
        outcomes.append({"series_uid": key, "fingerprint": None, "status": "error", "reason": reason})
    # A series known only by its path ("path:images/case00000.nii.gz": NIfTI, or a manifest without series
    # UIDs) that another archive folder stored is another archive's series with the same file name, not a new
    # version of it: replacing it lost the first archive's studies without a word.
    # (the files part only: a corrected manifest row of the same files is the same series, moved or not)
    clash_keys = [i.key for i in items if i.key.startswith("path:") and i.key in done
                  and done[i.key].split(":")[0] != i.fingerprint.split(":")[0]]
    here = str(root.resolve())
    # A pre-row-hash fingerprint with the same files: upgraded in place unless the row says something other
    # than what is stored (a correction made before the upgrade would otherwise never be applied).
    legacy_changed = _rows_changed(index, [i for i in items if _legacy_match(done.get(i.key), i.fingerprint)])
    other_root = {k for k, r in index.store.series_roots(clash_keys).items() if r and r != here}
    # Touched or copied without their times, with the same bytes as when embedded: not embedded again.
    now = {i.key: i.fingerprint for i in items}
    failed_again = [] if retry_errors else [k for k, (fp, _why) in failed.items() if now.get(k) == fp]
    same = same_content(index, root, items, done, workers, sys.stderr.isatty() if progress is None else progress,
                        skip=failed_again)
    for item in items:
        if item.key in same:
            report.skipped += 1
            upgrade[item.key] = item.fingerprint  # the new times are recorded; the next run skips it at once
        elif item.key in other_root:
            reason = ("a series with this path was ingested from another archive folder with other files; not "
                      "replaced (index archives whose files share names separately, or give their manifest rows "
                      "a series_uid; a copy of an archive is known by its bytes only for series stored since "
                      "schema 3, others need a copy that keeps file times: cp -a, rsync -a)")
            report.errors.append({"series": item.key, "reason": reason})
            outcomes.append({"series_uid": item.key, "fingerprint": item.fingerprint, "status": "error",
                             "reason": reason})
        elif done.get(item.key) == item.fingerprint:
            report.skipped += 1
        elif _legacy_match(done.get(item.key), item.fingerprint) and item.key not in legacy_changed:
            report.skipped += 1  # stored before manifest values entered the fingerprint: same files, same
            upgrade[item.key] = item.fingerprint  # row values: its fingerprint now records the row too
        elif not retry_errors and item.key in failed and failed[item.key][0] == item.fingerprint:
            # counted once, as an error (not also as skipped): ok + skipped + errors == seen
            report.errors.append({"series": item.key, "reason": f"previous attempt failed: {failed[item.key][1]}"})
        else:
            todo.append(item)
    report.seen = len(items) + len(plan_errors)
    if upgrade:
        index.store.set_fingerprints(upgrade)
    unchanged = [i.key for i in items if done.get(i.key) == i.fingerprint or i.key in upgrade]
    if unchanged and any(r not in (None, here) for r in index.store.archive_roots()):
        index.store.move_series_root(unchanged, here)  # a moved archive: montages must find its images
    if unchanged:
        keep = set(unchanged)
        backfill_shown_paths(index, root, [i for i in items if i.key in keep])
    return todo, outcomes


def with_row_hash(index: "ArchiveIndex", item: Item) -> Item:
    """``item`` whose fingerprint also covers its manifest row: a corrected age, date, split, report or patient
    then re-ingests the series (the files alone never saw them, so a manifest correction never reached the index;
    sex stays the patient's first, and an emptied cell keeps the stored value).

    The row's hash is keyed with the index's pseudonym key (HMAC): an unkeyed hash of a row holding a patient_id
    let anyone with the database recover record numbers by trying them (a security review, 2026-12-06).
    """
    if not item.row:
        return item
    canon = repr(sorted((k, str(v)) for k, v in item.row.items() if k not in ("image", "mask")))
    return replace(item, fingerprint=f"{item.fingerprint}:{index.pseudonym(canon)[:16]}")


def _rows_changed(index: "ArchiveIndex", items: List[Item]) -> set:
    """Keys of manifest items whose row's study-level values (age, date, split, report, patient) differ from the
    stored ones; an empty cell is not compared (the image header gave that value)."""
    if not items:
        return set()
    stored = index.store.series_study_values([i.key for i in items])
    out = set()
    for item in items:
        row, was = item.row, stored.get(item.key)
        if was is None:
            continue
        now: Dict[str, Any] = {"split": row.get("split") or None, "report_path": item.report}
        if row.get("age") not in (None, ""):
            now["age"] = checked_age(row.get("age"))[0]
        if row.get("study_date"):
            try:
                now["study_date"] = to_date(row.get("study_date"))
            except CTGlipError:
                now["study_date"] = None
        if row.get("patient_id"):
            now["patient"] = index.pseudonym(str(row["patient_id"]))
        if any(v is not None and was.get(k) != v for k, v in now.items()):
            out.add(item.key)
    return out


def _legacy_match(stored: Optional[str], now: str) -> bool:
    """Whether ``stored`` is the files-only fingerprint (before 2026-12-06) of ``now`` (files + manifest row):
    such a series is unchanged, and is not re-embedded only because the fingerprint gained a part."""
    return bool(stored) and ":" not in stored and now.startswith(f"{stored}:")  # type: ignore[operator]
