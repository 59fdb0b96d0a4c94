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


# --- A second review of loaders against real files (2026-12-07) ------------------------------------------------

def _caret_table(names: dict) -> bytes:
    """The header extension TotalSegmentator writes (nifti_ext_header.add_label_map_to_nifti): an XML label table."""
    body = "".join(f'<Label Key="{i}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{n}]]></Label>\n'
                   for i, n in names.items())
    return ('<?xml version="1.0" encoding="UTF-8"?> <CaretExtension>  <Date><![CDATA[2013-07-14T05:45:09]]></Date> '
            '<VolumeInformation Index="0">   <LabelTable>\n' + body + '\n  </LabelTable>  <StudyMetaDataLinkSet> '
            '</StudyMetaDataLinkSet>  <VolumeType><![CDATA[Label]]></VolumeType> </VolumeInformation>'
            '</CaretExtension>\n').encode()


def _ml_mask(tmp_path: Path, names: dict, table) -> tuple:
    """A CT and a multi-label mask on its grid: pancreas, urinary bladder and liver under ``names``' ids."""
    from ctglip_sdk.organs import V2

    aff = np.diag([-1.0, -1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 10), np.int16), aff), tmp_path / "ct.nii.gz")
    ids = {n: i for i, n in names.items()}
    lab = np.zeros((20, 20, 10), np.uint8)
    lab[2:6, 2:6, 2:5] = ids["pancreas"]
    lab[10:14, 2:6, 2:5] = ids["urinary_bladder"]
    lab[2:6, 10:14, 5:8] = ids["liver"]
    img = nib.Nifti1Image(lab, aff)
    if table is not None:
        img.header.extensions.append(nib.nifti1.Nifti1Extension(0, _caret_table(table)))
    nib.save(img, tmp_path / "seg.nii.gz")
    assert V2[ids["pancreas"]] == "pancreas" or names is not V2
    return load_volume(tmp_path / "ct.nii.gz"), tmp_path / "seg.nii.gz"


def test_a_totalsegmentator_2_file_in_v2_order_is_read_through_its_own_label_table(tmp_path, caplog):
    from ctglip_sdk.organs import V1, V2

    vol, mask = _ml_mask(tmp_path, V2, V2)
    with caplog.at_level(logging.INFO, logger="ctglip_sdk.io.label_table"):
        seg = load_segmentation(mask, like=vol)
    # Read as v1 these ids name aorta and vertebrae_L2 (pancreas 7, bladder 21 in v2), without any error.
    assert V1[7] == "aorta" and V2[7] == "pancreas"
    assert seg.present() == {"liver": 48, "pancreas": 48, "urinary_bladder": 48}
    assert seg.meta["label_map"] == "totalseg_v2" and "read as totalseg_v2" in caplog.text
    with pytest.raises(InputError, match=r"label map 'totalseg_v1' disagrees with the label table .* \(id 7: "
                                         r"'aorta' in the map, 'pancreas' in the file\); label_map='totalseg_v2' "
                                         "matches it") as err:
        load_segmentation(mask, like=vol, label_map="totalseg_v1")
    assert "seg.nii.gz" in str(err.value)
    assert load_segmentation(mask, like=vol, label_map="totalseg_v2").present() == seg.present()


def test_a_v1_order_file_with_its_table_and_a_file_without_one_read_as_v1(tmp_path):
    from ctglip_sdk.organs import V1

    vol, mask = _ml_mask(tmp_path, V1, V1)
    seg = load_segmentation(mask, like=vol)
    assert seg.meta["label_map"] == "totalseg_v1" and seg.present()["pancreas"] == 48
    vol, mask = _ml_mask(tmp_path, V1, None)
    assert load_segmentation(mask, like=vol).present() == seg.present()


def test_a_label_table_of_other_names_is_used_and_one_missing_a_present_id_refused(tmp_path):
    own = {1: "pancreas", 2: "urinary_bladder", 3: "liver"}
    vol, mask = _ml_mask(tmp_path, own, {**own, 3: "liver_custom"})
    seg = load_segmentation(mask, like=vol)
    assert seg.meta["label_map"] == "file" and seg.present() == {"pancreas": 48, "urinary_bladder": 48,
                                                                 "liver_custom": 48}
    vol, mask = _ml_mask(tmp_path, own, {1: "pancreas", 2: "urinary_bladder"})
    with pytest.raises(InputError, match=r"label table in the file's header does not name label ids \[3\]"):
        load_segmentation(mask, like=vol)


