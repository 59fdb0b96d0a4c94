"""Archive reading and the training dataset: cached preprocessed studies + organ texts and labels from reports."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ctglip_sdk import organs as vocab
from ctglip_sdk.errors import CTGlipError, InputError
from ctglip_sdk.reports.text_file import read_report_text
from ctglip_sdk.training.cache import CachedStudy, PreprocessCache

__all__ = ["StudyRecord", "StudyText", "UNSPECIFIED", "read_manifest", "read_truth", "relative_reason", "archive_seed",
           "annotate_report", "report_labels", "report_truth", "safe_reason", "study_hash", "read_reports", "ReportTexts", "report_split_labels", "shared_patients",
           "StudyDataset", "collate_studies", "build_cache", "CacheBuild", "is_cached"]

log = logging.getLogger(__name__)
_REQUIRED = ("study_uid", "image", "mask", "report", "split")


@dataclass(frozen=True)
class StudyRecord:
    """One manifest row, paths resolved inside the archive root."""

    study_uid: str
    image: Path
    mask: Path
    report: Path
    split: str
    #: The manifest's ``contrast`` column (e.g. "none", "portal_venous") or "" when the archive has none:
    #: evaluation reports AUC per phase, since a lesion's contrast with its organ depends on it.
    contrast: str = ""
    #: The manifest's ``patient_id`` column ("" when it has none), used only to count patients shared between
    #: splits; kept out of repr so that a record printed in a log or traceback carries no patient identifier.
    patient_id: str = field(default="", repr=False)
    #: The manifest's ``series_uid`` ("" when it has none): which series to read when the image folder holds
    #: several (a localizer or a second reconstruction beside the CT); a folder of one series ignores it.
    series_uid: str = ""

    @cached_property  # read for every cache lookup of every step: the folder is stat'ed once
    def series(self) -> Optional[str]:
        """The series to read and key the cache by: ``series_uid`` for a DICOM folder, None otherwise."""
        return (self.series_uid or None) if self.image.is_dir() else None


def _manifest_rows(root: Path) -> Tuple[Path, List[Dict[str, str]]]:
    """(manifest path, its rows) after checking the required columns."""
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise InputError("no manifest.csv: not an archive in the documented layout (docs/data.md); for a folder of your "
                         "own, `ctglip manifest ROOT` writes one", path=root)
    # utf-8-sig: a manifest saved by Excel starts with a BOM, which would otherwise rename the first column.
    from ctglip_sdk.io.manifest_csv import manifest_rows

    return manifest, manifest_rows(manifest, required=_REQUIRED)


def read_manifest(root: Any, split: Optional[str] = None) -> List[StudyRecord]:
    """Rows of ROOT/manifest.csv, every path confined to ROOT.

    ``split`` selects rows: ``None`` or ``"all"`` every row, a name one split, ``"train,val"`` several.

    Example:
        >>> len(read_manifest("archive/", split="train"))  # doctest: +SKIP
        140
    """
    from ctglip_sdk.io import resolve_within

    root = Path(root)
    manifest, rows = _manifest_rows(root)
    # "all" and comma lists are the syntax eval/calibrate accept too, so one spelling works everywhere.
    wanted = None if split is None or split == "all" else {s.strip() for s in split.split(",") if s.strip()}
    out = []
    incomplete = []
    for n, r in enumerate(rows, start=2):
        if wanted is not None and r["split"] not in wanted:
            continue
        # `ctglip manifest` writes rows for images it found no mask or report for (ingest can use them);
        # training and evaluation need all three, so such rows are left out and counted, not read as the root.
        if not all((r.get(c) or "").strip() for c in ("image", "mask", "report")):
            incomplete.append(n)
            continue
        out.append(StudyRecord(r["study_uid"], resolve_within(root, r["image"]), resolve_within(root, r["mask"]),
                               resolve_within(root, r["report"]), r["split"], (r.get("contrast") or "").strip(),
                               (r.get("patient_id") or "").strip(), (r.get("series_uid") or "").strip()))
    if incomplete:
        log.warning("%s: left out %d row(s) without an image, mask or report (lines %s)", manifest,
                    len(incomplete), ", ".join(map(str, incomplete[:10])) + (" ..." if len(incomplete) > 10 else ""))
    return out


def study_hash(study_uid: str) -> str:
    """A short hash of a study UID: a model folder records which studies calibrated it without listing them."""
    return hashlib.blake2b(study_uid.encode(), digest_size=8).hexdigest()


def relative_reason(reason: str, root: Any) -> str:
    """A skipped study's reason with the archive root taken off its paths, as ingest records them
    (:func:`ctglip_sdk.io.paths.strip_root`)."""
    from ctglip_sdk.io.paths import strip_root

    return strip_root(reason, root)


def safe_reason(exc: BaseException, rec: "StudyRecord") -> str:
    """Why a study was left out, without its patient's identifiers: the manifest's patient_id and, for a DICOM
    image, the PatientID, name and accession number of its header (archives name folders after them)."""
    from ctglip_sdk.privacy import dicom_identifiers, redact_identifiers

    text = str(exc)
    idents = [rec.patient_id] + (dicom_identifiers(rec.image) if rec.image and Path(rec.image).exists() else [])
    return redact_identifiers(text, idents)


def read_truth(root: Any) -> Dict[str, List[Dict[str, Any]]]:
    """study_uid -> findings of ROOT/truth.jsonl (ground truth: evaluation only, never training labels)."""
    path = Path(root) / "truth.jsonl"
    if not path.is_file():
        raise InputError("no truth.jsonl: evaluation needs ground truth (docs/data.md)", path=Path(root))
    out: Dict[str, List[Dict[str, Any]]] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                out[obj["study_uid"]] = list(obj.get("findings", []))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(f"line {n}: not a truth record ({exc})", path=path) from None
    return out


def archive_seed(root: Any) -> Optional[int]:
    """The generator seed recorded in ROOT/synth.json, or None for archives without one."""
    path = Path(root) / "synth.json"
    try:
        seed = json.loads(path.read_text()).get("seed")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return int(seed) if isinstance(seed, int) else None


@dataclass
class StudyText:
    """What the report says, per organ class: organ-level text, findings present and uncertain."""

    organ_texts: Dict[str, str] = field(default_factory=dict)
    present: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    uncertain: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    report: str = ""


#: Marker in StudyText.uncertain: the report calls the organ abnormal in words the dictionary does not cover,
#: so "this organ is normal" must not be a training target for it.
UNSPECIFIED = "_unspecified_abnormality"


def annotate_report(text: str, dictionary: Any = None) -> StudyText:
    """Organ texts and per-organ finding labels of one report, from ctglip_sdk.reports (not from truth).

    Labels follow `ctglip_sdk.reports.labels`: group statements go to each member class, a focal finding
    on a paired organ without a side is uncertain on both sides. Organs the report does not mention get no
    text here (the dataset draws a normal phrase for them).

    Example:
        >>> annotate_report("Left renal cyst. Normal spleen.").present  # doctest: +SKIP
        {'kidney_left': ('renal_cyst',)}
    """
    from ctglip_sdk import reports

    present: Dict[str, set] = {}
    uncertain: Dict[str, set] = {}
    for (organ, key), status in reports.labels(text, dictionary).items():
        value = str(status)
        if value == "present":
            present.setdefault(organ, set()).add(key if key is not None else UNSPECIFIED)
        elif value == "uncertain":
            uncertain.setdefault(organ, set()).add(key if key is not None else UNSPECIFIED)
    for organ, keys in present.items():  # an unnamed abnormality is not a finding label, only "not normal"
        if UNSPECIFIED in keys:
            keys.discard(UNSPECIFIED)
            uncertain.setdefault(organ, set()).add(UNSPECIFIED)
    texts = dict(reports.organ_texts(text, policy="skip", dictionary=dictionary))
    return StudyText(texts, {k: tuple(sorted(v)) for k, v in present.items() if v},
                     {k: tuple(sorted(v - present.get(k, set()))) for k, v in uncertain.items()}, text)


def report_labels(records: Sequence[StudyRecord], dictionary: Any = None) -> List[StudyText]:
    """:func:`annotate_report` of each record's report, in order: the labels of an archive without truth.jsonl.

    Reports are read with :func:`ctglip_sdk.reports.read_report_text` (UTF-8, UTF-16 with a BOM, else cp1252).

    Raises:
        InputError: a report cannot be read (naming the file).
    """
    return [annotate_report(read_report_text(rec.report), dictionary) for rec in records]


class ReportTexts(NamedTuple):
    """The studies whose report gives labels, their :class:`StudyText` (same order), and the studies left out
    because their report could not be read: ``(study_uid, reason)``."""

    records: List[StudyRecord]
    texts: List[StudyText]
    skipped: List[Tuple[str, str]]


def _uid_list(uids: Sequence[str], limit: int = 20) -> str:
    return ", ".join(uids[:limit]) + (f" (+{len(uids) - limit} more)" if len(uids) > limit else "")


def read_reports(records: Sequence[StudyRecord], dictionary: Any = None, *, purpose: str = "training") -> ReportTexts:
    """Read and annotate each record's report once; leave out the studies whose report gives no labels.

    An empty (or whitespace-only) report says nothing, yet would count as "every organ normal": such studies
    are left out with one warning listing them, as rows without a report are (``read_manifest``). A report that
    cannot be read leaves its study out with a warning naming the file, and is listed in ``skipped``: a run over
    hundreds of studies goes on. ``purpose`` names the stage in the warnings.

    Example:
        >>> got = read_reports(read_manifest("archive/", "train"))  # doctest: +SKIP
        >>> len(got.records), got.skipped                            # doctest: +SKIP
        (140, [])
    """
    keep: List[StudyRecord] = []
    texts: List[StudyText] = []
    skipped: List[Tuple[str, str]] = []
    empty: List[str] = []
    for rec in records:
        try:
            text = read_report_text(rec.report)
        except InputError as exc:
            reason = safe_reason(exc, rec)
            log.warning("study %s left out of %s: %s", rec.study_uid, purpose, reason)
            skipped.append((rec.study_uid, reason))
            continue
        if not text.strip():
            empty.append(rec.study_uid)
            continue
        keep.append(rec)
        texts.append(annotate_report(text, dictionary))
    if empty:
        log.warning("%s: left out %d stud%s whose report is empty (it states no label, yet would read as every "
                    "organ normal): %s", purpose, len(empty), "y" if len(empty) == 1 else "ies", _uid_list(empty))
    return ReportTexts(keep, texts, skipped)


def report_truth(records: Sequence[StudyRecord], dictionary: Any, texts: Optional[Sequence[StudyText]] = None
                 ) -> Tuple[Dict[str, List[Dict[str, Any]]], Set[Tuple[str, str, str]]]:
    """truth.jsonl's shape from the reports: study_uid -> present (organ, finding); plus the uncertain pairs.

    A report's unnamed abnormality of an organ (``UNSPECIFIED``) makes every other finding of that organ uncertain
    (one the report states stays present, as calibration labels it).
    ``texts`` are the records' already annotated reports (``read_reports``); without them each is read here.
    """
    truth: Dict[str, List[Dict[str, Any]]] = {}
    unsure: Set[Tuple[str, str, str]] = set()
    for rec, st in zip(records, texts if texts is not None else report_labels(records, dictionary)):
        truth[rec.study_uid] = [{"organ": o, "finding": k} for o, keys in st.present.items() for k in keys]
        for organ, keys in st.uncertain.items():
            if UNSPECIFIED in keys:  # the organ's other findings; one the report states stays a positive
                stated = set(st.present.get(organ, ()))
                keys = tuple(e.key for e in _organ_findings(dictionary, organ) if e.key not in stated)
            unsure.update((rec.study_uid, organ, k) for k in keys)
    return truth, unsure


def report_split_labels(records: Sequence[StudyRecord], val_records: Sequence[StudyRecord], dictionary: Any,
                        split: str, val_split: Optional[str], manifest: Path, val_manifest: Path
                        ) -> Tuple[List[StudyRecord], List[StudyRecord], Dict[str, List[Dict[str, Any]]],
                                   Set[Tuple[str, str, str]], List[Tuple[str, str]]]:
    """Report labels of a scored split and its threshold split (``evaluate(labels="reports")``).

    Each report is read once even when the splits overlap; studies whose report is empty or unreadable are left
    out of both (``read_reports``). Returns ``(records, val_records, truth, unsure, skipped)``: ``skipped`` lists
    the scored studies left out for an unreadable report, as ``(study_uid, reason)``.

    Raises:
        InputError: no scored study (or, with a ``val_split``, no threshold study) has a report with labels.
    """
    key = lambda r: (r.study_uid, str(r.report))  # noqa: E731 - the same study read from one report path
    both = list({key(r): r for r in [*records, *val_records]}.values())
    got = read_reports(both, dictionary, purpose="evaluation")
    ok = {key(r) for r in got.records}
    truth, unsure = report_truth(got.records, dictionary, got.texts)
    scored = [r for r in records if key(r) in ok]
    val = [r for r in val_records if key(r) in ok]
    # As for a misspelt split: metrics on nothing, or thresholds quietly left at 0.5, would mislead.
    empty = [(name, path) for recs, name, path in ((scored, split, manifest), (val, val_split, val_manifest))
             if name is not None and not recs]
    if empty:
        raise InputError(f"no study of split {empty[0][0]!r} has a readable, non-empty report to take labels from",
                         path=empty[0][1])
    uids = {r.study_uid for r in records}
    return scored, val, truth, unsure, [s for s in got.skipped if s[0] in uids]


def shared_patients(scored: Sequence[StudyRecord], archive: Any, what: str,
                    others: Optional[Dict[str, Iterable[StudyRecord]]] = None) -> Dict[str, int]:
    """Count the patients of ``scored`` who also have studies in another split (patient leakage); warn once.

    Other splits are the other rows of ARCHIVE's manifest and each group of ``others`` (e.g. a separate
    calibration or threshold archive); a study in ``scored`` itself never counts, so an in-sample choice is not
    reported as leakage. Needs the manifest's ``patient_id`` column (else returns ``{}``). The warning and the
    result carry counts and split names only, never an identifier.

    Returns:
        ``{other split: patients of scored with a study there}``, only for splits that share patients.
    """
    mine = {r.patient_id for r in scored if r.patient_id}
    if not mine:
        return {}
    uids = {r.study_uid for r in scored}
    groups: Dict[str, Set[str]] = {}
    for row in _manifest_rows(Path(archive))[1]:
        pid = (row.get("patient_id") or "").strip()
        if pid and row["study_uid"] not in uids:
            groups.setdefault(f"split {row['split']!r}", set()).add(pid)
    for name, recs in (others or {}).items():
        groups.setdefault(name, set()).update(r.patient_id for r in recs if r.patient_id and r.study_uid not in uids)
    shared = {name: len(mine & ids) for name, ids in sorted(groups.items()) if mine & ids}
    if shared:
        n = len(mine & set().union(*groups.values()))
        log.warning("patient leakage: %d of the %d patients of %s also have studies in %s; keep each patient in one "
                    "split (ctglip manifest splits by patient), or metrics on them are optimistic", n, len(mine),
                    what, ", ".join(f"{name} ({k} patient{'s' if k != 1 else ''})" for name, k in shared.items()))
    return shared


def _organ_findings(dictionary: Any, organ: str) -> List[Any]:
    try:
        return list(dictionary.for_organ(organ))
    except Exception:  # noqa: BLE001 - organs the dictionary has no findings for
        return []


def _fallback_text(organ: str, dictionary: Any, rng: np.random.Generator) -> str:
    """Text of an organ the report does not mention: a normal phrase of it, else '<organ> is unremarkable'."""
    phrases: List[str] = []
    if dictionary is not None and hasattr(dictionary, "normal_phrases"):
        try:
            phrases = list(dictionary.normal_phrases(organ))
        except Exception:  # noqa: BLE001 - the dictionary knows only organs with findings
            phrases = []
    if phrases:
        return phrases[int(rng.integers(len(phrases)))]
    return f"the {vocab.display_name(organ)} is unremarkable"


class StudyDataset(Dataset):
    """Studies of one split: cached image + organ weights, organ texts and report labels.

    Items are keyed by (epoch, index) so the organ sample of each item is drawn from (seed, epoch, index)
    in whatever worker loads it (exact resume, no shared RNG). Each item holds every organ with a finding
    (present or uncertain) in the report, then a weighted random sample of the other organs up to
    `organs_per_study`: organs the dictionary has findings for (`finding_organs`) weigh `finding_weight`,
    the rest 1, so every labelled organ keeps appearing for the organ-identity loss.
    """

    def __init__(self, records: Sequence[StudyRecord], cache: PreprocessCache, texts: Sequence[StudyText],
                 dictionary: Any, organs_per_study: int = 48, seed: int = 0, finding_organs: Sequence[str] = (),
                 finding_weight: float = 3.0) -> None:
        if len(records) != len(texts):
            raise ValueError("one StudyText per record is required")
        self.records = list(records)
        self.cache = cache
        self.texts = list(texts)
        self.dictionary = dictionary
        self.organs_per_study = organs_per_study
        self.seed = seed
        self.finding_organs = set(finding_organs)
        self.finding_weight = finding_weight

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: Any) -> Dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        rec, st = self.records[i], self.texts[i]
        study = self.cache.load(rec.image, rec.mask, rec.series)
        rng = np.random.default_rng([self.seed, 104729, int(epoch), int(i)])
        must = [o for o in study.names if o in st.present or o in st.uncertain]
        rest = [o for o in study.names if o not in set(must)]
        room = max(0, self.organs_per_study - len(must))
        extra: List[str] = []
        if rest and room:
            # Every organ must appear often enough to learn its name; organs the dictionary has findings for
            # are drawn more often (they carry the abnormality negatives).
            w = np.array([self.finding_weight if o in self.finding_organs else 1.0 for o in rest])
            pick = rng.choice(len(rest), size=min(room, len(rest)), replace=False, p=w / w.sum())
            extra = [rest[int(j)] for j in pick]
        chosen = [o for o in study.names if o in set(must) | set(extra)]
        sub = study.select(chosen)
        texts = [st.organ_texts.get(o) or _fallback_text(o, self.dictionary, rng) for o in chosen]
        return {"index": i, "image": sub.image, "grid": sub.grid, "organs": chosen, "rows": sub.rows,
                "cols": sub.cols, "vals": sub.vals, "stats": sub.stats, "texts": texts,
                "present": [st.present.get(o, ()) for o in chosen],
                "uncertain": [st.uncertain.get(o, ()) for o in chosen], "report": st.report}


def collate_studies(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Pad images to the batch's largest box (far side, air value) and keep per-study organ data as lists."""
    shape = [max(it["image"].shape[d] for it in items) for d in range(1, 4)]
    images = []
    for it in items:
        img = it["image"]
        # F.pad lists the last axis first: (z_lo, z_hi, y_lo, y_hi, x_lo, x_hi); pad only the far sides.
        pad = [0, shape[2] - img.shape[3], 0, shape[1] - img.shape[2], 0, shape[0] - img.shape[1]]
        # img.min() is the window's low end (air), the value the model's own padding uses.
        images.append(F.pad(img, pad, value=float(img.min())) if any(pad) else img)
    studies = [{k: v for k, v in it.items() if k != "image"} for it in items]
    return {"image": torch.stack(images), "studies": studies}


