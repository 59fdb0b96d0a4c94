"""Shared builders for the index tests (real NIfTI via nibabel, real DICOM via pydicom) and layout tests."""

from __future__ import annotations

import csv
import datetime as dt
import os
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import nibabel as nib
import numpy as np
import pytest

from ctglip_sdk.organs import V1

PG_ENV = "CTGLIP_TEST_DATABASE_URL"
LABEL = {name: i for i, name in V1.items()}
# A small abdomen: (organ, box (i0, j0, k0, i1, j1, k1) on a 40 x 40 x 24 grid, base HU).
ORGAN_BOXES = [
    ("liver", (4, 6, 4, 18, 26, 18), 60.0),
    ("spleen", (24, 8, 6, 32, 16, 14), 50.0),
    ("kidney_right", (6, 26, 4, 12, 34, 12), 35.0),
    ("kidney_left", (26, 26, 4, 32, 34, 12), 35.0),
    ("gallbladder", (12, 14, 8, 16, 18, 12), 10.0),
]
SHAPE = (40, 40, 24)
AFFINE = np.diag([4.0, 4.0, 5.0, 1.0])


def phantom(rng: np.random.Generator, organs=ORGAN_BOXES, shape=SHAPE):
    """HU volume and label array with box organs whose texture varies by study."""
    vol = rng.normal(-80.0, 25.0, shape).astype(np.float32)
    seg = np.zeros(shape, np.uint8)
    for name, (i0, j0, k0, i1, j1, k1), hu in organs:
        seg[i0:i1, j0:j1, k0:k1] = LABEL[name]
        block = hu + rng.normal(0, 8, (i1 - i0, j1 - j0, k1 - k0)) * rng.uniform(0.5, 3.0)
        if rng.random() < 0.5:  # a "lesion" blob makes vectors differ between studies
            block[: max(1, (i1 - i0) // 2), : max(1, (j1 - j0) // 2)] -= rng.uniform(20, 80)
        vol[i0:i1, j0:j1, k0:k1] = block
    return vol, seg


def write_nifti_study(root: Path, rel: str, vol: np.ndarray, seg: Optional[np.ndarray]) -> None:
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol, AFFINE), d / "ct.nii.gz")
    if seg is not None:
        nib.save(nib.Nifti1Image(seg, AFFINE), d / "seg.nii.gz")


def write_dicom_series(folder: Path, vol: np.ndarray, study_uid: str, series_uid: str, patient_id: str,
                       sex: str, age: int, date: str) -> None:
    """A real CT series written with pydicom (one file per slice, LPS geometry matching AFFINE's grid)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    nx, ny, nz = vol.shape
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName, ds.PatientSex = "CT", patient_id, "Test^Person", sex
        ds.PatientAge, ds.StudyDate = f"{age:03d}Y", date
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.BodyPartExamined = "ABDOMEN"
        ds.Rows, ds.Columns = ny, nx
        ds.PixelSpacing = [4.0, 4.0]
        ds.SliceThickness = 5.0
        # LPS: x = -i*4 (RAS i -> patient right = -x), y = -j*4, z = k*5; rows run along j, columns along i.
        ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        ds.InstanceNumber = k + 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(np.round(vol[:, :, k].T).astype(np.int16)).tobytes()
        ds.save_as(str(folder / f"{k:03d}.dcm"), enforce_file_format=True)


def make_archive(root: Path, n: int = 6, seed: int = 0, fmt: str = "nifti", n_patients: int = 4) -> Path:
    """An archive in the layout of docs/data.md: ROOT/manifest.csv + images + TotalSegmentator-v1 masks."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows: List[Dict[str, str]] = []
    for i in range(n):
        vol, seg = phantom(rng)
        pid, sex, age = f"PAT-{i % n_patients:04d}", "MF"[i % 2], 35 + 7 * i
        study, series = f"1.2.826.0.1.{seed}.{i}", f"1.2.826.0.1.{seed}.{i}.1"
        date = (dt.date(2019, 1, 1) + dt.timedelta(days=53 * i)).isoformat()
        if fmt == "dicom":
            write_dicom_series(root / f"s{i:03d}" / "ct", vol, study, series, pid, sex, age, date.replace("-", ""))
            nib.save(nib.Nifti1Image(seg, AFFINE), root / f"s{i:03d}" / "seg.nii.gz")
            image = f"s{i:03d}/ct"
        else:
            write_nifti_study(root, f"s{i:03d}", vol, seg)
            image = f"s{i:03d}/ct.nii.gz"
        rows.append({"patient_id": pid, "study_uid": study, "series_uid": series, "image": image,
                     "mask": f"s{i:03d}/seg.nii.gz", "report": "", "split": ["train", "val", "test"][i % 3],
                     "age": str(age), "sex": sex, "study_date": date, "contrast": ["venous", "none"][i % 2]})
    write_manifest(root, rows)
    return root


