"""NIfTI loading: RAS+ canonicalisation, scaling, DICOM/NIfTI agreement, corrupt .nii.gz and non-path arguments."""

from __future__ import annotations

import gzip
import io
import logging

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import aff2axcodes

from ctglip_sdk import InputError
from ctglip_sdk.io import load_segmentation, load_volume
from ctglip_sdk.io.nifti import is_nifti, load_nifti, open_nifti
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


# --- corrupt .nii.gz: every kind of damage to the gzip layer is an InputError naming the file and the reason ---

CORRUPT = "corrupt gzip stream"
TRUNCATED = "truncated or corrupt gzip stream (it ends before the end-of-stream marker)"


@pytest.fixture
def gz_nifti(tmp_path):
    """A real nibabel-written .nii.gz (noisy int16, so the deflate stream has many blocks) and its voxels."""
    data = np.random.default_rng(3).normal(0, 300, (48, 40, 32)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0]))
    img.header["descrip"] = b"portal venous"
    path = tmp_path / "good.nii.gz"
    nib.save(img, path)
    return path, data, path.read_bytes()


def damaged(tmp_path, raw: bytes, name: str, flip=(), cut=None):
    """A copy of ``raw`` with the bytes at ``flip`` inverted and/or cut to ``raw[:cut]``."""
    b = bytearray(raw)
    for i in flip:
        b[i] ^= 0xFF
    path = tmp_path / name
    path.write_bytes(bytes(b[:cut] if cut is not None else b))
    return path


def refused(path, loader=load_volume) -> InputError:
    with pytest.raises(InputError) as err:
        loader(path)
    assert err.value.path == str(path) and str(err.value) == f"{path}: {err.value.reason}"
    return err.value


@pytest.mark.parametrize("name, where, reason", [
    ("crc.nii.gz", -8, f"{CORRUPT} (CRC check failed)"),         # first byte of the trailer's CRC-32
    ("crc_last.nii.gz", -5, f"{CORRUPT} (CRC check failed)"),    # last byte of it
    ("length.nii.gz", -4, f"{CORRUPT} (length check failed)"),   # the trailer's ISIZE
])
def test_a_damaged_gzip_trailer_is_refused(tmp_path, gz_nifti, name, where, reason):
    path, _data, raw = gz_nifti
    bad = damaged(tmp_path, raw, name, flip=[len(raw) + where])
    assert open_nifti(bad)[1] == (48, 40, 32)  # the header still reads: only a full read can tell
    assert refused(bad).reason == reason


def test_flipped_bytes_inside_the_deflate_stream_are_refused(tmp_path, gz_nifti):
    path, _data, raw = gz_nifti
    reasons = set()
    # Past the header's deflate block (the error would then come from the header read, also an InputError), and
    # short of the end-of-stream marker (damage there reads as a truncated stream: see the last flip below).
    for k, pos in enumerate(np.linspace(len(raw) // 4, len(raw) - 64, 12).astype(int)):
        err = refused(damaged(tmp_path, raw, f"flip{k}.nii.gz", flip=[pos]))
        assert err.reason.startswith(CORRUPT), err.reason
        reasons.add(err.reason.split(":")[0])
    last = refused(damaged(tmp_path, raw, "marker.nii.gz", flip=[len(raw) - 9])).reason
    assert last == TRUNCATED or last.startswith(CORRUPT), last
    # A bit flip that still decodes (silently wrong voxels before) is caught by the CRC.
    assert f"{CORRUPT} (CRC check failed)" in reasons
    one_bit = bytearray(raw)
    one_bit[len(raw) // 2] ^= 0x01
    (tmp_path / "bit.nii.gz").write_bytes(bytes(one_bit))
    assert refused(tmp_path / "bit.nii.gz").reason.startswith(CORRUPT)


@pytest.mark.parametrize("cut", [0.5, -4, -8, -9])  # mid-stream, half the trailer, no trailer, into the deflate end
def test_a_truncated_gzip_stream_is_refused(tmp_path, gz_nifti, cut):
    path, _data, raw = gz_nifti
    end = int(len(raw) * cut) if isinstance(cut, float) else len(raw) + cut
    assert refused(damaged(tmp_path, raw, "cut.nii.gz", cut=end)).reason == TRUNCATED


def test_gzip_damage_in_masks_and_direct_loader_calls(tmp_path, gz_nifti):
    path, data, raw = gz_nifti
    bad = damaged(tmp_path, raw, "seg.nii.gz", flip=[len(raw) - 8])
    like = load_volume(path)
    err = refused(bad, lambda p: load_segmentation(p, like=like, label_map={1: "liver"}))  # integer read path
    assert err.reason == f"{CORRUPT} (CRC check failed)"
    assert refused(bad, load_nifti).reason == f"{CORRUPT} (CRC check failed)"


def test_an_intact_gzip_loads_unchanged_with_padding_or_trailing_bytes(tmp_path, gz_nifti, caplog):
    path, data, raw = gz_nifti
    expected = load_volume(path).array
    assert np.array_equal(expected, nib.as_closest_canonical(nib.load(path)).get_fdata(dtype=np.float32))
    (tmp_path / "padded.nii.gz").write_bytes(raw + b"\0" * 64)  # zero padding is legal gzip (tape blocks)
    assert np.array_equal(load_volume(tmp_path / "padded.nii.gz").array, expected) and not caplog.text
    (tmp_path / "junk.nii.gz").write_bytes(raw + b"junk after the stream")  # gzip(1): 'trailing garbage ignored'
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(load_volume(tmp_path / "junk.nii.gz").array, expected)
    assert "bytes after the end of the gzip stream are ignored" in caplog.text
    (tmp_path / "two.nii.gz").write_bytes(raw + gzip.compress(b"extra"))  # a second member: data past the image
    assert np.array_equal(load_volume(tmp_path / "two.nii.gz").array, expected)


def test_gzip_damage_within_the_header_is_named_too(tmp_path, gz_nifti):
    path, _data, raw = gz_nifti
    # nibabel's type sniffing hides the gzip error ('cannot work out file type'); the reason is still given.
    assert refused(damaged(tmp_path, raw, "head.nii.gz", cut=40), open_nifti).reason == TRUNCATED
    plain = tmp_path / "plain.nii"
    nib.save(nib.load(path), plain)
    (tmp_path / "plain.nii.gz").write_bytes(plain.read_bytes())  # uncompressed under a .gz name
    assert refused(tmp_path / "plain.nii.gz").reason == "not a gzip stream, although the name ends in .gz"


def test_short_voxel_data_in_an_intact_stream_and_in_a_plain_nii(tmp_path):
    plain = tmp_path / "short.nii"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)), plain)
    plain.write_bytes(plain.read_bytes()[:2000])
    reason = "truncated: the voxel data are shorter than the header declares"
    assert refused(plain).reason == reason
    packed = tmp_path / "short.nii.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))  # a valid gzip of a cut file: CRC fine, data short
    assert refused(packed).reason == reason


def test_non_path_arguments_are_input_errors(tmp_path):
    for call in (load_nifti, open_nifti, is_nifti, load_volume):
        for bad in (None, 3):
            with pytest.raises(InputError, match=f"path: expected .*, got {type(bad).__name__}"):
                call(bad)
