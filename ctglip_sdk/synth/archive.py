"""Synthetic patients and archives: generate_patient (in memory) and generate_archive (files + manifest + truth)."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

import numpy as np

from ctglip_sdk.errors import ConfigError, InputError
from ctglip_sdk.io.paths import require_path
from ctglip_sdk.organs import V1
from ctglip_sdk.synth.anatomy import sample_anatomy
from ctglip_sdk.synth.findings import apply_to_anatomy, sample_findings
from ctglip_sdk.synth.phantom import render
from ctglip_sdk.synth.phrasebook import CONTRAST_AGENTS, write_report
from ctglip_sdk.synth.presets import Preset, get_preset
from ctglip_sdk.synth.writers import (Identity, make_identity, write_class_masks, write_dicom_series, write_mask,
                                      write_nifti)
from ctglip_sdk.volume import Segmentation, Volume

__all__ = ["SyntheticPatient", "ArchiveSummary", "generate_patient", "generate_archive", "assign_splits",
           "MANIFEST_COLUMNS"]

log = logging.getLogger(__name__)

#: Manifest columns, in order (paths are relative to the archive root).
MANIFEST_COLUMNS = ["patient_id", "study_uid", "series_uid", "image", "mask", "report", "split", "age", "sex",
                    "study_date", "contrast", "preset", "n_findings"]
_OWNED = ("images", "masks", "reports", "manifest.csv", "truth.jsonl", "synth.json")

SeedLike = Union[int, np.random.SeedSequence, np.random.Generator]


@dataclass
class SyntheticPatient:
    """One generated study in memory.

    Attributes:
        volume: HU volume (RAS+), meta carries UIDs, age, sex, contrast and a pseudonym, never identifiers.
        segmentation: TotalSegmentator v1 labels on the volume's grid.
        report: the radiology report text.
        findings: truth entries (organ, finding, side, size_mm, location, hu, ...), one per rendered finding.
        identity: the fake identifiers written into DICOM headers.
    """

    volume: Volume
    segmentation: Segmentation
    report: str
    findings: List[dict]
    identity: Identity
    meta: Dict[str, object] = field(default_factory=dict)


@dataclass
class ArchiveSummary:
    """What generate_archive wrote."""

    root: Path
    manifest: Path
    truth: Path
    n_patients: int
    fmt: str
    preset: str
    seed: int
    splits: Dict[str, int]
    finding_counts: Dict[str, int]  # finding -> studies that have it
    seconds: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(root=str(self.root), manifest=str(self.manifest), truth=str(self.truth))
        return d


def _seed_sequence(seed: SeedLike, index: int = 0) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, np.random.Generator):
        return np.random.SeedSequence(int(seed.integers(2 ** 63)))
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        # Patient i of an archive depends on (seed, i) only: archives of different sizes share their patients.
        return np.random.SeedSequence(int(seed), spawn_key=(int(index),))
    raise ConfigError(f"seed must be a non-negative int, a SeedSequence or a Generator, got {seed!r}")


def generate_patient(seed: SeedLike = 0, preset: Union[str, Preset] = "small", *,
                     prevalence: Optional[Mapping[str, float]] = None, findings: Optional[Iterable[str]] = None,
                     sex: Optional[str] = None, age: Optional[int] = None, contrast: Optional[bool] = None,
                     index: int = 0, archive_seed: Optional[int] = None) -> SyntheticPatient:
    """Generate one synthetic CT study in memory: volume, masks, report and ground truth.

    Args:
        seed: an int (with ``index``, the patient of an archive), a SeedSequence or a Generator.
        preset: "small", "default", "clinical" or a Preset.
        prevalence: finding key -> probability (defaults: ``DEFAULT_PREVALENCE``).
        findings: exactly these finding keys (overrides prevalence), e.g. ``["renal_stone"]``.
        sex, age, contrast: fix demographics or phase ("F"/"M", years, True = portal venous).

    Example:
        >>> p = generate_patient(3, "small", findings=["splenomegaly"])
        >>> [f["finding"] for f in p.findings], p.volume.array.dtype.name
        (['splenomegaly'], 'float32')
    """
    p = get_preset(preset)
    if sex is not None and sex not in ("F", "M"):
        raise ConfigError(f"sex must be 'F' or 'M', got {sex!r}")
    if age is not None and (isinstance(age, bool) or not isinstance(age, (int, np.integer)) or not 0 <= age <= 120):
        raise ConfigError(f"age must be a whole number of years in 0..120, got {age!r}")
    if contrast not in (None, True, False):  # "yes" was truthy: a contrast study nobody asked for
        raise ConfigError(f"contrast must be True, False or None, got {contrast!r}")
    ss = _seed_sequence(seed, index)
    s_anat, s_find, s_render, s_report, s_ident = (np.random.default_rng(c) for c in ss.spawn(5))
    a = sample_anatomy(s_anat, sex=sex, age=age, contrast=contrast)
    plan = sample_findings(s_find, a, p, prevalence=prevalence, force=findings)
    apply_to_anatomy(a, plan, s_find)
    r = render(a, p, s_render, plan)
    ident = make_identity(int(archive_seed if archive_seed is not None else
                              (seed if isinstance(seed, (int, np.integer)) else ss.entropy % 2**63)),
                          index, a.sex, a.age, s_ident, preset=p.name)
    # The agent comes from the identity stream (drawn after the identity, which it does not change), so the
    # report's technique line and the DICOM header name the same one.
    agent = CONTRAST_AGENTS[int(s_ident.integers(len(CONTRAST_AGENTS)))] if a.contrast else None
    stool = a.organs["bowel"]["stool"]
    rmeta = {"contrast": a.contrast, "agent": agent, "slice_mm": p.slice_mm, "gallbladder": bool(a.organs["gallbladder"]["present"]),
             "osteopenia": a.hu["cancellous"] < 110,
             "stool": ("Moderate stool burden throughout the colon." if stool > 0.6 and s_report.random() < 0.4
                       else None)}
    report = write_report(r.findings, rmeta, s_report)
    from ctglip_sdk.privacy import pseudonymize

    meta = {"study_uid": ident.study_uid, "series_uid": ident.series_uid, "patient": pseudonymize(ident.patient_id),
            "age": a.age, "sex": a.sex, "study_date": ident.study_date, "body_part": "CHESTABDPELVIS",
            "contrast": bool(a.contrast), "phase": "portal_venous" if a.contrast else "none", "kvp": 120.0, "manufacturer": "ctglip-sdk synthetic",
            "preset": p.name}
    vol = Volume(r.hu.astype(np.float32), r.grid.affine, dict(meta))
    seg = Segmentation(r.labels, dict(V1), r.grid.affine, {"source": "synthetic", "label_map": "totalseg_v1"})
    return SyntheticPatient(vol, seg, report, r.findings, ident,
                            {"age": a.age, "sex": a.sex, "contrast": a.contrast, "contrast_agent": agent,
                             "preset": p.name,
                             "cancellous_hu": round(a.hu["cancellous"], 1)})


def assign_splits(n: int, seed: int, fractions=(0.7, 0.15, 0.15)) -> List[str]:
    """Split per patient (70/15/15 by default), deterministic for (n, seed); val and test get ≥ 1 when n ≥ 3."""
    order = np.random.default_rng([int(seed), 0x5EED]).permutation(n)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    out = ["train"] * n
    for rank, i in enumerate(order):
        if rank < n_test:
            out[i] = "test"
        elif rank < n_test + n_val:
            out[i] = "val"
    return out


def _make_study(root: str, seed: int, index: int, preset: Preset, fmt: str, prevalence: Optional[dict],
                per_class: bool, split: str, case_spec: Optional[dict] = None) -> tuple:
    """Generate, write and drop one study (runs in a worker process); returns its manifest row and truth."""
    pt = generate_patient(seed, preset, prevalence=prevalence, index=index, archive_seed=seed, **(case_spec or {}))
    ident, vol, rootp = pt.identity, pt.volume, Path(root)
    pid = ident.patient_id
    # Files are named by an opaque case number, never the (fake) MRN: paths end up in index rows and query
    # output, where patient identifiers must not appear.
    case = f"case{index:05d}"
    hu = vol.array.astype(np.int16)
    if fmt == "dicom":
        image = Path("images") / case / ident.study_uid
        write_dicom_series(rootp / image, hu, vol.affine, ident,
                           {"contrast": pt.meta["contrast"], "sex": pt.meta["sex"], "age": pt.meta["age"],
                            "contrast_agent": pt.meta.get("contrast_agent")})
    else:
        image = Path("images") / f"{case}.nii.gz"
        write_nifti(rootp / image, hu, vol.affine)
    mask = Path("masks") / f"{case}.nii.gz"
    write_mask(rootp / mask, pt.segmentation.array, vol.affine)
    if per_class:
        write_class_masks(rootp / "masks" / case, pt.segmentation.array, vol.affine)
    report = Path("reports") / f"{case}.txt"
    (rootp / report).parent.mkdir(parents=True, exist_ok=True)
    (rootp / report).write_text(pt.report, encoding="utf-8")
    d = ident.study_date
    row = {"patient_id": pid, "study_uid": ident.study_uid, "series_uid": ident.series_uid,
           "image": image.as_posix(), "mask": mask.as_posix(), "report": report.as_posix(), "split": split,
           "age": pt.meta["age"], "sex": pt.meta["sex"], "study_date": f"{d[:4]}-{d[4:6]}-{d[6:]}",
           "contrast": "portal_venous" if pt.meta["contrast"] else "none", "preset": pt.meta["preset"],
           "n_findings": len(pt.findings)}
    truth = {"study_uid": ident.study_uid, "patient_id": pid, "split": split, "findings": pt.findings}
    return index, row, truth


_CASE_KEYS = ("findings", "sex", "age", "contrast")


def _check_cases(cases: Optional[Mapping[int, Mapping[str, Any]]], n: int, p: Preset) -> Dict[int, dict]:
    """Validated per-patient overrides of ``generate_archive(cases=...)`` (an error names the patient)."""
    out: Dict[int, dict] = {}
    for i, spec in (cases or {}).items():
        if not isinstance(i, (int, np.integer)) or not 0 <= int(i) < n:
            raise ConfigError(f"cases: patient index {i!r} is not in 0..{n - 1}")
        unknown = sorted(set(spec) - set(_CASE_KEYS))
        if unknown:
            raise ConfigError(f"cases[{i}]: unknown key(s) {unknown}; use {', '.join(_CASE_KEYS)}")
        spec = dict(spec)
        # Checked before anything is written or deleted (a bad sex failed after an overwrite had removed the old
        # archive; age -5 wrote a birth date after the study, 5000 an OverflowError).
        if "sex" in spec and spec["sex"] not in (None, "F", "M"):
            raise ConfigError(f"cases[{i}]: sex must be 'F' or 'M', got {spec['sex']!r}")
        if "age" in spec and spec["age"] is not None and (
                isinstance(spec["age"], bool) or not isinstance(spec["age"], (int, np.integer))
                or not 0 <= int(spec["age"]) <= 120):
            raise ConfigError(f"cases[{i}]: age must be a whole number of years in 0..120, got {spec['age']!r}")
        if "contrast" in spec and spec["contrast"] not in (None, True, False):
            raise ConfigError(f"cases[{i}]: contrast must be True, False or None, got {spec['contrast']!r}")
        if "findings" in spec:
            spec["findings"] = list(spec["findings"])
            try:  # unknown keys fail here, before any file is written
                sample_findings(np.random.default_rng(0), sample_anatomy(np.random.default_rng(0)), p,
                                force=spec["findings"])
            except ConfigError as exc:
                raise ConfigError(f"cases[{i}]: {exc.reason}") from None
        out[int(i)] = spec
    return out


def generate_archive(out_dir: Union[str, os.PathLike], n_patients: int, seed: int = 0, fmt: str = "dicom",
                     preset: Union[str, Preset] = "default", prevalence: Optional[Mapping[str, float]] = None,
                     per_class_masks: bool = False, progress: bool = True, workers: int = 1,
                     overwrite: bool = False, cases: Optional[Mapping[int, Mapping[str, Any]]] = None) -> ArchiveSummary:
    """Write a synthetic archive: images, masks, reports, ``manifest.csv`` and ``truth.jsonl`` (docs/data.md).

    Each patient comes from its own seed (``seed``, patient index), is written, then dropped, so memory does
    not grow with ``n_patients`` and the same seed gives the same bytes.

    Args:
        out_dir: archive root (created; an existing archive there needs ``overwrite=True``).
        n_patients: number of patients (one study each).
        seed: archive seed.
        fmt: "dicom" (one CT series folder per study) or "nifti" (one .nii.gz per study).
        preset: "small", "default" or "clinical".
        prevalence: finding key -> probability, overriding defaults.
        per_class_masks: also write TotalSegmentator's per-class layout ``masks/<id>/<class>.nii.gz``.
        progress: show a tqdm progress bar.
        workers: processes to use (the output does not depend on it).
        overwrite: replace an existing archive's files (images/, masks/, reports/, manifest, truth).
        cases: patient index -> fixed ``findings`` / ``sex`` / ``age`` / ``contrast`` for that patient (as
            :func:`generate_patient` takes them), e.g. ``{3: {"findings": ["hepatic_steatosis"], "sex": "F",
            "age": 67}}``; the other patients are drawn as usual.

    Example:
        >>> s = generate_archive("/tmp/arch", 2, seed=1, preset="small", progress=False, overwrite=True)
        >>> s.n_patients, s.manifest.name
        (2, 'manifest.csv')
    """
    # Like its other arguments (and ArchiveIndex.ingest's folder), a missing out_dir is a ConfigError.
    root = Path(require_path(out_dir, "out_dir", "an output folder path", error=ConfigError))
    if fmt not in ("dicom", "nifti"):
        raise ConfigError(f"fmt must be 'dicom' or 'nifti', got {fmt!r}")
    if not isinstance(n_patients, (int, np.integer)) or n_patients < 1:
        raise ConfigError(f"n_patients must be a positive integer, got {n_patients!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    p = get_preset(preset)
    if prevalence:
        sample_findings(np.random.default_rng(0), sample_anatomy(np.random.default_rng(0)), p, prevalence)
    specs = _check_cases(cases, int(n_patients), p)
    if root.exists() and not root.is_dir():
        raise InputError("output path exists and is not a folder", path=root)
    if (root / "manifest.csv").exists() or (root / "images").exists():
        if not overwrite:
            raise InputError("folder already holds an archive; pass overwrite=True (--overwrite) to replace it",
                             path=root)
        for name in _OWNED:
            q = root / name
            if q.is_dir():
                shutil.rmtree(q)
            elif q.exists():
                q.unlink()
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    splits = assign_splits(int(n_patients), int(seed))
    # The Preset itself, not its name: a custom Preset (dataclasses.replace of a built-in one) was looked up again
    # by name in the worker and silently replaced by the built-in one (or refused, for a new name).
    args = [(str(root), int(seed), i, p, fmt, dict(prevalence) if prevalence else None, per_class_masks,
             splits[i], specs.get(i)) for i in range(int(n_patients))]
    rows: List[Optional[dict]] = [None] * len(args)
    truths: List[Optional[dict]] = [None] * len(args)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(args), desc="synth", unit="patient", disable=not progress)
    try:
        if workers and workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # forkserver/spawn, never fork: the caller may hold torch/OpenMP threads that a fork would copy.
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
            with ProcessPoolExecutor(max_workers=int(workers), mp_context=ctx) as ex:
                for i, row, tr in ex.map(_make_study, *zip(*args)):
                    rows[i], truths[i] = row, tr
                    bar.update(1)
        else:
            for a in args:
                i, row, tr = _make_study(*a)
                rows[i], truths[i] = row, tr
                bar.update(1)
    finally:
        bar.close()
    # Manifest and truth are written last: a crashed run leaves no manifest, so nothing reads half an archive.
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        w.writerows(rows)  # type: ignore[arg-type]
    with open(root / "truth.jsonl", "w", encoding="utf-8") as fh:
        for tr in truths:
            fh.write(json.dumps(tr, sort_keys=False) + "\n")
    counts: Dict[str, int] = {}
    for tr in truths:
        # Studies with the finding: truth has one entry per lesion, lobe or side (3 emphysematous studies were
        # printed as 9 under "studies").
        for key in {f["finding"] for f in tr["findings"]}:  # type: ignore[index]
            counts[key] = counts.get(key, 0) + 1
    from ctglip_sdk._version import __version__

    (root / "synth.json").write_text(json.dumps({
        "generator": "ctglip_sdk.synth", "version": __version__, "seed": int(seed), "n_patients": int(n_patients),
        "preset": asdict(p), "fmt": fmt, "prevalence": dict(prevalence) if prevalence else "default",
        "per_class_masks": per_class_masks}, indent=2) + "\n", encoding="utf-8")
    dt = time.perf_counter() - t0
    log.info("wrote %d synthetic studies to %s in %.1f s", n_patients, root, dt)
    return ArchiveSummary(root=root, manifest=root / "manifest.csv", truth=root / "truth.jsonl",
                          n_patients=int(n_patients), fmt=fmt, preset=p.name, seed=int(seed),
                          splits={s: splits.count(s) for s in ("train", "val", "test")},
                          finding_counts=dict(sorted(counts.items())), seconds=round(dt, 2))
