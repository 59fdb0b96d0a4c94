"""load_segmentation: TotalSegmentator layouts, v1/v2 maps, nearest-neighbour resampling through affines, errors."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ctglip_sdk import ConfigError, InputError
from ctglip_sdk.io import load_segmentation, load_volume
from ctglip_sdk.organs import V1, V2

SPACING = (1.0, 1.2, 2.0)
SHAPE = (12, 10, 8)
# The CT is stored LPS-like (x and y flipped), as DICOM-derived NIfTI often is: the loader must canonicalise.
FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])


def stored_affine(spacing=SPACING, shape=SHAPE, origin=(-5.0, 3.0, 10.0)) -> np.ndarray:
    """Affine of an array stored with i toward Left and j toward Posterior (flipped x, y)."""
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = origin
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, shape[0] - 1
    flip[1, 1], flip[1, 3] = -1, shape[1] - 1
    return aff @ flip  # stored index (i, j) = canonical (I-1-i, J-1-j)


def canonical_labels() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:6, 1:5, 1:4] = 5  # liver
    lab[7:11, 5:9, 2:6] = 1  # spleen
    lab[3:5, 6:9, 5:7] = 3  # kidney_left
    return lab


def to_stored(canonical: np.ndarray) -> np.ndarray:
    return canonical[::-1, ::-1, :]


@pytest.fixture
def ct(tmp_path):
    data = np.random.default_rng(0).normal(40, 10, SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(to_stored(data), stored_affine()), tmp_path / "ct.nii.gz")
    return load_volume(tmp_path / "ct.nii.gz")


def save(path, array, affine, dtype=np.uint8):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), affine), path)
    return path


def test_multilabel_on_the_same_grid_is_exact(tmp_path, ct):
    path = save(tmp_path / "seg.nii.gz", to_stored(canonical_labels()), stored_affine())
    seg = load_segmentation(path, like=ct)
    assert np.array_equal(seg.array, canonical_labels())
    assert np.allclose(seg.affine, ct.affine) and seg.labels == V1
    assert seg.present() == {"liver": 4 * 4 * 3, "spleen": 4 * 4 * 4, "kidney_left": 2 * 3 * 2}
    assert seg.meta["layout"] == "multilabel" and seg.meta["label_map"] == "totalseg_v1"


def test_multilabel_on_a_coarser_shifted_grid(tmp_path, ct):
    # Coarse grid: twice the spacing, origin shifted by 0.3 fine voxels, axes permuted (k, i, j) and flipped.
    coarse = np.zeros((4, 6, 5), np.uint8)  # stored axes: (z, x, y)
    coarse[1:3, 1:3, 1:3] = 5
    coarse[3, 4:6, 2:4] = 1
    aff = np.zeros((4, 4))
    aff[2, 0], aff[0, 1], aff[1, 2] = 4.0, 2.0, -2.4  # axis0 -> +z 4 mm, axis1 -> +x 2 mm, axis2 -> -y 2.4 mm
    aff[:3, 3] = ct.affine[:3, 3] + np.array([0.3, 0.3 * 1.2 + 4 * 2.4, 0.3 * 2.0])
    aff[3, 3] = 1
    path = save(tmp_path / "coarse.nii.gz", coarse, aff)
    seg = load_segmentation(path, like=ct)
    assert seg.array.shape == ct.shape and np.allclose(seg.affine, ct.affine)
    # Brute-force nearest neighbour, voxel by voxel, from the definition.
    inv = np.linalg.inv(aff)
    expected = np.zeros(ct.shape, np.uint8)
    for ijk in np.ndindex(*ct.shape):
        src = np.floor(nib.affines.apply_affine(inv, ct.world(ijk)) + 0.5).astype(int)
        if np.all(src >= 0) and np.all(src < coarse.shape):
            expected[ijk] = coarse[tuple(src)]
    assert np.array_equal(seg.array, expected)
    # Twice the spacing per axis: every coarse voxel inside the field of view becomes exactly 2x2x2 fine voxels.
    fine_ml = np.count_nonzero(seg.array == 5) * np.prod(ct.spacing)
    assert fine_ml == pytest.approx(np.count_nonzero(coarse == 5) * 2.0 * 2.4 * 4.0)


def test_per_class_folder_layout(tmp_path, ct):
    folder = tmp_path / "masks"
    folder.mkdir()
    labels = canonical_labels()
    for organ_id, name in [(5, "liver"), (1, "spleen"), (3, "kidney_left")]:
        save(folder / f"{name}.nii.gz", to_stored(labels == organ_id), stored_affine())
    save(folder / "aorta.nii.gz", np.zeros(SHAPE), stored_affine())  # empty classes are written too
    seg = load_segmentation(folder, like=ct)
    assert np.array_equal(seg.array, labels) and seg.meta["layout"] == "per_class"
    assert set(seg.present()) == {"liver", "spleen", "kidney_left"}


def test_per_class_folder_on_another_grid_is_resampled_onto_like(tmp_path, ct):
    """docs/inputs.md: load_segmentation(..., like=vol) resamples any overlapping grid, for both layouts (training
    and evaluation rely on it); only ingest refuses a mask on another grid than its image (docs/index.md)."""
    labels = canonical_labels()
    coarse_affine = stored_affine(spacing=tuple(2 * s for s in SPACING), shape=(6, 5, 4))
    coarse = to_stored(labels)[::2, ::2, ::2]  # stored order, every other voxel: twice the spacing
    multilabel = load_segmentation(save(tmp_path / "coarse.nii.gz", coarse, coarse_affine), like=ct)
    folder = tmp_path / "coarse"
    folder.mkdir()
    for organ_id, name in [(5, "liver"), (1, "spleen"), (3, "kidney_left")]:
        save(folder / f"{name}.nii.gz", coarse == organ_id, coarse_affine)
    seg = load_segmentation(folder, like=ct)
    assert seg.array.shape == ct.shape and np.array_equal(seg.array, multilabel.array)
    assert set(seg.present()) == {"liver", "spleen", "kidney_left"}
    # Files on different grids: each grid is resampled onto like=; without like= there is no one grid to return.
    (folder / "spleen.nii.gz").unlink()
    save(folder / "liver.nii.gz", to_stored(labels == 5), stored_affine())
    mixed = load_segmentation(folder, like=ct)
    assert np.array_equal(mixed.array == 5, labels == 5) and np.array_equal(mixed.array == 3, multilabel.array == 3)
    with pytest.raises(InputError, match="per-class masks lie on different grids; pass like=volume"):
        load_segmentation(folder)


def test_per_class_folder_unknown_name_and_overlap(tmp_path, ct):
    folder = tmp_path / "masks"
    folder.mkdir()
    liver = np.zeros(SHAPE, bool)
    liver[2:6, 2:6, 2:6] = True
    save(folder / "liver.nii.gz", liver, stored_affine())
    save(folder / "tumour.nii.gz", liver, stored_affine())
    with pytest.raises(InputError, match="'tumour' is not a class") as err:
        load_segmentation(folder, like=ct)
    assert err.value.path.endswith("tumour.nii.gz")
    (folder / "tumour.nii.gz").unlink()
    spleen = np.zeros(SHAPE, bool)
    spleen[5:8, 5:8, 5:8] = True  # one voxel (5, 5, 5) shared with the liver
    save(folder / "spleen.nii.gz", spleen, stored_affine())
    with pytest.raises(InputError, match=r"masks overlap: liver / spleen \(1 voxels\)"):
        load_segmentation(folder, like=ct)


def test_v2_label_map(tmp_path, ct):
    v2_only = max(V2)  # an id that v1 does not have
    lab = np.zeros(SHAPE, np.uint8)
    lab[1:3, 1:3, 1:3] = 51
    lab[5:7, 5:7, 5:7] = v2_only
    path = save(tmp_path / "seg.nii.gz", to_stored(lab), stored_affine())
    seg = load_segmentation(path, like=ct, label_map="totalseg_v2")
    assert seg.labels == V2 and seg.present() == {V2[51]: 8, V2[v2_only]: 8} and V2[51] == "heart"
    with pytest.raises(InputError, match=rf"label ids \[{v2_only}\] are not in label map 'totalseg_v1'"):
        load_segmentation(path, like=ct)
    folder = tmp_path / "v2"
    folder.mkdir()
    save(folder / "heart.nii.gz", to_stored(lab == 51), stored_affine())
    assert load_segmentation(folder, like=ct, label_map="totalseg_v2").present() == {"heart": 8}
    # By default a folder whose names are v2 classes loads as v2 (since 2026-12-07; it was refused); v1 asked
    # for explicitly still refuses 'heart' (v1 has heart chambers, not 'heart').
    assert load_segmentation(folder, like=ct).meta["label_map"] == "totalseg_v2"
    with pytest.raises(InputError, match="'heart' is not a class"):
        load_segmentation(folder, like=ct, label_map="totalseg_v1")
    with pytest.raises(ConfigError):
        load_segmentation(path, like=ct, label_map="totalseg_v9")


def test_no_overlap_is_an_error(tmp_path, ct):
    # Another shape (a coarse grid far away): "no overlap". The same shape far away is a mask mismatch, first.
    far = stored_affine(spacing=tuple(2 * s for s in SPACING), shape=(6, 5, 4), origin=(500.0, 3.0, 10.0))
    path = save(tmp_path / "elsewhere.nii.gz", to_stored(canonical_labels())[::2, ::2, ::2], far)
    with pytest.raises(InputError, match="no overlap") as err:
        load_segmentation(path, like=ct)
    assert "elsewhere.nii.gz" in str(err.value)
    from ctglip_sdk.errors import GeometryError

    same_shape = save(tmp_path / "far.nii.gz", to_stored(canonical_labels()), stored_affine(origin=(500.0, 3.0, 10.0)))
    with pytest.raises(GeometryError, match="far.nii.gz: mask mismatch"):
        load_segmentation(same_shape, like=ct)


def test_without_like_and_bad_values(tmp_path):
    path = save(tmp_path / "seg.nii.gz", to_stored(canonical_labels()), stored_affine())
    seg = load_segmentation(path)
    assert np.array_equal(seg.array, canonical_labels())
    assert nib.aff2axcodes(seg.affine) == ("R", "A", "S")
    bad = save(tmp_path / "float.nii.gz", np.full(SHAPE, 0.5), np.eye(4), dtype=np.float32)
    with pytest.raises(InputError, match="non-integer"):
        load_segmentation(bad)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
@pytest.mark.parametrize("with_background", [True, False])
def test_ids_present_and_label_counts_match_numpy_across_chunks(monkeypatch, dtype, with_background):
    from ctglip_sdk import volume
    from ctglip_sdk.io import segmentation

    monkeypatch.setattr(volume, "_COUNT_CHUNK", 7)  # many chunks, some with no labelled voxel at all
    rng = np.random.default_rng(3)
    lab = np.zeros((9, 8, 5), dtype)
    lab[2:4, 1:3, 1:4] = 5
    lab[6, 6, 4] = 104 if dtype == np.uint8 else 1000  # one voxel of a high id, in the last chunk
    lab[lab == 0] = 0 if with_background else rng.integers(1, 4, size=int((lab == 0).sum()))
    for arr in (lab, np.asfortranarray(lab), lab.transpose(2, 0, 1)):
        assert segmentation._ids_present(arr) == np.unique(arr).tolist()
        counts = volume.label_counts(arr, minlength=3)
        assert np.array_equal(counts, np.bincount(arr.ravel().astype(np.int64), minlength=3))


def test_an_unknown_label_id_in_a_nifti_mask_is_named(tmp_path):
    lab = canonical_labels()
    lab[0, 0, 0] = 200  # not a TotalSegmentator v1 id
    path = save(tmp_path / "seg.nii.gz", to_stored(lab), stored_affine())
    with pytest.raises(InputError, match=r"label ids \[200\] are not in label map") as err:
        load_segmentation(path)
    assert "seg.nii.gz" in str(err.value)


# -- check_mask_grid: is the mask on its image's grid? (headers only) -------------------------------------------
def test_check_mask_grid_passes_the_images_own_grid_however_it_is_stored(tmp_path, ct):
    from ctglip_sdk.io import check_mask_grid

    check_mask_grid(save(tmp_path / "same.nii.gz", to_stored(canonical_labels()), stored_affine()), ct)
    # Stored in RAS+ order with the canonical affine: another header, the same grid.
    check_mask_grid(save(tmp_path / "ras.nii.gz", canonical_labels(), ct.affine), ct)
    # A rounding error well within half a voxel is the image's grid.
    nudged = stored_affine(origin=(-5.0, 3.0, 10.3))  # 0.15 voxels of 2 mm
    check_mask_grid(save(tmp_path / "nudged.nii.gz", to_stored(canonical_labels()), nudged), ct)
    folder = tmp_path / "seg"
    folder.mkdir()
    for organ_id, name in [(5, "liver"), (1, "spleen")]:
        save(folder / f"{name}.nii.gz", to_stored(canonical_labels() == organ_id), stored_affine())
    check_mask_grid(folder, ct)
    # Not a mask format, or a folder without per-class files: the loader says what is wrong with it.
    (tmp_path / "empty").mkdir()
    check_mask_grid(tmp_path / "empty", ct)
    (tmp_path / "seg.txt").write_text("x")
    check_mask_grid(tmp_path / "seg.txt", ct)


def test_check_mask_grid_refuses_a_shifted_lps_as_ras_or_coarse_mask_naming_both_grids(tmp_path, ct):
    from ctglip_sdk.errors import GeometryError
    from ctglip_sdk.io import check_mask_grid

    image = "(12, 10, 8) voxels of 1 x 1.2 x 2 mm"
    shifted = save(tmp_path / "shifted.nii.gz", to_stored(canonical_labels()), stored_affine(origin=(-5, 3, 50)))
    with pytest.raises(GeometryError) as err:
        check_mask_grid(shifted, ct, shown="S1/shifted.nii.gz")
    assert str(err.value) == ("S1/shifted.nii.gz: mask mismatch: same shape as the image but another grid (corners "
                              f"up to 20.0 voxels apart; origins differ by 40.0 mm): the mask's grid is {image}, "
                              f"the image's {image}")
    # An LPS affine written as if it were RAS: x and y negated, which after reorientation flips the organs.
    lps = save(tmp_path / "lps.nii.gz", to_stored(canonical_labels()), FLIP_XY @ stored_affine())
    with pytest.raises(GeometryError, match=r"^.*lps\.nii\.gz: mask mismatch: same shape as the image but another "
                                            r"grid \(corners up to \d+\.\d voxels apart"):
        check_mask_grid(lps, ct)
    # A per-class folder on a coarse grid (TotalSegmentator --fast, never resampled back): the folder is named.
    coarse_affine = stored_affine(spacing=tuple(2 * s for s in SPACING), shape=(6, 5, 4))
    folder = tmp_path / "S2" / "segmentations"
    folder.mkdir(parents=True)
    for organ_id, name in [(5, "liver"), (1, "spleen")]:
        save(folder / f"{name}.nii.gz", to_stored(canonical_labels() == organ_id)[::2, ::2, ::2], coarse_affine)
    with pytest.raises(GeometryError) as err:
        check_mask_grid(folder, ct, shown="S2/segmentations")
    assert str(err.value) == ("S2/segmentations/: mask mismatch: the mask's grid is (6, 5, 4) voxels of 2 x 2.4 x "
                              f"4 mm, the image's {image}")
    assert err.value.path == "S2/segmentations/"
    with pytest.raises(GeometryError, match=f"^{folder}/: mask mismatch"):  # default: the path as given
        check_mask_grid(folder, ct)
    with pytest.raises(InputError, match="no such file or folder"):
        check_mask_grid(tmp_path / "gone.nii.gz", ct)


def test_load_segmentation_check_grid_refuses_what_it_would_otherwise_resample(tmp_path, ct):
    """The default resamples an overlapping grid of another shape (docs/inputs.md); check_grid=True is the ingest
    rule. A same-shape mask two slices off is refused either way (it was resampled silently before 2026-12-07)."""
    from ctglip_sdk.errors import GeometryError

    shifted = save(tmp_path / "shifted.nii.gz", to_stored(canonical_labels()), stored_affine(origin=(-5, 3, 14)))
    for check in (False, True):
        with pytest.raises(GeometryError, match="shifted.nii.gz: mask mismatch: same shape as the image but anoth"):
            load_segmentation(shifted, like=ct, check_grid=check)
    coarse = save(tmp_path / "coarse.nii.gz", to_stored(canonical_labels())[::2, ::2, ::2],
                  stored_affine(spacing=tuple(2 * s for s in SPACING), shape=(6, 5, 4), origin=(-5, 3, 14)))
    assert load_segmentation(coarse, like=ct).array.any()  # another shape: resampled, as documented
    with pytest.raises(GeometryError, match="mask mismatch"):
        load_segmentation(coarse, like=ct, check_grid=True)
    right = save(tmp_path / "right.nii.gz", to_stored(canonical_labels()), stored_affine())
    assert np.array_equal(load_segmentation(right, like=ct, check_grid=True).array, canonical_labels())
    with pytest.raises(ConfigError, match="check_grid=True .* pass like=volume"):
        load_segmentation(right, check_grid=True)


def test_a_per_class_mask_linked_out_of_its_folder_is_refused(tmp_path):
    """A linked liver mask was read from outside the archive (security review, 2026-12-06)."""
    import nibabel as nib
    import numpy as np

    import ctglip_sdk as cg

    folder = tmp_path / "seg"
    folder.mkdir()
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), folder / "spleen.nii.gz")
    (tmp_path / "elsewhere").mkdir()
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "elsewhere" / "liver.nii.gz")
    (folder / "liver.nii.gz").symlink_to(tmp_path / "elsewhere" / "liver.nii.gz")
    like = cg.Volume(np.zeros((6, 6, 6), np.float32), np.eye(4))
    with pytest.raises(cg.InputError, match="link out of its folder") as err:
        cg.load_segmentation(folder, like=like)
    assert "liver.nii.gz" in str(err.value)


def test_a_per_class_folder_of_totalsegmentator_2_names_loads_as_v2(tmp_path, ct):
    from ctglip_sdk.organs import V1, V2

    v2_only = sorted(set(V2.values()) - set(V1.values()))[0]
    folder = tmp_path / "masks"
    folder.mkdir()
    labels = canonical_labels()
    save(folder / "liver.nii.gz", to_stored(labels == 5), stored_affine())
    save(folder / f"{v2_only}.nii.gz", to_stored(labels == 1), stored_affine())
    seg = load_segmentation(folder, like=ct)  # was: "'<v2 name>' is not a class of the label map"
    assert seg.meta["label_map"] == "totalseg_v2" and set(seg.present()) == {"liver", v2_only}
    assert set(load_segmentation(folder, like=ct, label_map="totalseg_v2").present()) == {"liver", v2_only}
    (folder / f"{v2_only}.nii.gz").unlink()
    assert load_segmentation(folder, like=ct).meta["label_map"] == "totalseg_v1"