class CacheBuild(NamedTuple):
    """What ``build_cache`` did: entries built, and the studies it could not preprocess ``(study_uid, reason)``."""

    built: int
    skipped: List[Tuple[str, str]]


def is_cached(cache: PreprocessCache, record: StudyRecord) -> bool:
    """True when the study's cache entry exists (False, not an error, when a source file is missing)."""
    try:
        return cache.has(record.image, record.mask, record.series)
    except CTGlipError:  # a source file is missing: not cached, and build() will say why
        return False


def build_cache(records: Sequence[StudyRecord], cache: PreprocessCache, workers: int = 0,
                progress: bool = True) -> CacheBuild:
    """Preprocess every study missing from the cache (resumable: present entries are skipped).

    A study that cannot be read (a truncated DICOM slice, a corrupt or missing image or mask, a mask on another
    grid than its image's, a mask with no organ on the image's grid) is left out with a warning naming it and
    the reason, and listed in ``skipped``: preprocessing hundreds of studies is a batch job, as ingest and
    evaluation are. Nothing about a failure is stored, so a later call re-tries the study (after its files are
    fixed, their size and mtime give it a new cache key anyway). Uses ``workers`` DataLoader processes when > 0.

    Example:
        >>> done = build_cache(read_manifest("archive/", "train"), cache)  # doctest: +SKIP
        >>> done.built, [uid for uid, _ in done.skipped]                    # doctest: +SKIP
        (139, ['1.2.826.0.1.3680043.8.498.1'])
    """
    todo = [r for r in records if not is_cached(cache, r)]
    if not todo:
        return CacheBuild(0, [])

    class _Build(Dataset):
        def __len__(self) -> int:
            return len(todo)

        def __getitem__(self, i: int) -> Tuple[int, Optional[str]]:
            # Caught here, in the worker: an exception raised in a DataLoader worker ends the whole loader.
            try:
                cache.build(todo[i].image, todo[i].mask, todo[i].series)
            except (CTGlipError, OSError) as exc:
                return i, safe_reason(exc, todo[i])
            return i, None

    from tqdm.auto import tqdm

    skipped: List[Tuple[str, str]] = []
    loader = DataLoader(_Build(), batch_size=None, num_workers=workers)
    for i, reason in tqdm(loader, total=len(todo), desc="preprocess", unit="study", disable=not progress):
        if reason is not None:
            log.warning("study %s cannot be preprocessed and is left out: %s", todo[int(i)].study_uid, reason)
            skipped.append((todo[int(i)].study_uid, reason))
    return CacheBuild(len(todo) - len(skipped), skipped)


def cached_study(cache: PreprocessCache, record: StudyRecord) -> CachedStudy:
    """Shortcut: the cached entry of one record."""
    return cache.load(record.image, record.mask, record.series)
