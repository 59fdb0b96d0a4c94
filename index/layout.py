"""Archive layout for ingest: manifest.csv rows or discovered series with masks matched by name; fingerprints."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ctglip_sdk.errors import CTGlipError, InputError
from ctglip_sdk.io.manifest_csv import manifest_rows
from ctglip_sdk.io.paths import is_within, resolve_within, strip_root
from ctglip_sdk.organs import V1, V2
from ctglip_sdk.privacy import dicom_identifiers, redact_identifiers

__all__ = ["Item", "Discovered", "plan_archive", "discovered_items", "existing_path", "fingerprint", "redact",
           "path_key", "MASK_PATTERNS"]

log = logging.getLogger(__name__)

#: Where ``discover`` mode looks for the mask of an image ``<dir>/<stem>.nii.gz`` or DICOM folder ``<dir>/<stem>/``
#: (first match wins); shared names (``segmentations.nii.gz``…) apply only when ``<dir>`` holds one image.
MASK_PATTERNS = (
    "{stem}_seg.nii.gz", "{stem}_seg.nii", "{stem}.seg.nii.gz", "{stem}_mask.nii.gz", "{stem}_segmentation.nii.gz",
    "{stem}_labels.nii.gz", "segmentations/{stem}.nii.gz", "seg/{stem}.nii.gz", "masks/{stem}.nii.gz",
    "{stem}_seg/", "{stem}_segmentations/",
)
#: Masks in a folder beside the images' folder (``images/S.nii.gz`` with ``masks/S.nii.gz``: the layout
#: ``ctglip synth`` writes); tried after :data:`MASK_PATTERNS`, for images below the root only.
SIBLING_MASKS = ("../masks/{stem}.nii.gz", "../segmentations/{stem}.nii.gz", "../seg/{stem}.nii.gz",
                 "../labels/{stem}.nii.gz", "../labelsTr/{stem}.nii.gz", "../labelsTs/{stem}.nii.gz",
                 "../masks/{stem}/", "../segmentations/{stem}/")
SHARED_MASKS = ("segmentations.nii.gz", "segmentation.nii.gz", "seg.nii.gz", "mask.nii.gz", "segmentations/")
_MASK_DIRS = {"segmentations", "seg", "masks", "labels", "labelstr", "labelsts"}  # nnU-Net/MSD: labelsTr
# nnU-Net names an image case_0000.nii.gz (channel 0) and its label case.nii.gz: both stems are tried.
_CHANNEL = re.compile(r"_\d{4}$")
_MASK_SUFFIXES = ("_seg", ".seg", "_mask", "_segmentation", "_labels", "_segmentations")
#: TotalSegmentator class names (v1 and v2), lower-cased: the file names of a per-class mask folder.
_CLASS_NAMES = frozenset(n.lower() for n in list(V1.values()) + list(V2.values()))


@dataclass
class Item:
    """One series to ingest. ``key`` is its identity in the index (the series UID, or ``path:<image>``)."""

    key: str
    image: str
    mask: Optional[str]
    report: Optional[str]
    study_uid: Optional[str]
    fingerprint: str
    load_series_uid: Optional[str] = None  # passed to load_volume when a folder holds several series
    row: Dict[str, Any] = field(default_factory=dict)
    files: Tuple[str, ...] = ()  # discovered: the series' files (relative to the root), sub-folders included
    #: Discovered: the study folder whose name paired the mask (``images/S/<series>/`` with ``masks/S.nii.gz``),
    #: when the series' own name paired none; reports are looked up by this name too.
    named_by: Optional[str] = None

    @property
    def uid(self) -> Optional[str]:
        """The SeriesInstanceUID the key names, or None for a series known by its path."""
        return None if self.key.startswith("path:") else self.key


@dataclass
class Discovered:
    """What :func:`discovered_items` found: the items, ``(path, reason)`` for unreadable files, per image whether
    it is alone in its folder (shared names such as ``seg.nii.gz`` or ``report.txt`` then belong to it), the
    localizers and the reformats (``derived``) left out, and every mask-named NIfTI file (to list orphans)."""

    items: List[Item]
    unreadable: List[Tuple[str, str]]
    alone: Dict[str, bool]
    localizers: List[str]
    derived: List[str]
    mask_files: List[str]


def _stat_entry(path: str, name: str, root: Path) -> Tuple[str, int, int]:
    """(name, size, whole-second mtime) of one file; (name, -1, -1) for a dangling link or a link out of the root.

    Why: one broken symlink used to abort the plan of the whole archive with a raw FileNotFoundError; now that
    series is recorded when it is read, and fixing the link changes the fingerprint, so it is tried again.
    """
    if os.path.islink(path) and not is_within(root, Path(path).resolve()):
        return name, -1, -1
    try:
        st = os.stat(path)
    except OSError:
        return name, -1, -1
    return name, st.st_size, int(st.st_mtime)


def fingerprint(root: Path, *rels: Optional[str]) -> str:
    """Cheap identity of files (sizes and whole-second mtimes, recursively for folders): a change re-ingests.

    Paths must already be confined to ``root`` (``resolve_within``); links are not followed out of it.
    """
    h = hashlib.sha1()
    base = root.resolve()
    for rel in rels:
        if not rel:
            continue
        path = root / rel
        entries: List[Tuple[str, int, int]] = []
        if path.is_dir():
            for dirpath, _dirs, files in os.walk(path):
                for name in sorted(files):
                    full = os.path.join(dirpath, name)
                    entries.append(_stat_entry(full, os.path.relpath(full, path), base))
        elif path.exists() or path.is_symlink():
            entries.append(_stat_entry(str(path), path.name, base))
        h.update(repr((rel, sorted(entries))).encode())
    return h.hexdigest()[:20]


def path_key(rel: str) -> str:
    """The key of a series without a UID: ``path:<relative path>``, hashed when longer than SQL's 255 chars."""
    key = f"path:{rel}"
    return key if len(key) <= 255 else f"path-sha1:{hashlib.sha1(rel.encode()).hexdigest()}"


