"""DICOM series loading: sorting, spacing, rescale, geometry errors, multi-frame, compressed data, RAS+ output."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from nibabel.orientations import aff2axcodes
from pydicom.data import get_testdata_file

from ctglip_sdk import GeometryError, InputError
from ctglip_sdk.io import load_volume
from dicom_factory import unique_hu, write_enhanced_ct, write_series, write_slice


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not available")
    return Path(path)


def assert_matches_dicom(vol, files) -> None:
    """Every pixel of every file appears, rescaled, at the voxel whose world position is the pixel's.

    Independent of the loader: positions come from the DICOM definition (IPP + c*dc*row_dir + r*dr*col_dir),
    converted to RAS by negating x and y, then mapped through the inverse of the Volume's affine.
    """
    inv = np.linalg.inv(vol.affine)
    for path in files:
        ds = pydicom.dcmread(str(path))
        x = np.array(ds.ImageOrientationPatient[:3], dtype=float)
        y = np.array(ds.ImageOrientationPatient[3:], dtype=float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        lps = (np.array(ds.ImagePositionPatient, dtype=float)[None, None, :]
               + c[..., None] * dc * x + r[..., None] * dr * y)
        ras = lps * np.array([-1.0, -1.0, 1.0])
        ijk = ras @ inv[:3, :3].T + inv[:3, 3]
        assert np.allclose(ijk, np.round(ijk), atol=1e-3), "pixel centres must land on voxel centres"
        ijk = np.round(ijk).astype(int)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(vol.array[ijk[..., 0], ijk[..., 1], ijk[..., 2]], hu.astype(np.float32))


def test_pydicom_ct5n_sorted_by_position_not_by_name():
    folder = pydicom_file("dicomdirtests/98892001/CT5N")
    vol = load_volume(folder)
    assert vol.shape == (16, 16, 5) and vol.array.dtype == np.float32
    assert np.allclose(vol.spacing, (0.488281, 0.488281, 2.5))
    assert aff2axcodes(vol.affine) == ("R", "A", "S")
    assert_matches_dicom(vol, sorted(folder.iterdir()))
    # CT5N's file names increase while z decreases: slice k=0 must be the most inferior file.
    z = {p.name: float(pydicom.dcmread(str(p), stop_before_pixels=True).ImagePositionPatient[2])
         for p in folder.iterdir()}
    assert vol.world([0, 0, 0])[2] == pytest.approx(min(z.values()))
    assert vol.meta["modality"] == "CT" and vol.meta["series_uid"].endswith(".6")


def test_pydicom_ct2_gap_is_a_geometry_error():
    with pytest.raises(GeometryError, match=r"missing slices.*202\.5 mm") as err:
        load_volume(pydicom_file("dicomdirtests/77654033/CT2"))
    assert "CT2" in str(err.value)


def test_ct_small_single_file_uses_slice_thickness_and_meta():
    path = pydicom_file("CT_small.dcm")
    vol = load_volume(path)
    assert vol.shape == (128, 128, 1)
    assert vol.spacing[2] == pytest.approx(5.0)  # single slice: SliceThickness along the normal
    assert_matches_dicom(vol, [path])
    ds = pydicom.dcmread(str(path))
    assert vol.array.min() == ds.pixel_array.min() - 1024
    assert vol.meta["study_date"] == "2004-01-19" and vol.meta["sex"] == "O" and vol.meta["age"] == 0
    assert vol.meta["source_path"] == str(path)


def test_shuffled_names_reversed_instance_numbers(tmp_path):
    hu = unique_hu((6, 5, 4))
    spec = write_series(tmp_path / "s", hu, shuffle_names=True)
    vol = load_volume(tmp_path / "s")
    assert vol.shape == (4, 5, 6)
    assert np.allclose(vol.spacing, (0.7, 0.8, 2.5))
    assert_matches_dicom(vol, spec.files)
    # Axial LPS input: RAS canonical flips columns (L->R) and rows (P->A); slices stay inferior->superior.
    assert np.array_equal(vol.array, hu.transpose(2, 1, 0)[::-1, ::-1, :])
    assert np.allclose(vol.world([0, 0, 0]), spec.ras(0, 4, 3))


def test_reversed_z_order_gives_the_same_volume(tmp_path):
    hu = unique_hu((5, 4, 3))
    up = write_series(tmp_path / "up", hu, spacing=2.0)
    positions = up.positions[::-1].copy()
    write_series(tmp_path / "down", hu[::-1], positions=positions, spacing=2.0)
    a, b = load_volume(tmp_path / "up"), load_volume(tmp_path / "down")
    assert np.array_equal(a.array, b.array) and np.allclose(a.affine, b.affine)


def test_rescale_slope_and_intercept_applied_per_slice(tmp_path):
    hu = unique_hu((4, 3, 3)) * 2  # even values: exact for every slope below
    spec = write_series(tmp_path / "s", hu, slopes=[0.5, 1.0, 2.0, 1.0], intercepts=[-1024, -1000, -2048, 0])
    vol = load_volume(tmp_path / "s")
    assert_matches_dicom(vol, spec.files)
    assert np.array_equal(np.sort(vol.array.ravel()), np.sort(hu.ravel()).astype(np.float32))


def test_missing_slice_is_reported_with_the_gap(tmp_path):
    write_series(tmp_path / "s", unique_hu((6, 3, 3)), spacing=2.5, drop=(3,))
    with pytest.raises(GeometryError, match=r"missing slices: about 1 .*5 mm between slices 3 and 4"):
        load_volume(tmp_path / "s")


def test_uneven_spacing_is_reported(tmp_path):
    origin = np.array([-100.0, -120.0, 40.0])
    z = np.array([0.0, 2.5, 5.0, 8.0, 10.5])
    write_series(tmp_path / "s", unique_hu((5, 3, 3)), positions=origin + z[:, None] * [0, 0, 1])
    with pytest.raises(GeometryError, match=r"uneven slice spacing: median step 2\.5 mm.*3 mm between slices 3 and 4"):
        load_volume(tmp_path / "s")


def test_small_position_rounding_is_tolerated(tmp_path):
    origin = np.array([-100.0, -120.0, 40.0])
    z = np.arange(5) * 2.5 + np.array([0, 0.004, -0.003, 0.002, 0])  # scanner rounding, well under 1 %
    spec = write_series(tmp_path / "s", unique_hu((5, 3, 3)), positions=origin + z[:, None] * [0, 0, 1])
    vol = load_volume(tmp_path / "s")
    assert vol.spacing[2] == pytest.approx(2.5, abs=0.01)
    assert np.array_equal(vol.array, unique_hu((5, 3, 3)).transpose(2, 1, 0)[::-1, ::-1, :])
    assert len(spec.files) == 5


def test_duplicate_positions_are_refused(tmp_path):
    origin = np.array([0.0, 0.0, 0.0])
    z = np.array([0.0, 2.5, 2.5, 5.0])
    write_series(tmp_path / "s", unique_hu((4, 3, 3)), positions=origin + z[:, None] * [0, 0, 1])
    with pytest.raises(GeometryError, match="share a position"):
        load_volume(tmp_path / "s")


def test_two_series_need_series_uid(tmp_path):
    a = write_series(tmp_path, unique_hu((3, 4, 4)), prefix="a", SeriesDescription="AXIAL 2.5")
    b = write_series(tmp_path, unique_hu((5, 4, 4), start=0), prefix="b", SeriesDescription="CORONAL")
    with pytest.raises(InputError, match="holds 2 series") as err:
        load_volume(tmp_path)
    text = str(err.value)
    assert a.series_uid in text and b.series_uid in text and "AXIAL 2.5" in text and "5 file(s)" in text
    vol = load_volume(tmp_path, series_uid=b.series_uid)
    assert vol.shape == (4, 4, 5) and vol.meta["series_uid"] == b.series_uid
    assert_matches_dicom(vol, b.files)
    with pytest.raises(InputError, match="not in this folder"):
        load_volume(tmp_path, series_uid="1.2.3.4")


def test_gantry_tilt_is_refused(tmp_path):
    origin = np.array([-100.0, -120.0, 40.0])
    s = np.arange(5)[:, None]
    positions = origin + s * 2.5 * np.array([0, 0, 1.0]) + s * 0.35 * np.array([0, 1.0, 0])  # atan(0.35/2.5)
    write_series(tmp_path / "s", unique_hu((5, 3, 3)), positions=positions)
    with pytest.raises(GeometryError, match=r"not along the slice normal.*tilt about 7\.97 degrees"):
        load_volume(tmp_path / "s")


def test_mixed_matrix_sizes(tmp_path):
    spec = write_series(tmp_path, unique_hu((3, 4, 4)), spacing=2.0)
    write_slice(tmp_path / "odd", unique_hu((6, 5)), position=spec.positions[-1] + [0, 0, 2.0],
                series_uid=spec.series_uid, study_uid=spec.study_uid)
    with pytest.raises(GeometryError, match=r"mixed matrix sizes.*4x4 \(3 slices\).*6x5 \(1 slice\)"):
        load_volume(tmp_path)


def test_mixed_orientation_and_pixel_spacing(tmp_path):
    spec = write_series(tmp_path / "o", unique_hu((3, 4, 4)), spacing=2.0)
    c, s = np.cos(0.1), np.sin(0.1)
    write_slice(tmp_path / "o" / "rot", unique_hu((4, 4)), position=spec.positions[-1] + [0, 0, 2.0],
                orientation=(c, s, 0, -s, c, 0), series_uid=spec.series_uid, study_uid=spec.study_uid)
    with pytest.raises(GeometryError, match="mixed ImageOrientationPatient"):
        load_volume(tmp_path / "o")
    spec = write_series(tmp_path / "p", unique_hu((3, 4, 4)), spacing=2.0, pixel_spacing=(0.8, 0.8))
    write_slice(tmp_path / "p" / "px", unique_hu((4, 4)), position=spec.positions[-1] + [0, 0, 2.0],
                pixel_spacing=(0.9, 0.9), series_uid=spec.series_uid, study_uid=spec.study_uid)
    with pytest.raises(GeometryError, match=r"mixed PixelSpacing.*0\.9"):
        load_volume(tmp_path / "p")


@pytest.mark.parametrize("orientation", [
    (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # sagittal
    (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),  # coronal
    (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0),  # axial, patient rotated 180 degrees
])
def test_non_axial_series_become_ras_canonical(tmp_path, orientation):
    spec = write_series(tmp_path, unique_hu((4, 5, 6)), orientation=orientation, spacing=1.5)
    vol = load_volume(tmp_path)
    assert aff2axcodes(vol.affine) == ("R", "A", "S")
    assert np.allclose(np.abs(vol.affine[:3, :3]), np.diag(np.abs(np.diag(vol.affine[:3, :3]))))
    assert sorted(np.round(vol.spacing, 6)) == sorted([0.7, 0.8, 1.5])
    assert_matches_dicom(vol, spec.files)


def test_enhanced_multiframe_matches_single_frame_series(tmp_path):
    hu = unique_hu((5, 4, 3))
    write_series(tmp_path / "single", hu)
    spec = write_enhanced_ct(tmp_path / "enhanced.dcm", hu, frame_order=[3, 0, 4, 1, 2], slope=0.5,
                             intercept=-1000)
    a, b = load_volume(tmp_path / "single"), load_volume(spec.files[0])
    assert np.array_equal(a.array, b.array) and np.allclose(a.affine, b.affine)


def test_single_slice_series_in_a_folder(tmp_path):
    write_series(tmp_path, unique_hu((1, 4, 4)), spacing=3.0)
    vol = load_volume(tmp_path)
    assert vol.shape == (4, 4, 1) and vol.spacing[2] == pytest.approx(3.0)


def test_compressed_data_decodes_when_a_plugin_is_available():
    from pydicom.pixels import get_decoder

    compressed, plain = pydicom_file("MR_small_jp2klossless.dcm"), pydicom_file("MR_small.dcm")
    syntax = pydicom.dcmread(str(compressed), stop_before_pixels=True).file_meta.TransferSyntaxUID
    if not get_decoder(syntax).is_available:
        pytest.skip("no JPEG 2000 decoder installed")
    assert np.array_equal(load_volume(compressed).array, load_volume(plain).array)


def test_compressed_data_without_plugin_names_the_extra(tmp_path):
    from pydicom.pixels import get_decoder

    src = pydicom_file("MR_small_jpeg_ls_lossless.dcm")
    if get_decoder(pydicom.dcmread(str(src), stop_before_pixels=True).file_meta.TransferSyntaxUID).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(src, folder / "slice1")
    with pytest.raises(InputError, match=r"JPEG-LS.*pip install 'ctglip-sdk\[jpeg\]'") as err:
        load_volume(folder)
    assert "slice1" in str(err.value)



def test_legacy_multiframe_with_frame_offsets(tmp_path):
    hu = unique_hu((3, 4, 5))
    write_series(tmp_path / "single", hu, spacing=2.5)
    path = tmp_path / "multi.dcm"
    write_slice(path, hu[0], position=(-100.0, -120.0, 40.0), series_uid="1.2.826.0.1.3680043.8.498.1",
                study_uid="1.2.826.0.1.3680043.8.498.2")
    ds = pydicom.dcmread(str(path))
    ds.NumberOfFrames = 3
    ds.GridFrameOffsetVector = [0.0, 2.5, 5.0]
    ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
    ds.save_as(str(path))
    a, b = load_volume(tmp_path / "single"), load_volume(path)
    assert np.array_equal(a.array, b.array) and np.allclose(a.affine, b.affine)


@pytest.mark.parametrize("tags,message", [
    ({"RescaleSlope": "0"}, "RescaleSlope is not a usable number"),
    ({"RescaleIntercept": "abc"}, "RescaleIntercept is not a usable number"),
])
def test_unusable_rescale_values_are_refused_naming_the_file(tmp_path, tags, message):
    """A slope of 0 or a non-number used to fall back to 1/0 silently and give wrong HU."""
    write_series(tmp_path / "s", unique_hu((4, 5, 4)))
    victim = sorted((tmp_path / "s").iterdir())[1]
    ds = pydicom.dcmread(victim)
    for keyword, value in tags.items():  # written as LO: pydicom refuses to write a malformed DS
        del ds[keyword]
        ds.add_new(pydicom.datadict.tag_for_keyword(keyword), "LO", value)
    ds.save_as(victim)
    with pytest.raises(InputError, match=message) as err:
        load_volume(tmp_path / "s")
    assert victim.name in str(err.value)


def test_a_ct_without_rescale_intercept_loads_with_a_warning(tmp_path, caplog):
    write_series(tmp_path / "s", unique_hu((3, 5, 4)), intercepts=0.0)
    for f in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(f)
        del ds.RescaleIntercept
        ds.save_as(f)
    vol = load_volume(tmp_path / "s")
    assert vol.shape == (4, 5, 3) and "without RescaleIntercept" in caplog.text
    assert caplog.text.count("without RescaleIntercept") == 1  # once per series, not once per slice


def test_a_header_error_keeps_its_own_reason(tmp_path):
    """InputError is a ValueError: the catch-all for malformed values used to replace every specific reason
    with "malformed image header"."""
    write_series(tmp_path / "s", unique_hu((4, 5, 4)))
    victim = sorted((tmp_path / "s").iterdir())[2]
    ds = pydicom.dcmread(victim)
    del ds.ImagePositionPatient
    ds.save_as(victim)
    with pytest.raises(InputError, match="no ImagePositionPatient: cannot place the image"):
        load_volume(tmp_path / "s")


def test_a_slice_without_the_dicom_preamble_is_named_not_silently_dropped(tmp_path):
    """Such a file is not read as DICOM; dropping it used to shorten the volume without a word."""
    spec = write_series(tmp_path / "s", unique_hu((5, 5, 4)), shuffle_names=False)
    last = spec.files[-1]
    ds = pydicom.dcmread(last)
    from pydicom.filebase import DicomBytesIO

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    pydicom.filewriter.write_dataset(buf, ds)  # the bare dataset: no preamble, no file meta
    last.write_bytes(buf.getvalue())
    (tmp_path / "s" / "notes.txt").write_text("not DICOM at all")  # plain junk is still skipped quietly
    with pytest.raises(InputError, match="no DICOM preamble") as err:
        load_volume(tmp_path / "s")
    assert last.name in str(err.value)
