"""write_archive_manifest: ROOT/manifest.csv from discovered images, masks and reports, for train and eval."""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import re
import stat
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

from ctglip_sdk.errors import ConfigError, CTGlipError, InputError
from ctglip_sdk.io.paths import is_within, require_path
from ctglip_sdk.privacy import KEY_ENV, dicom_identifiers, pseudonymize, redact_identifiers

from .ingest_read import checked_age, checked_sex, header_contrast, series_patient_ids_of
from .layout import _CLASS_NAMES, Item, _stem, discovered_items, existing_path, path_key, redact, stems

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
    """What :func:`write_archive_manifest` wrote. Lists hold paths relative to the root with the series' patient
    identifiers (PatientID, name, accession number found in folder names) replaced by ``<patient>``:
    ``missing_mask`` images got no row (nothing can use a CT without its organ masks), nor did ``mask_mismatch``
    ones (the mask lies on another grid: ingest and training would refuse it) or ``unreadable`` series whose
    files name two patients; ``missing_report`` and ``empty_report`` rows can be ingested and searched but not
    trained on. ``localizers`` and ``derived`` (reformats beside their study's acquisition) are left out;
    ``orphan_masks`` and ``orphan_reports`` belong to no image found."""

    path: str
    rows: int
    patients: int
    splits: Dict[str, int]
    missing_mask: List[str] = field(default_factory=list)
    missing_report: List[str] = field(default_factory=list)
    empty_report: List[str] = field(default_factory=list)
    unreadable: List[Tuple[str, str]] = field(default_factory=list)
    localizers: List[str] = field(default_factory=list)
    derived: List[str] = field(default_factory=list)
    mask_mismatch: List[Tuple[str, str]] = field(default_factory=list)
    orphan_masks: List[str] = field(default_factory=list)
    orphan_reports: List[str] = field(default_factory=list)
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
        d["mask_mismatch"] = [{"path": p, "reason": r} for p, r in self.mask_mismatch]
        return d


def _find_reports(root: Path, image: str, alone: bool) -> List[str]:
    """Every report file :data:`REPORT_PATTERNS` (and ``report.txt`` for a folder's one image) name, in pattern
    order."""
    folder = Path(image).parent
    candidates = [p.format(stem=st) for st in stems(image) for p in REPORT_PATTERNS]
    candidates += list(SHARED_REPORTS) if alone else []
    root_resolved = root.resolve()
    out: List[str] = []
    for cand in candidates:
        rel = os.path.normpath((folder / cand).as_posix())
        if rel.startswith(".."):  # the sibling pattern for an image at the root would leave the archive
            continue
        found = existing_path(root, rel, folder=False)  # "CT.TXT" beside "CT.NII.GZ" too
        if found is not None and root_resolved in (root / found).resolve().parents and found not in out:
            out.append(found)
    return out


def _one_report(root: Path, found: List[str], name: str, warnings: List[str]) -> Optional[str]:
    """The report of an image among the files that match it: the one file, or copies of one text; None (with a
    warning naming the image and the file names) when they differ.

    Why: ``AX.txt`` (preliminary), ``AX_report.txt`` (addendum) and ``report.txt`` (final) used to pair the first
    silently; which one is the report is the site's call, as for reports named by accession number.
    """
    if len(found) <= 1:
        return found[0] if found else None
    if len({_report_text(root / f) for f in found}) == 1:
        return found[0]
    warnings.append(f"{name}: {len(found)} report files match it ({', '.join(Path(f).name for f in found)}); none "
                    "was paired (keep one, or fill the report column)")
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
    if item.files:  # discovery's list: a series split into sub-folders (CT/0001/, CT/0002/) has no top-level file
        files = [root / f for f in item.files]
    else:
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


class _Redactor:
    """``shown(text, image)``: ``text`` without the identifiers in the headers of ``image`` (a series folder or
    file under the root), read once per image. With ``anywhere``, also without any identifier of the archive's
    images that ``text`` holds as a whole name part (``ris/ACC123_report.txt``, ``MRN/ACC/SE0502/``): a scout, a
    reformat or an orphan file may lie in folders named after identifiers that only other series carry."""

    def __init__(self, root: Path, images: List[str]) -> None:
        self.root = root
        self.images = sorted(set(images))
        self.cache: Dict[str, List[str]] = {}
        self._all: Optional[Tuple[set, List[str]]] = None

    def _ids(self, image: str) -> List[str]:
        if image not in self.cache:
            self.cache[image] = dicom_identifiers(self.root / image) if image not in ("", ".") else []
        return self.cache[image]

    def __call__(self, text: str, image: str, anywhere: bool = False) -> str:
        text = redact_identifiers(text, self._ids(image))
        if not anywhere:
            return text
        if self._all is None:  # a set lookup per name part: an archive's thousands of IDs, not a scan per ID
            ids = {i.strip() for im in self.images for i in self._ids(im) if len(i.strip()) >= 3}
            plain = {i.lower() for i in ids if re.fullmatch(r"[A-Za-z0-9]+", i)}
            self._all = (plain, [i for i in ids if not re.fullmatch(r"[A-Za-z0-9]+", i)])
        plain, odd = self._all
        parts = re.split(r"([^A-Za-z0-9]+)", text)
        return redact_identifiers("".join("<patient>" if p.lower() in plain else p for p in parts), odd)