def redact(exc: BaseException, root: Path, item: Optional[Item] = None,
           identifier: Optional[str] = None) -> str:
    """An error message safe to store and log: archive paths made relative, the patient's identifiers removed
    (``item``'s manifest identifiers and its DICOM header's PatientID, name and accession number, or ``identifier``
    before an item exists)."""
    orig = getattr(exc, "orig", None)
    if isinstance(exc, CTGlipError):
        text = str(exc)
    elif orig is not None:  # a database error: the driver's first line, never the statement or its values
        text = f"the database refused the series: {type(orig).__name__}: {str(orig).splitlines()[0] if str(orig) else ''}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = strip_root(text, root)
    idents = [str(identifier or "")]
    if item is not None:
        idents += [str(item.row.get(col) or "") for col in _MANIFEST_IDENTIFIERS]
        # With or without a manifest: the DICOM header's PatientID, name and accession number, which archives use as
        # folder names ("12345678/CT/IM0010.dcm"), read from one file of the series only now that it has failed. A
        # manifest's patient_id is often a pseudonym (`ctglip manifest` writes one), so it hides none of them.
        idents += dicom_identifiers(Path(root) / item.image)
    return redact_identifiers(text, idents)[:500]


#: Manifest columns that may hold a patient's identifiers (docs/data.md names patient_id; hand-written manifests
#: made from PACS exports may carry the others).
_MANIFEST_IDENTIFIERS = ("patient_id", "patient_name", "accession", "accession_number", "birth_date")


