"""Inputs a review of real hospital files found mishandled (2026-12-06): each written with pydicom or nibabel."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

import ctglip_sdk as cg
from ctglip_sdk import InputError
from ctglip_sdk.io import check_mask_grid, discover, load_segmentation, load_volume
from dicom_factory import stored_values, write_enhanced_ct, write_series, write_slice

HU = np.arange(144, dtype=np.int16).reshape(3, 8, 6) - 100  # (slices, rows, columns), every value distinct


def _ras_values(vol) -> np.ndarray:
    return np.sort(vol.array.ravel())


def test_a_deflated_series_loads_as_pydicom_reads_it(tmp_path):
    spec = write_series(tmp_path / "s", HU)
    plain = load_volume(tmp_path / "s").array.copy()
    for f in spec.files:
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(f)
    assert pydicom.dcmread(spec.files[0]).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    np.testing.assert_array_equal(load_volume(tmp_path / "s").array, plain)  # was "no pixel data"


@pytest.mark.parametrize("keyword", ["RescaleIntercept", "RescaleSlope"])
def test_an_empty_rescale_element_in_one_slice_is_refused_naming_the_file(tmp_path, keyword):
    spec = write_series(tmp_path / "s", HU, slopes=2.0)
    ds = pydicom.dcmread(spec.files[1])
    setattr(ds, keyword, None)  # present, zero length
    ds.save_as(spec.files[1])
    with pytest.raises(InputError, match=f"{keyword} is present but empty") as err:
        load_volume(tmp_path / "s")  # was: that slice silently off by 1024 HU (or scaled by 1)
    assert spec.files[1].name in str(err.value)


def test_enhanced_ct_without_a_pixel_value_transformation_is_logged(tmp_path, caplog):
    write_enhanced_ct(tmp_path / "e.dcm", HU)
    ds = pydicom.dcmread(tmp_path / "e.dcm")
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    ds.save_as(tmp_path / "e.dcm")
    with caplog.at_level(logging.WARNING, logger="ctglip_sdk.io.dicom"):
        vol = load_volume(tmp_path / "e.dcm")
    assert "without RescaleIntercept" in caplog.text  # the stored values are taken as HU, and it says so
    assert vol.array.min() == pytest.approx(HU.min() + 1024)
    caplog.clear()
    write_enhanced_ct(tmp_path / "ok.dcm", HU)
    with caplog.at_level(logging.WARNING, logger="ctglip_sdk.io.dicom"):
        assert load_volume(tmp_path / "ok.dcm").array.min() == pytest.approx(HU.min())
    assert "without RescaleIntercept" not in caplog.text


def test_discover_gives_the_shape_load_volume_returns_for_a_sagittal_enhanced_ct(tmp_path):
    (tmp_path / "sag").mkdir()
    write_enhanced_ct(tmp_path / "sag" / "e.dcm", HU, orientation=(0, 1, 0, 0, 0, -1))
    assert discover(tmp_path / "sag")[0].shape == load_volume(tmp_path / "sag" / "e.dcm").shape == (3, 6, 8)


def test_an_absolute_grid_frame_offset_vector_is_not_added_twice(tmp_path):
    def legacy(name: str, offsets) -> Path:
        p = write_slice(tmp_path / name, HU[0], position=(0, 0, 40), series_uid=generate_uid(),
                        study_uid=generate_uid())
        ds = pydicom.dcmread(p)
        ds.NumberOfFrames = 3
        ds.PixelData = stored_values(HU, 1, -1024).tobytes()
        ds.GridFrameOffsetVector = offsets
        ds.save_as(p)
        return p

    relative = load_volume(legacy("rel.dcm", [0, 2.5, 5]))
    absolute = load_volume(legacy("abs.dcm", [40, 42.5, 45]))  # PS3.3: the first element is the z of the position
    np.testing.assert_allclose(absolute.affine, relative.affine)
    assert relative.affine[2, 3] == pytest.approx(40.0)
    np.testing.assert_array_equal(absolute.array, relative.array)


def test_12_bit_jpeg_extended_says_which_decoder_is_missing(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    if int(ds.BitsStored) <= 8:
        pytest.skip("pydicom's JPGExtended.dcm is not 12-bit in this version")
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, 0], [1, 0, 0, 0, 1, 0], [1, 1]
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(tmp_path / "j.dcm")
    try:
        vol = load_volume(tmp_path / "j.dcm")
    except InputError as err:
        assert "12-bit" in str(err) and "j.dcm" in str(err) and "corrupt" not in str(err)
    else:  # a 12-bit JPEG decoder is installed: then it must read what pydicom reads
        assert vol.array.size == pydicom.dcmread(tmp_path / "j.dcm").pixel_array.size


def test_a_colour_nifti_is_refused_as_colour(tmp_path):
    rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    with pytest.raises(InputError, match="colour"):
        load_volume(tmp_path / "rgb.nii.gz")


@pytest.mark.parametrize("dtype,value", [(np.int64, 2 ** 32 + 5), (np.uint32, 2 ** 31 + 5), (np.float64, 1e10)])
def test_huge_label_ids_are_refused_with_their_real_value(tmp_path, dtype, value):
    lab = np.zeros((4, 4, 4), dtype)
    lab[0, 0, 0] = value
    nib.save(nib.Nifti1Image(lab, np.eye(4), dtype=dtype), tmp_path / "m.nii.gz")
    like = cg.Volume(np.zeros((4, 4, 4), np.float32), np.eye(4))
    with _no_runtime_warning():
        with pytest.raises(InputError, match=f"label id {int(value)} "):
            load_segmentation(tmp_path / "m.nii.gz", like=like)  # 2**32 + 5 used to become liver (id 5)


class _no_runtime_warning:
    """No numpy cast warning may escape (1e10 used to print 'invalid value encountered in cast')."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_a_non_path_mask_argument_is_an_input_error():
    like = cg.Volume(np.zeros((4, 4, 4), np.float32), np.eye(4))
    for call in (lambda: load_segmentation(None, like=like), lambda: check_mask_grid(None, like),
                 lambda: load_segmentation(3, like=like)):
        with pytest.raises(InputError, match="expected a mask file or folder path"):
            call()