def write_manifest(root: Path, rows: List[Dict[str, str]]) -> None:
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def read_manifest(root: Path) -> List[Dict[str, str]]:
    with open(root / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def pg_url() -> Optional[str]:
    return os.environ.get(PG_ENV) or None


def random_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}_"


def drop_prefixed_tables(engine: Any, prefix: str) -> None:
    """Drop a test's tables from a shared (PostgreSQL) database: every table whose name starts with ``prefix``."""
    from sqlalchemy import MetaData

    md = MetaData()
    md.reflect(engine, only=lambda name, _: name.startswith(prefix))
    md.drop_all(engine)


def db_params():
    """pytest params: SQLite always, PostgreSQL when CTGLIP_TEST_DATABASE_URL is set (skipped with a reason)."""
    return [pytest.param("sqlite", id="sqlite"),
            pytest.param("postgres", id="postgres", marks=[pytest.mark.postgres, pytest.mark.skipif(
                not pg_url(), reason=f"set {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")])]


# -- tests of the archive layout (manifest and discovery) ------------------------------------------------------
def test_manifest_plan_keys_fingerprints_and_duplicates(tmp_path):
    from ctglip_sdk.index.layout import plan_archive

    root = make_archive(tmp_path / "a", n=3)
    rows = read_manifest(root)
    write_manifest(root, rows + [dict(rows[0])])  # the same series listed twice
    items, errors = plan_archive(root)
    assert [i.key for i in items] == [r["series_uid"] for r in rows]
    assert len(errors) == 1 and "twice" in errors[0][1]
    before = items[0].fingerprint
    os.utime(root / rows[0]["image"], (1_000_000_000, 1_000_000_000))
    items2, _ = plan_archive(root)
    assert items2[0].fingerprint != before and items2[1].fingerprint == items[1].fingerprint


def test_discovery_pairs_images_with_masks_by_name(tmp_path):
    from ctglip_sdk.index.layout import plan_archive

    rng = np.random.default_rng(1)
    root = tmp_path / "disc"
    (root / "a").mkdir(parents=True)
    vol, seg = phantom(rng)
    nib.save(nib.Nifti1Image(vol, AFFINE), root / "a" / "ct1.nii.gz")
    nib.save(nib.Nifti1Image(seg, AFFINE), root / "a" / "ct1_seg.nii.gz")
    nib.save(nib.Nifti1Image(vol, AFFINE), root / "a" / "ct2.nii.gz")
    (root / "a" / "segmentations").mkdir()
    nib.save(nib.Nifti1Image(seg, AFFINE), root / "a" / "segmentations" / "ct2.nii.gz")
    write_dicom_series(root / "b" / "series", vol, "1.2.3", "1.2.3.4", "P1", "F", 50, "20200101")
    nib.save(nib.Nifti1Image(seg, AFFINE), root / "b" / "segmentations.nii.gz")
    nib.save(nib.Nifti1Image(vol, AFFINE), root / "c.nii.gz")  # no mask anywhere
    items, errors = plan_archive(root)
    by_image = {i.image: i for i in items}
    assert set(by_image) == {"a/ct1.nii.gz", "a/ct2.nii.gz", "b/series", "c.nii.gz"}
    assert by_image["a/ct1.nii.gz"].mask == "a/ct1_seg.nii.gz"
    assert by_image["a/ct2.nii.gz"].mask == "a/segmentations/ct2.nii.gz"
    assert by_image["b/series"].mask == "b/segmentations.nii.gz" and by_image["b/series"].key == "1.2.3.4"
    assert by_image["c.nii.gz"].mask is None and by_image["c.nii.gz"].key == "path:c.nii.gz"
    assert errors == []


_MODELS: Dict[int, object] = {}


def tiny_model(seed: int = 0):
    """One random-init ctglip-tiny per seed for the whole session (creating one costs seconds)."""
    if seed not in _MODELS:
        import ctglip_sdk as cg

        _MODELS[seed] = cg.create("ctglip-tiny", seed=seed)
    return _MODELS[seed]


def index_url(kind: str, folder: Path) -> Optional[str]:
    """database_url for a test index: None (SQLite in the folder) or the PostgreSQL test server."""
    return pg_url() if kind == "postgres" else None