def _clean(row: Dict[str, Any]) -> Dict[str, Any]:
    return {str(k).strip().lower(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k}


def _from_manifest(root: Path, manifest: Path) -> Tuple[List[Item], List[Tuple[str, str]]]:
    items: List[Item] = []
    errors: List[Tuple[str, str]] = []
    seen: set = set()
    for n, raw in enumerate(manifest_rows(manifest, required=("image",)), start=2):
        row = _clean(raw)
        image = row.get("image") or ""
        if not image:
            errors.append((f"manifest-line:{n}", "empty 'image' cell"))
            continue
        key = row.get("series_uid") or path_key(image)
        if len(key) > 255:
            errors.append((f"manifest-line:{n}", "series_uid longer than 255 characters"))
            continue
        if key in seen:
            errors.append((f"manifest-line:{n}", f"series {key} appears twice in manifest.csv; kept the first"))
            continue
        seen.add(key)
        try:  # confinement first: nothing outside the root is walked or even stat'ed (docs/security.md)
            for rel in (image, row.get("mask"), row.get("report")):
                if rel:
                    resolve_within(root, rel)
        except InputError as exc:
            errors.append((key, redact(exc, root, identifier=row.get("patient_id"))))
            continue
        items.append(Item(key=key, image=image, mask=row.get("mask") or None, report=row.get("report") or None,
                          study_uid=row.get("study_uid") or None,
                          fingerprint=fingerprint(root, image, row.get("mask")), row=row))
    return items, errors


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_mask_name(path: str) -> bool:
    """True for a mask file: in a mask folder (``segmentations/``, ``labelsTr/``, or a per-class folder such as
    ``S_seg/``), named like one (``S_seg.nii.gz``), or a shared mask name (``seg.nii.gz``)."""
    parts = Path(path).parts
    return any(p.lower() in _MASK_DIRS or p.lower().endswith(_MASK_SUFFIXES) for p in parts[:-1]) or \
        _stem(path).lower().endswith(_MASK_SUFFIXES) or Path(path).name.lower() in {m.rstrip("/") for m in SHARED_MASKS}


def stems(image: str) -> List[str]:
    """The names an image's mask or report may carry: its stem, and without nnU-Net's ``_0000`` channel suffix."""
    stem = _stem(image)
    base = _CHANNEL.sub("", stem)
    return [stem] if base == stem or not base else [stem, base]


def _images_under(images: List[Any]) -> Dict[str, int]:
    """Folder -> number of images anywhere below it (every ancestor of every image path, the root left out)."""
    out: Dict[str, int] = {}
    for s in images:
        for folder in Path(s.path).parents:
            if folder.as_posix() not in ("", "."):
                out[folder.as_posix()] = out.get(folder.as_posix(), 0) + 1
    return out


def _study_folder(image: str, under: Dict[str, int]) -> Optional[str]:
    """The folder above a DICOM series folder when that series is the only image anywhere under it (a study folder
    ``images/S/<SeriesInstanceUID>/``, the layout ``ctglip synth --format dicom`` writes); None at the root or when
    the folder holds other images, whose masks its name could belong to as well."""
    parent = Path(image).parent.as_posix()
    return parent if under.get(parent) == 1 else None


def _find_mask(root: Path, image: str, alone: bool, inside: bool = False) -> Optional[str]:
    folder = Path(image).parent
    # A DICOM folder that holds one CT series (scouts aside) owns what lies in it: TotalSegmentator's output is
    # often written there (``-o STUDY/segmentations``).
    candidates = [f"{_stem(image)}/{m}" for m in SHARED_MASKS] if inside else []
    candidates += [p.format(stem=st) for st in stems(image) for p in MASK_PATTERNS]
    candidates += list(SHARED_MASKS) if alone else []
    if folder.as_posix() not in ("", "."):  # sibling folders (images/, masks/) exist only below the root
        candidates += [p.format(stem=st) for st in stems(image) for p in SIBLING_MASKS]
    names = {st.lower() for st in stems(image)}
    for cand in candidates:
        rel = existing_path(root, os.path.normpath((folder / cand.rstrip("/")).as_posix()), cand.endswith("/"))
        if rel is None:
            continue
        if not cand.endswith("/") and _stem(rel).lower() in names and _per_class_file(root, rel):
            continue  # ``segmentations/aorta.nii.gz`` is one organ of a study, not the mask of a series "AORTA"
        return rel
    return None


def _per_class_file(root: Path, rel: str) -> bool:
    """True when ``rel`` is one class of a per-class mask folder: it is named like a TotalSegmentator class, or
    its folder holds other files so named.

    Why: ``P3/CTA/AORTA/`` matched ``segmentations/{stem}.nii.gz`` to ``segmentations/aorta.nii.gz``, a binary
    mask whose label 1 loads as v1's spleen: the wrong organ, and no error anywhere.
    """
    if _stem(rel).lower() in _CLASS_NAMES:
        return True
    entries = _listing(str((root / rel).parent))
    return sum(1 for name in entries if _stem(name).lower() in _CLASS_NAMES and name.lower().endswith(
        (".nii", ".nii.gz"))) >= 2


def existing_path(root: Path, rel: str, folder: bool) -> Optional[str]:
    """``rel`` as it is spelt on disk when it exists (as a folder or a file), its last part matched without regard
    to case: archives written on Windows name a mask ``CT_seg.NII.GZ`` beside ``CT.NII.GZ``."""
    target = root / rel
    if target.is_dir() if folder else target.is_file():
        return Path(rel).as_posix()
    entry = _listing(str(target.parent)).get(target.name.lower())
    if entry is not None and ((target.parent / entry).is_dir() if folder else (target.parent / entry).is_file()):
        return (Path(rel).parent / entry).as_posix()
    return None


@functools.lru_cache(maxsize=4096)
def _listing(folder: str) -> Dict[str, str]:
    """Lower-cased name -> name of a folder's entries (cached for one discovery; cleared by discovered_items)."""
    try:
        return {e.lower(): e for e in sorted(os.listdir(folder))}
    except OSError:
        return {}


def discovered_items(root: Path) -> Discovered:
    """Discovered CT images paired with masks (:class:`Discovered`). Localizers (scouts) and reformats of a study
    that has another image (coronal/sagittal MPR, MIP, VRT: ``SeriesInfo.is_derived``) are left out: they are
    not the study's acquisition, and counted in a folder they would keep the study's own CT from its shared mask
    and report."""
    from ctglip_sdk.io import discover  # noqa: PLC0415

    found = discover(root)
    _listing.cache_clear()  # folder listings are read fresh for each discovery
    unreadable: List[Tuple[str, str]] = list(found.unreadable)
    candidates = [s for s in found if not _is_mask_name(s.path) and (s.modality in (None, "CT"))]
    localizers = [s.path for s in candidates if s.is_localizer]
    rest = [s for s in candidates if not s.is_localizer]
    # A reformat is left out only beside an acquisition of its study (its StudyInstanceUID, or its folder for
    # NIfTI): a study exported as a coronal series alone keeps it.
    def study(s: Any) -> str:
        return s.study_uid or Path(s.path).parent.as_posix()
    acquired = {study(s) for s in rest if not s.is_derived}
    derived = [s.path for s in rest if s.is_derived and study(s) in acquired]
    images = [s for s in rest if not (s.is_derived and study(s) in acquired)]
    if localizers or derived:
        log.info("left out %d localizer/scout and %d reformatted series", len(localizers), len(derived))
    per_dir: Dict[str, int] = {}
    for s in images:
        per_dir[Path(s.path).parent.as_posix()] = per_dir.get(Path(s.path).parent.as_posix(), 0) + 1
    items: List[Item] = []
    alone: Dict[str, bool] = {}
    under = _images_under(images)
    for s in images:
        alone[s.path] = per_dir[Path(s.path).parent.as_posix()] == 1
        inside = s.kind == "dicom" and (root / s.path).is_dir() and sum(o.path == s.path for o in images) == 1
        mask = _find_mask(root, s.path, alone[s.path], inside)
        named_by = None
        if mask is None and s.kind == "dicom":
            named_by = _study_folder(s.path, under)
            mask = _find_mask(root, named_by, False) if named_by else None
            named_by = named_by if mask is not None else None
        key = s.series_uid or path_key(s.path)
        several = sum(1 for o in found if o.path == s.path) > 1
        items.append(Item(key=key, image=s.path, mask=mask, report=None, study_uid=s.study_uid,
                          fingerprint=fingerprint(root, s.path, mask),
                          load_series_uid=s.series_uid if several else None, files=s.files, named_by=named_by))
    masks = [s.path for s in found if s.kind == "nifti" and _is_mask_name(s.path)]
    return Discovered(items, unreadable, alone, localizers, derived, masks)


def _from_discovery(root: Path) -> Tuple[List[Item], List[Tuple[str, str]]]:
    found = discovered_items(root)
    items, unreadable = found.items, found.unreadable
    # One entry per folder, not per file: 35 truncated slices of one series are one failed series, not 35.
    by_folder: Dict[str, List[Tuple[str, str]]] = {}
    for rel, reason in unreadable:
        by_folder.setdefault(Path(rel).parent.as_posix(), []).append((rel, reason))
    errors = []
    for folder, files in by_folder.items():
        if len(files) == 1:
            key = path_key(files[0][0])  # hashed past SQL's 255 characters, as series keys are
            errors.append((key, files[0][1] if key.startswith("path:") else f"{files[0][0]}: {files[0][1]}"))
        else:
            rel, reason = files[0]
            key = path_key(f"{folder}/")
            errors.append((key, f"{len(files)} unreadable files, e.g. "
                                f"{Path(rel).name if key.startswith('path:') else rel}: {reason}"))
    return items, errors


def plan_archive(root: Path) -> Tuple[List[Item], List[Tuple[str, str]]]:
    """The series of an archive, in a stable order, plus ``(key, reason)`` for entries that cannot be planned.

    ``ROOT/manifest.csv`` (columns of docs/data.md) is authoritative when present; otherwise DICOM series and
    NIfTI images are discovered and each is paired with a mask by name (:data:`MASK_PATTERNS`).

    Example:
        >>> items, errors = plan_archive(Path("archive/"))  # doctest: +SKIP
    """
    manifest = root / "manifest.csv"
    if manifest.is_file():
        items, errors = _from_manifest(root, manifest)
    else:
        items, errors = _from_discovery(root)
    log.info("planned %d series (%d unplannable) in %s", len(items), len(errors), root.name)
    return items, errors