def _mask_problem(root: Path, item: Item) -> Optional[str]:
    """Why the item's mask cannot be used with it (not on its grid, unreadable), redacted; None when it can, or
    when the image's own grid cannot be read from headers (ingest then says what is wrong with the image)."""
    from ctglip_sdk.io import check_mask_grid  # noqa: PLC0415
    from ctglip_sdk.io.discover_checks import series_grid  # noqa: PLC0415

    if not item.files or item.mask is None:
        return None
    try:
        shape, affine = series_grid(root, item.files, item.uid)
    except (OSError, CTGlipError, ValueError):
        return None
    try:
        check_mask_grid(root / item.mask, SimpleNamespace(shape=shape, affine=affine), shown=item.mask)
    except (OSError, CTGlipError) as exc:
        return redact(exc, root, item)
    return None


def _shared_mask_warnings(rows: List[Dict[str, Any]], shared: set, shown: Any) -> List[str]:
    """A warning per mask paired with several series of one folder: their grids all fit it, so which series it
    was made from cannot be told from headers."""
    users: Dict[str, List[str]] = {}
    for r in rows:
        if r["image"] in shared:
            users.setdefault(r["mask"], []).append(r["image"])
    return [f"{shown(mask, images[0])}: paired with {len(images)} series of one folder, all on its grid; check that "
            "it is each one's mask (or write one row per series in manifest.csv)"
            for mask, images in users.items() if len(images) > 1]


def _orphan_masks(masks: List[str], items: List[Item], shown: Any) -> List[str]:
    """Mask files that no image claims (a per-class folder once, as ``folder/``), shown redacted."""
    used = [it.mask for it in items if it.mask]
    out: List[str] = []
    for m in masks:
        if any(m == u or m.startswith(u.rstrip("/") + "/") for u in used):
            continue
        folder = Path(m).parent.as_posix()
        entry = f"{folder}/" if _stem(m).lower() in _CLASS_NAMES else m
        if entry not in out:
            out.append(entry)
    return [shown(m, m.rstrip("/"), anywhere=True) for m in out]


def _split_of(patient: str, seed: int, fractions: Sequence[float]) -> str:
    """A patient's split from a keyed hash: stable when the archive grows (no patient ever changes split)."""
    h = hashlib.sha256(f"{seed}:{patient}".encode("utf-8")).digest()
    u = int.from_bytes(h[:8], "big") / 2.0 ** 64
    train, val = fractions[0], fractions[0] + fractions[1]
    return "train" if u < train else "val" if u < val else "test"


def _assign_splits(patients: List[str], seed: int, fractions: Sequence[float],
                   usable: Optional[Set[str]] = None) -> Dict[str, str]:
    """Split per patient by a keyed hash; ``usable``: the patients with a report (what training can use)."""
    out = {p: _split_of(p, seed, fractions) for p in patients}
    usable = set(patients) if usable is None else usable & set(patients)
    # With few patients a hash can leave a split empty (3 patients: train empty for 2 seeds of 10). Each split
    # the fractions ask for, train first, then gets one patient from the largest split that can spare one, in
    # hash order so the choice is deterministic. Such a patient may move back as the archive grows. Only
    # patients with a report count: a train split of report-less rows made `ctglip train` fail with "no
    # studies in split 'train'" although the manifest looked balanced.
    for name, frac in zip(("train", "val", "test"), fractions):
        if frac <= 0 or name in {out[p] for p in usable}:
            continue
        counts = Counter(out[p] for p in usable)
        donors = [s for s in counts if counts[s] > 1]
        if not donors:
            break
        donor = max(donors, key=lambda s: (counts[s], s == "train"))
        pool = sorted((p for p in usable if out[p] == donor),
                      key=lambda p: hashlib.sha256(f"{seed}:{name}:{p}".encode()).hexdigest())
        out[pool[0]] = name
    return out


