"""write_archive_manifest: ROOT/manifest.csv from discovered images, masks and reports, for train and eval."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import stat
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ctglip_sdk.errors import ConfigError, CTGlipError, InputError
from ctglip_sdk.io.paths import is_within, require_path
from ctglip_sdk.privacy import KEY_ENV

from .ingest_read import checked_age, checked_sex, header_contrast
from .layout import Item, discovered_items, existing_path, path_key, redact, stems

__all__ = ["write_archive_manifest", "ManifestSummary", "REPORT_PATTERNS", "MANIFEST_COLUMNS"]

log = logging.getLogger(__name__)

#: Columns written, in order: the ones training and evaluation require (docs/data.md) plus what ingest reads.
MANIFEST_COLUMNS = ("patient_id", "study_uid", "series_uid", "image", "mask", "report", "split", "age", "sex",
                    "study_date", "contrast", "body_part", "description")

#: Where the report of an image ``<dir>/<stem>.nii.gz`` or DICOM folder ``<dir>/<stem>/`` is looked for (first
#: match wins), relative to ``<dir>``; ``../reports/{stem}.txt`` is the sibling-folder layout (images/, masks/,
#: reports/). ``report.txt`` applies only when ``<dir>`` holds one image, as for shared mask names.
REPORT_PATTERNS = ("{stem}.txt", "{stem}_report.txt", "{stem}.report.txt", "reports/{stem}.txt",
                   "report/{stem}.txt", "{stem}/report.txt", "../reports/{stem}.txt")
SHARED_REPORTS = ("report.txt",)

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class ManifestSummary:
    """What :func:`write_archive_manifest` wrote. Lists hold paths relative to the root, never patient identifiers:
    ``missing_mask`` images got no row (nothing can use a CT without its organ masks); ``missing_report`` and
    ``empty_report`` rows can be ingested and searched but not trained on."""

    path: str
    rows: int
    patients: int
    splits: Dict[str, int]
    missing_mask: List[str] = field(default_factory=list)
    missing_report: List[str] = field(default_factory=list)
    empty_report: List[str] = field(default_factory=list)
    unreadable: List[Tuple[str, str]] = field(default_factory=list)
    localizers: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    #: rows whose report was paired by the series' AccessionNumber (``reports_by_accession``): a count only.
    reports_by_accession: int = 0

    @property
    def trainable(self) -> int:
        """Rows with a non-empty report: what ``ctglip train`` can use (every row has an image and a mask)."""
        return self.rows - len(set(self.missing_report) | set(self.empty_report))

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["trainable"] = self.trainable
        d["unreadable"] = [{"path": p, "reason": r} for p, r in self.unreadable]
        return d


def _find_report(root: Path, image: str, alone: bool) -> Optional[str]:
    folder = Path(image).parent
    candidates = [p.format(stem=st) for st in stems(image) for p in REPORT_PATTERNS]
    candidates += list(SHARED_REPORTS) if alone else []
    root_resolved = root.resolve()
    for cand in candidates:
        rel = os.path.normpath((folder / cand).as_posix())
        if rel.startswith(".."):  # the sibling pattern for an image at the root would leave the archive
            continue
        found = existing_path(root, rel, folder=False)  # "CT.TXT" beside "CT.NII.GZ" too
        if found is not None and root_resolved in (root / found).resolve().parents:
            return found
    return None


def _reports_by_stem(root: Path) -> Dict[str, List[str]]:
    """Lower-cased report name (``ACC.txt``, ``ACC_report.txt``, ``ACC.report.txt`` -> ``acc``) -> the ``.txt``
    files under ``root`` so named (paths relative to it). One walk; folder links are not followed, and a file
    that is a link out of the root or not a regular file is left out."""
    out: Dict[str, List[str]] = {}
    base = root.resolve()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            low = name.lower()
            if not low.endswith(".txt"):
                continue
            full = Path(folder) / name
            # A link out of the archive is not a report of it, and a FIFO would block the read (security review)
            try:
                if not stat.S_ISREG(full.stat().st_mode) or not is_within(base, full.resolve()):
                    continue
            except OSError:
                continue
            stem = low[:-4]
            for suffix in ("_report", ".report"):
                if stem.endswith(suffix):
                    stem = stem[: -len(suffix)]
            rel = (Path(folder) / name).relative_to(root).as_posix()
            out.setdefault(stem, []).append(rel)
    return out


def _report_by_accession(accession: Optional[str], reports: Dict[str, List[str]], image: str,
                         warnings: List[str]) -> Optional[str]:
    """The one report file named by the series' AccessionNumber; None (with a warning naming the image, never
    the number) when several match."""
    found = reports.get((accession or "").strip().lower(), []) if (accession or "").strip() else []
    if len(found) > 1:
        warnings.append(f"{image}: {len(found)} report files are named by this series' accession number; none "
                        "was paired (rename one, or fill the report column)")
    return found[0] if len(found) == 1 else None


def _report_text(path: Path) -> str:
    """The report's text as training reads it (any encoding, byte-order mark dropped), stripped."""
    from ctglip_sdk.reports import read_report_text  # noqa: PLC0415

    try:
        return read_report_text(path).strip()
    except CTGlipError:
        return ""


