"""Hostile and broken input: truncation, non-DICOM files, absurd sizes (no allocation), and no identifier leaks."""

from __future__ import annotations

import gzip
import logging
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from ctglip_sdk import ConfigError, GeometryError, InputError
from ctglip_sdk.io import discover, load_volume
from ctglip_sdk.privacy import pseudonymize
from dicom_factory import unique_hu, write_series, write_slice

SECRET = {
    "PatientName": "Qwertyuiop^Zanzibar",
    "PatientID": "PID-ZX-918273",
    "PatientBirthDate": "19511123",
    "AccessionNumber": "ACC-ZX-445566",
    "PatientSex": "M",
    "StudyDate": "20200615",
}
LEAKS = ("Qwertyuiop", "Zanzibar", "PID-ZX-918273", "ZX-918273", "19511123", "1951-11-23", "ACC-ZX-445566")


def ct_small(tmp_path, name="ct.dcm"):
    path = tmp_path / name
    shutil.copy(get_testdata_file("CT_small.dcm"), path)
    return path


@pytest.mark.parametrize("keep", [150, 300, 1500, 34000])
def test_truncated_dicom_names_the_file(tmp_path, keep):
    path = ct_small(tmp_path)
    path.write_bytes(path.read_bytes()[:keep])  # cut in the file meta, the header or the pixels
    with pytest.raises(InputError) as err:
        load_volume(path)
    assert "truncated" in err.value.reason and err.value.path == str(path)


def test_truncated_slice_inside_a_series_folder(tmp_path):
    spec = write_series(tmp_path, unique_hu((4, 3, 3)))
    victim = spec.files[2]
    victim.write_bytes(victim.read_bytes()[:600])
    with pytest.raises(InputError) as err:
        load_volume(tmp_path)
    assert "truncated" in err.value.reason and err.value.path == str(victim)


def test_non_dicom_file(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("this is a radiology report, not an image\n" * 20)
    with pytest.raises(InputError, match="not a DICOM file") as err:
        load_volume(path)
    assert "notes.dcm" in str(err.value)
    with pytest.raises(InputError, match="no such file"):
        load_volume(tmp_path / "missing.dcm")
    with pytest.raises(InputError, match="unsupported format"):
        (tmp_path / "ct.nrrd").write_bytes(b"NRRD0004\n")
        load_volume(tmp_path / "ct.nrrd")


def test_folder_without_dicom_and_with_noise(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM image files"):
        load_volume(tmp_path)
    spec = write_series(tmp_path, unique_hu((3, 3, 3)))  # noise next to a series is skipped
    assert load_volume(tmp_path).meta["series_uid"] == spec.series_uid


def _absurd_dicom(path, rows, cols, frames=None):
    write_slice(path, np.zeros((2, 2)), position=(0, 0, 0), series_uid="1.2.3.4", study_uid="1.2.3")
    ds = pydicom.dcmread(str(path))
    ds.Rows, ds.Columns = rows, cols
    if frames:
        ds.NumberOfFrames = frames
    ds.save_as(str(path))


def test_absurd_dicom_dimensions_are_refused_before_reading(tmp_path, peak_alloc):
    path = tmp_path / "huge.dcm"
    _absurd_dicom(path, 65535, 65535)
    with peak_alloc() as peak, pytest.raises(InputError, match=r"65535 x 65535 x 1 = 4,294,836,225 voxels") as err:
        load_volume(path)
    assert "huge.dcm" in str(err.value) and peak[0] < 20e6
    folder = tmp_path / "series"  # each slice plausible, the series too big together
    folder.mkdir()
    for i in range(3):
        _absurd_dicom(folder / f"s{i}", 30000, 30000)
    with peak_alloc() as peak, pytest.raises(InputError, match="max_voxels"):
        load_volume(folder)
    assert peak[0] < 20e6
    with pytest.raises(InputError, match="more than max_voxels=100"):
        load_volume(get_testdata_file("CT_small.dcm"), max_voxels=100)
    with pytest.raises(ConfigError):
        load_volume(get_testdata_file("CT_small.dcm"), max_voxels=0)


def test_absurd_nifti_dimensions_are_refused_before_reading(tmp_path, peak_alloc):
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((30000, 30000, 30000))
    path = tmp_path / "huge.nii.gz"
    with gzip.open(path, "wb") as fh:  # a header and 1 kB of data: nothing close to what it declares
        fh.write(header.binaryblock + b"\0" * 4 + b"\0" * 1024)
    with peak_alloc() as peak, pytest.raises(InputError, match="30000 x 30000 x 30000") as err:
        load_volume(path)
    assert "huge.nii.gz" in str(err.value) and peak[0] < 20e6


def test_truncated_and_fake_nifti(tmp_path):
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError) as err:
        load_volume(path)
    assert "truncated" in err.value.reason and err.value.path == str(path)
    fake = tmp_path / "fake.nii"
    fake.write_text("not nifti at all")
    with pytest.raises(InputError, match="not a readable NIfTI") as err:
        load_volume(fake)
    assert "fake.nii" in str(err.value)


def test_no_identifiers_in_meta_errors_or_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    spec = write_series(tmp_path / "ok", unique_hu((3, 3, 3)), patient=SECRET)
    vol = load_volume(tmp_path / "ok")
    assert vol.meta["patient"] == pseudonymize(SECRET["PatientID"])
    assert vol.meta["age"] == 68 and vol.meta["sex"] == "M"  # from birth and study dates; birth date not kept
    assert "identifiers" not in vol.meta
    texts = [repr(vol.meta), repr(vol)]
    # Errors raised for a folder of this patient's files: several series, missing slice, tilt, size.
    write_series(tmp_path / "two", unique_hu((3, 3, 3)), patient=SECRET, prefix="a")
    write_series(tmp_path / "two", unique_hu((3, 3, 3)), patient=SECRET, prefix="b")
    write_series(tmp_path / "gap", unique_hu((5, 3, 3)), patient=SECRET, drop=(2,))
    for folder, kwargs, kind in [("two", {}, InputError), ("gap", {}, GeometryError),
                                 ("ok", {"max_voxels": 10}, InputError),
                                 ("ok", {"series_uid": "9.9"}, InputError)]:
        with pytest.raises(kind) as err:
            load_volume(tmp_path / folder, **kwargs)
        texts.append(str(err.value))
    texts.append(repr(discover(tmp_path)))
    texts.extend(record.getMessage() for record in caplog.records)
    blob = "\n".join(texts)
    assert spec.series_uid in blob  # the checks above did see the series
    for secret in LEAKS:
        assert secret not in blob
    # Opt-in: raw identifiers only under meta["identifiers"].
    raw = load_volume(tmp_path / "ok", include_identifiers=True).meta
    assert raw["identifiers"]["PatientID"] == SECRET["PatientID"]
    assert raw["identifiers"]["AccessionNumber"] == SECRET["AccessionNumber"]
    assert SECRET["PatientID"] not in repr({k: v for k, v in raw.items() if k != "identifiers"})
