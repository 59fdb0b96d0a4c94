"""`ctglip manifest` and discovery on PACS-like layouts a review found mishandled (tiny DICOM/NIfTI archives)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.uid import generate_uid

from ctglip_sdk.cli.main import cli
from ctglip_sdk.errors import ConfigError
from ctglip_sdk.index.archive_manifest import write_archive_manifest
from ctglip_sdk.index.layout import plan_archive
from ctglip_sdk.io import discover, load_volume
from dicom_factory import write_series

CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def _rows(root: Path):
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _series(folder: Path, n: int = 6, size: int = 8, study_uid=None, patient=None, spacing: float = 2.5, **kw):
    """A small CT series (n slices of size x size) in ``folder``; returns the factory's SeriesSpec."""
    hu = np.full((n, size, size), 40.0, np.float32)
    return write_series(folder, hu, study_uid=study_uid or generate_uid(), spacing=spacing,
                        patient=patient, **kw)


def _mask(series_folder: Path, out: Path, series_uid=None) -> None:
    """A one-organ label map on the grid of the series (as TotalSegmentator writes it)."""
    vol = load_volume(series_folder, series_uid=series_uid)
    lab = np.zeros(vol.shape, np.uint8)
    lab[1:3, 1:3, 1:3] = 5  # liver in v1
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(lab, vol.affine), str(out))


def _patient(pid: str, accession: str = "ACC0000001"):
    return {"PatientName": "Doe^Jane", "PatientID": pid, "AccessionNumber": accession, "PatientSex": "F",
            "PatientAge": "061Y", "StudyDate": "20200615"}


# 1 -------------------------------------------------------------------------------------------------------------
def test_series_folder_named_like_a_class_never_gets_a_one_organ_mask(tmp_path):
    root = tmp_path / "a"
    _series(root / "P3/CTA/AORTA")
    vol = load_volume(root / "P3/CTA/AORTA")
    seg = root / "P3/CTA/segmentations"
    seg.mkdir(parents=True)
    for name in ("aorta", "liver", "spleen"):
        nib.save(nib.Nifti1Image(np.zeros(vol.shape, np.uint8), vol.affine), str(seg / f"{name}.nii.gz"))
    (items, errors) = plan_archive(root)
    assert not errors and len(items) == 1
    assert items[0].mask == "P3/CTA/segmentations"  # the study's per-class folder, never segmentations/aorta.nii.gz


def test_a_per_class_folder_file_is_not_a_whole_study_mask_even_with_a_plain_name(tmp_path):
    # images/ and masks/ siblings, but masks/ is a per-class folder: masks/CT.nii.gz is one class, not the study's
    root = tmp_path / "a"
    _series(root / "S1/images/liver")
    vol = load_volume(root / "S1/images/liver")
    for name in ("liver", "spleen", "aorta"):
        p = root / "S1/masks" / f"{name}.nii.gz"
        p.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros(vol.shape, np.uint8), vol.affine), str(p))
    items, _ = plan_archive(root)
    assert [it.mask for it in items] == [None]


# 2 -------------------------------------------------------------------------------------------------------------
def test_empty_patient_id_keeps_a_studys_series_in_one_patient_and_split(tmp_path, caplog):
    root = tmp_path / "a"
    for k in range(5):
        study = generate_uid()
        for ph in ("ART", "PV"):
            _series(root / f"STUDY{k}" / ph, study_uid=study, patient=_patient("", ""), SeriesDescription=ph)
            _mask(root / f"STUDY{k}" / ph, root / f"STUDY{k}" / ph / "segmentations.nii.gz")
            (root / f"STUDY{k}" / f"{ph}.txt").write_text("The liver is normal.")
    summary = write_archive_manifest(root, seed=1)
    rows = _rows(root)
    assert summary.rows == 10 and summary.patients == 5
    by_study = {}
    for r in rows:
        assert not r["patient_id"].startswith("path:")
        by_study.setdefault(r["study_uid"], set()).add((r["patient_id"], r["split"]))
    assert all(len(v) == 1 for v in by_study.values())
    assert any("PatientID" in w and "empty" in w for w in summary.warnings)


# 3 -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mpr", "coronal"])
def test_a_reformat_beside_the_axial_is_left_out_and_the_axial_keeps_the_study_files(tmp_path, kind):
    root = tmp_path / "a"
    study = generate_uid()
    S = root / "P1/STUDY"
    ax = _series(S / "AX", study_uid=study)
    tags = {"ImageType": ["DERIVED", "SECONDARY", "MPR"]} if kind == "mpr" else {"ImageType": ["ORIGINAL", "PRIMARY"]}
    _series(S / "COR", study_uid=study, orientation=CORONAL, **tags)
    _mask(S / "AX", S / "segmentations.nii.gz")
    (S / "report.txt").write_text("The liver is normal.")
    found = {s.path: s for s in discover(root)}
    assert found["P1/STUDY/COR"].is_derived and not found["P1/STUDY/AX"].is_derived
    summary = write_archive_manifest(root)
    rows = _rows(root)
    assert [(r["series_uid"], r["mask"], r["report"]) for r in rows] == \
        [(ax.series_uid, "P1/STUDY/segmentations.nii.gz", "P1/STUDY/report.txt")]
    assert summary.derived == ["P1/STUDY/COR"] and summary.to_dict()["derived"] == ["P1/STUDY/COR"]
    items, _ = plan_archive(root / "P1")  # ingest without a manifest leaves it out too
    assert [it.image for it in items] == ["STUDY/AX"]