def test_a_same_shape_mask_on_another_grid_is_refused_not_resampled(tmp_path):
    from ctglip_sdk.errors import GeometryError

    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    aff[:3, 3] = (-50.0, -60.0, 20.0)
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 12), np.int16), aff), tmp_path / "ct.nii.gz")
    vol = load_volume(tmp_path / "ct.nii.gz")
    lab = np.zeros((32, 32, 12), np.uint8)
    lab[4:20, 4:20, 2:10] = 5
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "identity.nii.gz")  # the scripting slip
    with pytest.raises(GeometryError, match="identity.nii.gz: mask mismatch: same shape as the image but another"):
        load_segmentation(tmp_path / "identity.nii.gz", like=vol)  # was: 2,048 liver voxels loaded as far fewer
    folder = tmp_path / "seg"
    folder.mkdir()
    nib.save(nib.Nifti1Image((lab == 5).astype(np.uint8), np.eye(4)), folder / "liver.nii.gz")
    with pytest.raises(GeometryError, match="mask mismatch: same shape"):
        load_segmentation(folder, like=vol)
    nib.save(nib.Nifti1Image(lab, aff), tmp_path / "right.nii.gz")
    assert load_segmentation(tmp_path / "right.nii.gz", like=vol).present() == {"liver": int((lab == 5).sum())}


def test_positions_rounded_to_a_hundredth_of_a_millimetre_load(tmp_path):
    # A 0.625 mm series of 200 slices whose positions were written rounded to 0.01 mm: steps of 0.62 and 0.63 mm,
    # and for this start the median is 0.62 and one difference from it computes as just over 0.01.
    z = np.array([float(f"{-251.3 + 0.625 * k:.2f}") for k in range(200)])
    steps = np.diff(z - z[0])
    assert np.abs(steps - np.median(steps)).max() > 0.01  # over the bare tolerance, in floating point
    positions = np.stack([np.full(200, -100.0), np.full(200, -120.0), z], 1)
    write_series(tmp_path / "s", np.zeros((200, 2, 3), np.int16), positions=positions, spacing=0.625,
                 shuffle_names=False)
    vol = load_volume(tmp_path / "s")  # was GeometryError "uneven slice spacing"
    assert vol.shape[2] == 200 and vol.spacing[2] == pytest.approx(0.625, abs=1e-3)


def test_a_slice_exported_twice_is_read_once_but_a_reused_uid_keeps_every_slice(tmp_path, caplog):
    import shutil

    spec = write_series(tmp_path / "s", HU)
    shutil.copy(spec.files[1], tmp_path / "s" / "copy_of_slice")
    with caplog.at_level(logging.INFO, logger="ctglip_sdk.io.dicom"):
        vol = load_volume(tmp_path / "s")  # was: "1 slice(s) share a position ... split the series"
    assert vol.shape[2] == 3 and "repeat an instance" in caplog.text
    np.testing.assert_array_equal(np.sort(vol.array.ravel()), np.sort(HU.astype(np.float32).ravel()))
    # A faulty anonymiser's one SOPInstanceUID in every slice: distinct positions, so all of them are kept.
    uid = generate_uid()
    for f in spec.files:
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as(f)
    (tmp_path / "s" / "copy_of_slice").unlink()
    assert load_volume(tmp_path / "s").shape[2] == 3


def test_a_series_without_preambles_is_named_as_such_and_junk_bytes_never_printed(tmp_path, recwarn):
    import struct

    spec = write_series(tmp_path / "bare", HU)
    for f in spec.files:
        ds = pydicom.dcmread(f)
        ds.preamble = None
        ds.save_as(f, enforce_file_format=False)  # a bare dataset: no preamble, no "DICM"
        assert f.read_bytes()[128:132] != b"DICM"
    with pytest.raises(InputError, match="is a DICOM dataset but has no DICOM preamble or file meta header; "
                                         r"it is not read \(3 such file"):
        load_volume(tmp_path / "bare")  # was: "no DICOM image files found in this folder"
    # A non-DICOM file beside a series is probed as a bare dataset; its bytes must not reach a warning.
    write_series(tmp_path / "ok", HU)
    junk = (b"\x08\x00\x05\x00" + struct.pack("<I", 8) + b"JOHN_DOE"  # SpecificCharacterSet "JOHN_DOE"
            + b"\x20\x00\x0e\x00" + struct.pack("<I", 4) + b"1.23")
    (tmp_path / "ok" / "LOCKFILE").write_bytes(junk)
    assert load_volume(tmp_path / "ok").shape[2] == 3
    assert not [w for w in recwarn if "JOHN_DOE" in str(w.message)]
