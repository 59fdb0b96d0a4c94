"""NIfTI loading: RAS+ canonicalisation of flipped/permuted affines, scaling, and DICOM/NIfTI agreement."""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import aff2axcodes

from ctglip_sdk import InputError
from ctglip_sdk.io import load_volume
from dicom_factory import unique_hu, write_series

# Stored axes: axis 0 runs toward Inferior (2.5 mm), axis 1 toward Right (0.7 mm), axis 2 toward Posterior (0.8 mm).
PERMUTED = np.array([
    [0.0, 0.7, 0.0, -40.0],
    [0.0, 0.0, -0.8, 25.0],
    [-2.5, 0.0, 0.0, 110.0],
    [0.0, 0.0, 0.0, 1.0],
])


def world(affine: np.ndarray, ijk) -> np.ndarray:
    return nib.affines.apply_affine(affine, np.asarray(ijk, dtype=float))


def test_permuted_flipped_affine_is_canonicalised(tmp_path):
    data = unique_hu((5, 6, 7)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, PERMUTED), tmp_path / "ct.nii.gz")
    vol = load_volume(tmp_path / "ct.nii.gz")
    assert aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.shape == (6, 7, 5)
    assert np.allclose(vol.spacing, (0.7, 0.8, 2.5))
    inv = np.linalg.inv(vol.affine)
    rng = np.random.default_rng(1)
    for ijk in rng.integers(0, [5, 6, 7], size=(25, 3)):  # the same world point holds the same value
        target = np.round(world(inv, world(PERMUTED, ijk))).astype(int)
        assert vol.array[tuple(target)] == data[tuple(ijk)]
    assert vol.meta["format"] == "nifti" and vol.meta["patient"] is None
    assert vol.meta["source_path"].endswith("ct.nii.gz")


def test_scl_slope_and_integer_storage(tmp_path):
    stored = (np.arange(24).reshape(2, 3, 4) - 10).astype(np.int16)
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    img.header["descrip"] = b"portal venous"
    nib.save(img, tmp_path / "ct.nii")
    vol = load_volume(tmp_path / "ct.nii")
    assert vol.array.dtype == np.float32 and vol.meta["series_description"] == "portal venous"
    assert np.array_equal(vol.array, stored * 2.0 - 1024.0)


@pytest.mark.parametrize("orientation", [(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)])
def test_same_volume_through_dicom_and_nifti(tmp_path, orientation):
    hu = unique_hu((4, 5, 6))  # (slices, rows, columns)
    spec = write_series(tmp_path / "dcm", hu, orientation=orientation, spacing=2.0, pixel_spacing=(0.9, 0.6))
    # The same image written as NIfTI by hand: index order (column, row, slice), affine from the DICOM tags.
    x, y = spec.orientation[:3], spec.orientation[3:]
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = x * 0.6, y * 0.9
    lps[:3, 2] = spec.positions[1] - spec.positions[0]
    lps[:3, 3] = spec.positions[0]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0).astype(np.float32), ras), tmp_path / "ct.nii.gz")

    a, b = load_volume(tmp_path / "dcm"), load_volume(tmp_path / "ct.nii.gz")
    assert np.array_equal(a.array, b.array)
    assert np.allclose(a.affine, b.affine, atol=1e-5)
    for s, r, c in [(0, 0, 0), (3, 4, 5), (2, 1, 3), (1, 4, 0)]:
        point = spec.ras(s, r, c)
        ia = np.round(world(np.linalg.inv(a.affine), point)).astype(int)
        ib = np.round(world(np.linalg.inv(b.affine), point)).astype(int)
        assert np.allclose(a.world(ia), point, atol=1e-4) and np.allclose(b.world(ib), point, atol=1e-4)
        assert a.array[tuple(ia)] == b.array[tuple(ib)] == hu[s, r, c]


def test_trailing_singleton_and_2d_images(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5, 1), np.float32), np.eye(4)), tmp_path / "a.nii.gz")
    assert load_volume(tmp_path / "a.nii.gz").shape == (3, 4, 5)
    nib.save(nib.Nifti1Image(np.ones((3, 4), np.float32), np.eye(4)), tmp_path / "b.nii.gz")
    assert load_volume(tmp_path / "b.nii.gz").shape == (3, 4, 1)


def test_4d_image_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5, 2), np.float32), np.eye(4)), tmp_path / "dwi.nii.gz")
    with pytest.raises(InputError, match=r"4-D image of shape \(3, 4, 5, 2\)") as err:
        load_volume(tmp_path / "dwi.nii.gz")
    assert "dwi.nii.gz" in str(err.value)


def test_singular_affine_is_refused(tmp_path):
    path = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), np.eye(4)), path)
    raw = bytearray(path.read_bytes())  # nibabel will not write a singular affine: patch the header
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw[:352])))
    header["qform_code"], header["sform_code"] = 0, 1
    header["srow_z"] = [0.0, 0.0, 0.0, 0.0]
    raw[:348] = header.binaryblock
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="singular") as err:
        load_volume(path)
    assert "flat.nii" in str(err.value)


def test_a_header_without_orientation_codes_warns_and_complex_voxels_are_refused(tmp_path, caplog):
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([2.0, 2.0, 3.0, 1.0]))
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    nib.save(img, tmp_path / "nocodes.nii.gz")
    vol = load_volume(tmp_path / "nocodes.nii.gz")
    assert vol.shape == (4, 5, 6) and "no orientation in the NIfTI header" in caplog.text
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.complex64), np.eye(4)), tmp_path / "complex.nii.gz")
    with pytest.raises(InputError, match="complex, not a scalar number") as err:
        load_volume(tmp_path / "complex.nii.gz")
    assert "complex.nii.gz" in str(err.value)