def test_a_lone_coronal_series_is_still_an_image(tmp_path):
    root = tmp_path / "a"
    _series(root / "S/COR", orientation=CORONAL)
    _mask(root / "S/COR", root / "S/COR_seg.nii.gz")
    summary = write_archive_manifest(root)
    assert summary.rows == 1 and summary.derived == []


# 4 -------------------------------------------------------------------------------------------------------------
def test_a_flat_folder_of_two_recons_pairs_the_mask_with_the_series_on_its_grid(tmp_path):
    root = tmp_path / "a"
    study = generate_uid()
    soft = _series(root / "STUDY0", n=8, study_uid=study, prefix="S", SeriesDescription="SOFT")
    lung = _series(root / "STUDY0", n=4, study_uid=study, prefix="L", spacing=5.0, SeriesDescription="LUNG")
    _mask(root / "STUDY0", root / "STUDY0_seg.nii.gz", series_uid=soft.series_uid)
    (root / "STUDY0.txt").write_text("The liver is normal.")
    summary = write_archive_manifest(root)
    rows = _rows(root)
    assert [r["series_uid"] for r in rows] == [soft.series_uid]
    assert [p for p, _ in summary.mask_mismatch] == [f"STUDY0#{lung.series_uid}"]
    assert "mask mismatch" in summary.mask_mismatch[0][1]


def test_a_mask_on_another_grid_is_listed_not_written(tmp_path):
    root = tmp_path / "a"
    _series(root / "A/CT")
    _series(root / "B/CT", n=5)
    _mask(root / "A/CT", root / "A/segmentations.nii.gz")
    _mask(root / "A/CT", root / "B/segmentations.nii.gz")  # A's mask copied to B
    summary = write_archive_manifest(root)
    assert [r["image"] for r in _rows(root)] == ["A/CT"]
    assert [p for p, _ in summary.mask_mismatch] == ["B/CT"]


# 5 -------------------------------------------------------------------------------------------------------------
def test_listed_paths_name_no_record_or_accession_number(tmp_path):
    root = tmp_path / "a"
    pat = _patient("MRN0099117", "ACC7730022")
    study = generate_uid()
    base = root / "MRN0099117/ACC7730022"
    _series(base / "SOFT", study_uid=study, patient=pat)
    _series(base / "LUNG", study_uid=study, patient=pat, n=5)  # no mask: listed
    _mask(base / "SOFT", base / "SOFT_seg.nii.gz")  # no report: listed
    (root / "ris").mkdir()
    (root / "ris/ACC7730022_report.txt").write_text("The liver is normal.")  # an orphan named by accession
    summary = write_archive_manifest(root)
    assert summary.orphan_reports == ["ris/<patient>_report.txt"]
    text = json.dumps(summary.to_dict())
    assert summary.missing_mask and summary.missing_report
    assert "MRN0099117" not in text and "ACC7730022" not in text
    assert _rows(root)[0]["image"] == "MRN0099117/ACC7730022/SOFT"  # the CSV keeps the real path to read
    res = CliRunner().invoke(cli, ["manifest", str(root), "--force"])
    assert res.exit_code == 0, res.output
    assert "MRN0099117" not in res.output and "ACC7730022" not in res.output
    res = CliRunner().invoke(cli, ["manifest", str(root), "--force", "--json"])
    assert res.exit_code == 0 and "MRN0099117" not in res.output and "ACC7730022" not in res.output


# 6 -------------------------------------------------------------------------------------------------------------
def test_a_series_split_into_sub_folders_gets_its_header_values(tmp_path):
    root = tmp_path / "a"
    spec = _series(root / "PAT1/STUDY/CT", n=8, patient=_patient("PAT1"))
    for k, f in enumerate(sorted(spec.files)):
        sub = f.parent / f"{k // 4 + 1:04d}"
        sub.mkdir(exist_ok=True)
        f.rename(sub / f.name)
    _mask(root / "PAT1/STUDY/CT", root / "PAT1/STUDY/segmentations.nii.gz")
    (root / "PAT1/STUDY/report.txt").write_text("The liver is normal.")
    write_archive_manifest(root)
    (row,) = _rows(root)
    assert row["image"] == "PAT1/STUDY/CT"
    assert (row["sex"], row["age"], row["study_date"]) == ("F", "61", "2020-06-15")
    assert row["patient_id"] and not row["patient_id"].startswith("path:")