def _checked(meta: Dict[str, Any], name: str, warnings: List[str]) -> Tuple[Optional[str], Optional[int]]:
    """Sex and age as ingest would store them: a value ingest refuses (sex "X", age 999) is left empty here too,
    with a warning, so that the manifest and the index agree."""
    sex, why = checked_sex(meta.get("sex"))
    if why:  # values are not quoted: a header field may hold a name typed into the wrong element
        warnings.append(f"{name}: sex from the image header {why}; left empty")
    age, why = checked_age(meta.get("age"))
    if why:
        warnings.append(f"{name}: age from the image header {why}; left empty")
    return sex, None if age is None else int(age)


def _header_meta(root: Path, item: Item, accession: bool = False) -> Dict[str, Any]:
    """Patient and study values from one DICOM header of the series; {} for NIfTI or an unreadable header.
    With ``accession``, also ``meta["accession"]`` (the AccessionNumber, for report pairing only; the caller
    drops it before anything is written or returned)."""
    from ctglip_sdk.io.dicom import try_read_header  # noqa: PLC0415 - pydicom loads only when DICOM is met
    from ctglip_sdk.io.meta import dicom_meta  # noqa: PLC0415

    base = root / item.image
    files = [base] if base.is_file() else sorted(p for p in base.iterdir() if p.is_file())
    for path in files:
        if path.name.lower().endswith((".nii", ".nii.gz", ".txt", ".json")):
            continue
        try:
            ds = try_read_header(path)
        except InputError:
            continue
        if ds is None or (item.key and not item.key.startswith("path:") and
                          str(ds.get("SeriesInstanceUID", "")).strip() != item.key):
            continue
        # The keyed pseudonym of PatientID, as the loader computes it (docs/security.md), not the raw id: ingest
        # without a manifest starts from that same value, so an index groups a patient's studies alike with or
        # without this manifest, and the file holds no raw identifier.
        meta = dicom_meta(ds, item.image, include_identifiers=accession)
        ids = meta.pop("identifiers", None) or {}  # PatientName, PatientID, birth date: never kept
        if accession:
            meta["accession"] = ids.get("AccessionNumber")
        return meta
    return {}


def _split_of(patient: str, seed: int, fractions: Sequence[float]) -> str:
    """A patient's split from a keyed hash: stable when the archive grows (no patient ever changes split)."""
    h = hashlib.sha256(f"{seed}:{patient}".encode("utf-8")).digest()
    u = int.from_bytes(h[:8], "big") / 2.0 ** 64
    train, val = fractions[0], fractions[0] + fractions[1]
    return "train" if u < train else "val" if u < val else "test"


def _assign_splits(patients: List[str], seed: int, fractions: Sequence[float]) -> Dict[str, str]:
    out = {p: _split_of(p, seed, fractions) for p in patients}
    # With few patients a hash can leave a split empty (3 patients: train empty for 2 seeds of 10). Each split
    # the fractions ask for, train first, then gets one patient from the largest split that can spare one, in
    # hash order so the choice is deterministic. Such a patient may move back as the archive grows.
    for name, frac in zip(("train", "val", "test"), fractions):
        if frac <= 0 or name in out.values():
            continue
        counts = Counter(out.values())
        donors = [s for s in counts if counts[s] > 1]
        if not donors:
            break
        donor = max(donors, key=lambda s: (counts[s], s == "train"))
        pool = sorted((p for p, s in out.items() if s == donor),
                      key=lambda p: hashlib.sha256(f"{seed}:{name}:{p}".encode()).hexdigest())
        out[pool[0]] = name
    return out


def _check_fractions(fractions: Sequence[float]) -> Tuple[float, float, float]:
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ConfigError(f"split fractions must be three numbers (train, val, test), got {fractions!r}") from None
    if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, got {fractions!r}")
    return fr  # type: ignore[return-value]


