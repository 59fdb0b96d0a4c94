"""A skipped study's reason names its file, never its patient: archives name folders after the patient ID."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pydicom
import pytest

import ctglip_sdk as cg
from ctglip_sdk.privacy import dicom_identifiers, redact_identifiers
from test_model_encode import TINY


def _archive_with_id_folders(tmp_path: Path) -> tuple:
    """A DICOM archive whose image folders are named after the PatientID, one slice of the first study truncated."""
    root = tmp_path / "a"
    cg.synth.generate_archive(root, n_patients=2, seed=3, preset="small", fmt="dicom", progress=False)
    rows = list(csv.DictReader(open(root / "manifest.csv")))
    for r in rows:
        old = root / r["image"]
        case = old.parent.name
        new_rel = r["image"].replace(f"images/{case}/", f"images/{r['patient_id']}/")
        shutil.move(str(old.parent), str(root / "images" / r["patient_id"]))
        r["image"] = new_rel
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    victim = sorted((root / rows[0]["image"]).iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:900])
    ds = pydicom.dcmread(sorted((root / rows[1]["image"]).iterdir())[0], stop_before_pixels=True)
    return root, rows, str(ds.PatientName)


def test_redaction_helpers():
    assert redact_identifiers("images/SYN0314187/IM1.dcm: bad", ["SYN0314187", None, "ab"]) == \
        "images/<patient>/IM1.dcm: bad"


def test_evaluation_and_ingest_reasons_carry_no_patient_id(tmp_path, caplog):
    from ctglip_sdk.index import ArchiveIndex
    from ctglip_sdk.training.evaluation import evaluate

    root, rows, _ = _archive_with_id_folders(tmp_path)
    pid = rows[0]["patient_id"]
    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    with caplog.at_level(logging.WARNING):
        m = evaluate(model, root, split="all", val_split=None, labels="truth")
    assert len(m["skipped_studies"]) == 1
    reason = m["skipped_studies"][0]["reason"]
    assert "<patient>" in reason and pid not in reason and pid not in caplog.text  # it was in both
    # Ingest without a manifest: the ID comes from the DICOM header only.
    (root / "manifest.csv").unlink()
    caplog.clear()
    idx = ArchiveIndex.create(tmp_path / "idx", model=model)
    with caplog.at_level(logging.WARNING):
        report = idx.ingest(root)
    errors = " ".join(str(e) for e in report.to_dict().get("errors", []))
    assert errors and pid not in errors and pid not in caplog.text


def test_dicom_identifiers_reads_one_header_and_never_raises(tmp_path):
    root, rows, name = _archive_with_id_folders(tmp_path)
    got = dicom_identifiers(root / rows[1]["image"])
    assert rows[1]["patient_id"] in got and name in got
    import pydicom

    first = next(p for p in sorted((root / rows[1]["image"]).rglob("*")) if p.is_file())
    born = str(pydicom.dcmread(first, stop_before_pixels=True).PatientBirthDate)
    assert born in got and f"{born[:4]}-{born[4:6]}-{born[6:]}" in got  # a folder named by birth date is redacted
    assert dicom_identifiers(tmp_path / "missing") == [] and dicom_identifiers(root / "manifest.csv") == []