# 7 -------------------------------------------------------------------------------------------------------------
def test_a_series_with_two_patient_ids_is_refused_without_naming_them(tmp_path):
    root = tmp_path / "a"
    good = _series(root / "P5/CT", patient=_patient("PATIENT-5"))
    bad = _series(root / "P6/CT", n=8, patient=_patient("PATIENT-6"))
    for f in sorted(bad.files)[4:]:
        ds = pydicom.dcmread(f)
        ds.PatientID, ds.PatientName = "OTHER-PATIENT-77", "Roe^Richard"
        ds.save_as(f)
    for p in ("P5", "P6"):
        _mask(root / p / "CT", root / p / "segmentations.nii.gz")
    summary = write_archive_manifest(root)
    assert [r["series_uid"] for r in _rows(root)] == [good.series_uid]
    (entry,) = [u for u in summary.unreadable if u[0].startswith("P6")]
    assert "PatientID" in entry[1]
    text = json.dumps(summary.to_dict())
    assert "OTHER-PATIENT-77" not in text and "PATIENT-6" not in text and "Roe" not in text


# 8 -------------------------------------------------------------------------------------------------------------
def test_nan_fractions_are_refused(tmp_path):
    root = tmp_path / "a"
    _series(root / "A/CT")
    _mask(root / "A/CT", root / "A/segmentations.nii.gz")
    with pytest.raises(ConfigError):
        write_archive_manifest(root, fractions=(float("nan"), 0.5, 0.5))
    res = CliRunner().invoke(cli, ["manifest", str(root), "--fractions", "nan,0.5,0.5"])
    assert res.exit_code != 0 and not (root / "manifest.csv").exists()


def test_several_report_files_for_one_series_warn_and_pair_none(tmp_path):
    root = tmp_path / "a"
    S = root / "P4/STUDY"
    _series(S / "AX")
    _mask(S / "AX", S / "AX_seg.nii.gz")
    (S / "AX.txt").write_text("PRELIMINARY The liver is normal.")
    (S / "AX_report.txt").write_text("ADDENDUM The liver is normal.")
    (S / "report.txt").write_text("FINAL The liver is normal.")
    summary = write_archive_manifest(root)
    assert _rows(root)[0]["report"] == ""
    assert any("3 report files" in w for w in summary.warnings)


def test_identical_copies_of_one_report_still_pair(tmp_path):
    root = tmp_path / "a"
    S = root / "P4/STUDY"
    _series(S / "AX")
    _mask(S / "AX", S / "AX_seg.nii.gz")
    (S / "AX.txt").write_text("The liver is normal.")
    (S / "report.txt").write_text("The liver is normal.\n")
    summary = write_archive_manifest(root)
    assert _rows(root)[0]["report"] == "P4/STUDY/AX.txt"
    assert not any("report files" in w for w in summary.warnings)


def test_orphan_masks_and_reports_are_listed(tmp_path):
    root = tmp_path / "a"
    _series(root / "P1/STUDY/AX")
    _mask(root / "P1/STUDY/AX", root / "P1/STUDY/segmentations.nii.gz")
    (root / "P1/STUDY/report.txt").write_text("The liver is normal.")
    _series(root / "P2/STUDY/AX")  # no mask; its report is not an orphan
    (root / "P2/STUDY/report.txt").write_text("The liver is normal.")
    (root / "P3/STUDY").mkdir(parents=True)
    _mask(root / "P1/STUDY/AX", root / "P3/STUDY/segmentations.nii.gz")
    (root / "reports").mkdir()
    (root / "reports/ORPHAN.txt").write_text("The liver is normal.")
    summary = write_archive_manifest(root)
    assert summary.orphan_masks == ["P3/STUDY/segmentations.nii.gz"]
    assert summary.orphan_reports == ["reports/ORPHAN.txt"]


def test_split_balancing_counts_only_patients_with_a_report():
    from ctglip_sdk.index.archive_manifest import _assign_splits, _split_of

    # Find patients whose hashes put all with a report in val/test, and one without a report in train.
    seed, fr = 0, (0.7, 0.15, 0.15)
    names = [f"p{i}" for i in range(200)]
    with_report = [p for p in names if _split_of(p, seed, fr) != "train"][:3]
    without = [p for p in names if _split_of(p, seed, fr) == "train"][:1]
    out = _assign_splits(with_report + without, seed, fr, usable=set(with_report))
    # was: train held only the report-less patient, so `ctglip train` found no study to train on
    assert "train" in {out[p] for p in with_report}
    # every patient with a report: the assignment is the one it always was
    assert _assign_splits(with_report, seed, fr) == _assign_splits(with_report, seed, fr, usable=set(with_report))