def write_archive_manifest(archive: PathLike, *, seed: int = 0, fractions: Sequence[float] = (0.7, 0.15, 0.15),
                           overwrite: bool = False, reports_by_accession: bool = False) -> ManifestSummary:
    """Write ``ARCHIVE/manifest.csv`` from what discovery finds, so that a hospital archive can be trained on.

    Images are found as ingest finds them without a manifest (``ctglip_sdk.io.discover``; masks paired by name,
    docs/index.md "Ingest"), and reports by :data:`REPORT_PATTERNS`. Patient, age, sex, date, contrast and body
    part come from one DICOM header per series; a NIfTI image is its own pseudo-patient with those left empty
    (fill them in before filtering on them). Splits are assigned per patient from a keyed hash of the patient
    id and ``seed``, so re-running after the archive grows keeps every earlier patient in its split (an archive
    of fewer than about 20 patients may have one patient moved from train so that val and test are not empty;
    that patient can move back as the archive grows).

    ``patient_id`` holds the keyed pseudonym of the header's PatientID (``$CTGLIP_PSEUDONYM_KEY``; docs/security.md),
    the value ingest starts from without a manifest, so an index groups studies under the same patients either
    way; the raw id is never written. Localizers (scouts) get no row. Nothing identifying is logged or returned.

    Args:
        archive: the archive root; every path written is relative to it and confined to it.
        seed: keys the split hash (another seed gives other splits).
        fractions: train, val, test shares of patients (summing to 1).
        overwrite: replace an existing manifest.csv (refused otherwise, so a curated one is never lost).
        reports_by_accession: a DICOM series with no report by name takes the one ``.txt`` file anywhere under
            the root named by its AccessionNumber (``ACC.txt``, ``ACC_report.txt``), as PACS/RIS exports name
            them. Off by default: the number is read from the header for this match only and never written,
            logged or returned, but the report column then holds that file's name, which contains it.

    Raises:
        InputError: the root is missing or not a folder, or holds no image at all.
        ConfigError: bad fractions, or a manifest.csv exists and ``overwrite`` is False.

    Example:
        >>> s = write_archive_manifest("archive/", seed=0)  # doctest: +SKIP
        >>> s.rows, s.splits, s.missing_report  # doctest: +SKIP
        (120, {'train': 85, 'val': 17, 'test': 18}, [])
    """
    root = Path(require_path(archive, "archive", "an archive folder path", error=ConfigError))
    fr = _check_fractions(fractions)
    if not root.is_dir():
        raise InputError("not a folder" if root.exists() else "no such folder", path=root)
    out = root / "manifest.csv"
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass overwrite=True (--force) to replace it")
    items, unreadable, alone, localizers = discovered_items(root)
    if not items:
        raise InputError("no DICOM series or NIfTI image found (docs/data.md, \"Bringing your own data\")",
                         path=root)
    rows: List[Dict[str, Any]] = []
    missing_mask: List[str] = []
    missing_report: List[str] = []
    empty_report: List[str] = []
    warnings: List[str] = []
    shared = {it.image for it in items if sum(o.image == it.image for o in items) > 1}
    by_stem = _reports_by_stem(root) if reports_by_accession else {}
    by_accession = 0
    for item in items:
        # Two series in one folder share a path: the series UID says which one a listed gap is about.
        name = f"{item.image}#{item.key}" if item.image in shared else item.image
        if item.mask is None:  # neither ingest nor training can use a CT without its organs: listed, no row
            missing_mask.append(name)
            continue
        try:
            meta = _header_meta(root, item, reports_by_accession) if not item.key.startswith("path:") else {}
        except (OSError, CTGlipError) as exc:  # one bad series is recorded; the manifest is still written
            unreadable.append((item.image, redact(exc, root)))
            meta = {}
        accession = meta.pop("accession", None)
        report = _find_report(root, item.image, alone[item.image])
        if report is None and reports_by_accession:
            report = _report_by_accession(accession, by_stem, name, warnings)
            by_accession += report is not None
        if report is None:
            missing_report.append(name)
        elif not _report_text(root / report):  # says nothing: every organ would be taken as normal
            empty_report.append(name)
        contrast = header_contrast(meta) or ""
        sex, age = _checked(meta, name, warnings)
        rows.append({
            "patient_id": meta.get("patient") or f"path:{item.image}",
            "study_uid": item.study_uid or meta.get("study_uid") or path_key(item.image),
            "series_uid": None if item.key.startswith("path:") else item.key,
            "image": item.image, "mask": item.mask, "report": report,
            "age": age, "sex": sex,
            "study_date": meta.get("study_date"), "contrast": contrast, "body_part": meta.get("body_part"),
            "description": meta.get("series_description"),
        })
    if rows and any(not r["patient_id"].startswith("path:") for r in rows) and not os.environ.get(KEY_ENV):
        # The fallback key is public: its pseudonyms of short record numbers can be found by trying them all.
        warnings.append(f"patient_id holds pseudonyms made with the library's public fallback key; set {KEY_ENV} "
                        "to a site secret before sharing manifest.csv outside the archive")
    for text in warnings:
        log.warning("%s", text)
    if not rows:
        raise InputError(f"found {len(items)} image(s) but a mask for none of them; masks are paired by name "
                         "(docs/index.md, \"Layout\"); nothing was written", path=root)
    patients = sorted({r["patient_id"] for r in rows})
    split = _assign_splits(patients, seed, fr)
    counts = {"train": 0, "val": 0, "test": 0}
    for r in rows:
        r["split"] = split[r["patient_id"]]
        counts[r["split"]] += 1
    # Written to a temporary file and renamed: a crash never leaves half a manifest that ingest would trust.
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".csv", dir=root)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: "" if r.get(k) is None else r[k] for k in MANIFEST_COLUMNS})
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote %d manifest rows (%d patients) in %s", len(rows), len(patients), root.name)
    return ManifestSummary(path=str(out), rows=len(rows), patients=len(patients), splits=counts,
                           missing_mask=missing_mask, missing_report=missing_report, empty_report=empty_report,
                           unreadable=unreadable, localizers=localizers, warnings=warnings,
                           reports_by_accession=by_accession)