def _check_fractions(fractions: Sequence[float]) -> Tuple[float, float, float]:
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ConfigError(f"split fractions must be three numbers (train, val, test), got {fractions!r}") from None
    # NaN passes every comparison below as False (and would put every patient in test): refused by name
    if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
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
    way; the raw id is never written; an empty PatientID gives ``study:<pseudonym of the StudyInstanceUID>`` (with
    a warning), so that a study's series share a split. Localizers (scouts), reformats beside their study's
    acquisition, masks not on their image's grid (checked from headers) and series whose files carry two
    PatientIDs get no row and are listed. Listed, logged and returned paths have the series' identifiers replaced
    by ``<patient>``; the manifest's path columns keep the real paths, which ingest and training read.

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
    found = discovered_items(root)
    items, unreadable, alone = found.items, found.unreadable, found.alone
    if not items:
        raise InputError("no DICOM series or NIfTI image found (docs/data.md, \"Bringing your own data\")",
                         path=root)
    shown = _Redactor(root, [it.image for it in items])
    rows: List[Dict[str, Any]] = []
    missing_mask: List[str] = []
    missing_report: List[str] = []
    empty_report: List[str] = []
    mask_mismatch: List[Tuple[str, str]] = []
    warnings: List[str] = []
    owned: set = set()  # report files some image claims: the others are listed as orphans
    shared = {it.image for it in items if sum(o.image == it.image for o in items) > 1}
    by_stem = _reports_by_stem(root)
    by_accession = no_patient_id = 0
    for item in items:
        # Two series in one folder share a path: the series UID says which one a listed gap is about. Listed
        # paths are shown without the series' identifiers: PACS exports name folders by MRN and accession.
        name = shown(f"{item.image}#{item.key}" if item.image in shared else item.image, item.image)
        named = _find_reports(root, item.image, alone[item.image])
        if not named and item.named_by:  # the study folder's name paired the mask: it names the report too
            named = _find_reports(root, item.named_by, False)
        owned.update(named)
        if item.mask is None:  # neither ingest nor training can use a CT without its organs: listed, no row
            missing_mask.append(name)
            continue
        if len(series_patient_ids_of(root, item)) > 1:  # values never shown: they identify two patients
            unreadable.append((name, "the series' files carry different PatientIDs (first, middle and last file "
                                     "read): two patients' images under one SeriesInstanceUID; no row was written"))
            continue
        problem = _mask_problem(root, item)
        if problem is not None:  # ingest and training would refuse the pair: listed now, no row to fail later
            mask_mismatch.append((name, problem))
            continue
        try:
            meta = _header_meta(root, item, reports_by_accession) if not item.key.startswith("path:") else {}
        except (OSError, CTGlipError) as exc:  # one bad series is recorded; the manifest is still written
            unreadable.append((name, redact(exc, root, item)))
            meta = {}
        accession = meta.pop("accession", None)
        report = _one_report(root, named, name, warnings)
        if report is None and not named and reports_by_accession:
            report = _report_by_accession(accession, by_stem, name, warnings)
            by_accession += report is not None
            owned.add(report)
        if report is None:
            missing_report.append(name)
        elif not _report_text(root / report):  # says nothing: every organ would be taken as normal
            empty_report.append(name)
        contrast = header_contrast(meta) or ""
        sex, age = _checked(meta, name, warnings)
        study_uid = item.study_uid or meta.get("study_uid")
        patient = meta.get("patient")
        if not patient and meta and study_uid:
            # De-identified exports empty PatientID: a pseudonym of the study keeps a study's series (phases,
            # recons) under one patient and in one split; each series its own patient split them silently.
            patient = f"study:{pseudonymize(study_uid)}"
            no_patient_id += 1
        rows.append({
            "patient_id": patient or f"path:{item.image}",
            "study_uid": study_uid or path_key(item.image),
            "series_uid": item.uid,
            "image": item.image, "mask": item.mask, "report": report,
            "age": age, "sex": sex,
            "study_date": meta.get("study_date"), "contrast": contrast, "body_part": meta.get("body_part"),
            "description": meta.get("series_description"),
        })
    if no_patient_id:
        warnings.append(f"{no_patient_id} series have an empty PatientID (a de-identified export?); their patient_id "
                        "is a pseudonym of the StudyInstanceUID, so a study's series share a split, but one "
                        "patient's studies may fall in different splits (fill patient_id to group them)")
    warnings += _shared_mask_warnings(rows, shared, shown)
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
    split = _assign_splits(patients, seed, fr, usable={r["patient_id"] for r in rows if r.get("report")})
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
                           unreadable=unreadable, localizers=[shown(p, p, anywhere=True) for p in found.localizers],
                           derived=[shown(p, p, anywhere=True) for p in found.derived], mask_mismatch=mask_mismatch,
                           orphan_masks=_orphan_masks(found.mask_files, items, shown),
                           orphan_reports=[shown(r, r, anywhere=True) for files in by_stem.values()
                                           for r in files if r not in owned],
                           warnings=warnings, reports_by_accession=by_accession)
