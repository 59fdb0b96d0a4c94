"""Focal descriptors: blob filters find blobs (not tubes or edges), thickness, grid invariance, closed-form eigenvalues."""

from __future__ import annotations

import numpy as np
import pytest

from ctglip_sdk.model.config import PreprocessConfig
from ctglip_sdk.model.focal import FOCAL_NAMES, N_FOCAL, _sym3_eigvals, focal_descriptors

COL = {name: i for i, name in enumerate(FOCAL_NAMES)}


def _organ(spacing=(2.0, 2.0, 2.0), size_mm=(120.0, 120.0, 100.0), seed=0):
    """A 100 mm ellipsoidal organ (label 1) at 60 HU in fat (-100 HU, unlabelled), with mild noise."""
    shape = tuple(int(round(s / sp)) for s, sp in zip(size_mm, spacing))
    grid = np.meshgrid(*[(np.arange(n) + 0.5) * sp for n, sp in zip(shape, spacing)], indexing="ij")
    centre = [s / 2 for s in size_mm]
    r = np.sqrt(sum(((g - c) / rad) ** 2 for g, c, rad in zip(grid, centre, (50.0, 50.0, 40.0))))
    lab = (r <= 1.0).astype(np.uint8)
    hu = np.where(lab > 0, 60.0, -100.0) + np.random.default_rng(seed).normal(0, 8, shape)
    return lab, hu.astype(np.float32), grid, centre


def _sphere(grid, centre, diameter):
    return np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre))) <= diameter / 2


def test_a_cyst_raises_dark_blob_and_a_calcification_raises_bright_blob():
    lab, hu, grid, c = _organ()
    plain = focal_descriptors(lab, hu, 1, (2.0, 2.0, 2.0))[0]
    cyst = hu.copy()
    cyst[_sphere(grid, [c[0] + 15, c[1], c[2]], 12.0)] = 5.0
    calc = hu.copy()
    calc[_sphere(grid, [c[0] - 15, c[1], c[2]], 5.0)] = 600.0
    with_cyst = focal_descriptors(lab, cyst, 1, (2.0, 2.0, 2.0))[0]
    with_calc = focal_descriptors(lab, calc, 1, (2.0, 2.0, 2.0))[0]
    assert with_cyst[COL["dark_blob"]] > plain[COL["dark_blob"]] + 0.25  # ~14 HU against ~1 HU of noise
    assert with_cyst[COL["smooth_min"]] < plain[COL["smooth_min"]] - 0.3
    assert with_cyst[COL["low_volume"]] > plain[COL["low_volume"]] + 0.3
    assert abs(with_cyst[COL["bright_blob"]] - plain[COL["bright_blob"]]) < 0.3
    assert with_calc[COL["bright_blob"]] > plain[COL["bright_blob"]] + 0.5
    assert with_calc[COL["bright_blob_edge"]] > plain[COL["bright_blob_edge"]] + 0.5


def test_a_vessel_of_the_same_contrast_and_calibre_answers_less_than_a_nodule():
    """Blobness is the smallest-magnitude Hessian eigenvalue: a tube has one ~0 eigenvalue along its axis."""
    lab, hu, grid, c = _organ()
    nodule, vessel = hu.copy(), hu.copy()
    nodule[_sphere(grid, c, 8.0)] = 260.0
    tube = np.sqrt((grid[0] - c[0]) ** 2 + (grid[1] - c[1]) ** 2) <= 4.0
    vessel[tube & (lab > 0)] = 260.0
    d_nodule = focal_descriptors(lab, nodule, 1, (2.0, 2.0, 2.0))[0]
    d_vessel = focal_descriptors(lab, vessel, 1, (2.0, 2.0, 2.0))[0]

    def hu(d, name):  # back from the signed log to the filter's response in HU
        return 10 ** d[COL[name]] * 10 - 10

    # The tube's ends (cut by the organ's surface) are blob-like, so it is not zero; the dot filter is stricter.
    assert hu(d_nodule, "bright_blob") > 1.3 * hu(d_vessel, "bright_blob")
    assert hu(d_nodule, "bright_dot") > 1.5 * hu(d_vessel, "bright_dot")


def test_edges_and_partial_volume_with_fat_are_not_lesions():
    """Interior voxels only: blurring the organ's edge into the fat around it leaves dark_blob where it was."""
    lab, hu, _, _ = _organ()
    from scipy import ndimage as ndi

    blurred = ndi.gaussian_filter(hu, 1.0).astype(np.float32)  # the rim now mixes organ and fat
    sharp = focal_descriptors(lab, hu, 1, (2.0, 2.0, 2.0))[0]
    soft = focal_descriptors(lab, blurred, 1, (2.0, 2.0, 2.0))[0]
    assert soft[COL["dark_blob"]] <= sharp[COL["dark_blob"]] + 0.2


def test_thickness_and_section_measure_the_organ():
    lab, hu, _, _ = _organ()
    d = focal_descriptors(lab, hu, 1, (2.0, 2.0, 2.0))[0]
    thickness = 10 ** d[COL["thickness"]] - 1
    section = 10 ** (2 * d[COL["max_section"]]) - 1
    assert 30 <= thickness <= 42  # the inscribed radius (40 mm) less the one-voxel rim
    assert section == pytest.approx(np.pi * 50 * 50, rel=0.08)


def test_a_fine_grid_gives_about_the_same_descriptors_as_a_coarse_one():
    """Grids finer than 2.5 mm are block-averaged, so 0.8 mm and 2.4 mm images of one object agree."""
    out = []
    for sp in (0.8, 2.4):
        lab, hu, grid, c = _organ(spacing=(sp, sp, sp), size_mm=(120.0, 120.0, 100.0))
        hu[_sphere(grid, [c[0] + 15, c[1], c[2]], 14.0)] = 5.0
        out.append(focal_descriptors(lab, hu, 1, (sp, sp, sp))[0])
    for name in ("dark_blob", "smooth_min", "low_volume", "thickness", "max_section"):
        assert out[0][COL[name]] == pytest.approx(out[1][COL[name]], abs=0.25), name


def test_absent_organs_get_zero_rows_and_the_width_is_in_n_stats():
    lab, hu, _, _ = _organ()
    d = focal_descriptors(lab, hu, 3, (2.0, 2.0, 2.0))
    assert d.shape == (3, N_FOCAL) and d.dtype == np.float32
    assert np.all(d[1:] == 0)
    base = PreprocessConfig(organ_descriptors=True)
    assert PreprocessConfig(organ_descriptors=True, focal_descriptors=True).n_stats == base.n_stats + N_FOCAL


def test_closed_form_eigenvalues_match_lapack():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5000, 3, 3))
    a = a + a.transpose(0, 2, 1)
    a[:3] = np.eye(3) * 2.0  # repeated eigenvalues (p = 0)
    a[3] = np.diag([1.0, 1.0, -2.0])
    got = _sym3_eigvals(a[:, 0, 0], a[:, 1, 1], a[:, 2, 2], a[:, 0, 1], a[:, 0, 2], a[:, 1, 2])
    np.testing.assert_allclose(got, np.linalg.eigvalsh(a), atol=1e-5)


def test_a_model_with_focal_descriptors_feeds_them_to_its_projection():
    """The registered ctglip-tiny turns them on (and the extended ones): prepare() appends their columns and a focus
    moves the liver's."""
    import ctglip_sdk as cg
    from ctglip_sdk.volume import Volume
    from test_model_encode import IDS, TINY, make_phantom

    vol, seg = make_phantom()
    m = cg.create("ctglip-tiny", overrides={**TINY, "preprocess": {"spacing": [4.0, 4.0, 4.0], "hu_histogram": [],
                                                                   "organ_descriptors": True}}, seed=2)
    assert m.config.preprocess.focal_descriptors and m.config.preprocess.focal_extended
    from ctglip_sdk.model.focal_ext import N_EXTENDED
    from ctglip_sdk.model.preprocess import N_DESCRIPTORS

    assert m.config.preprocess.n_stats == N_DESCRIPTORS + N_FOCAL + N_EXTENDED
    assert m.vision_proj.in_features == m.vision.out_channels + m.config.preprocess.n_stats
    prep = m.prepare(vol, seg)
    hot = Volume(vol.array.copy(), vol.affine)
    liver = np.argwhere(seg.array == IDS["liver"])
    cx, cy, cz = liver[len(liver) // 2]
    hot.array[cx - 2:cx + 3, cy - 2:cy + 3, cz - 1:cz + 2] = 5.0  # a water-density focus in the liver
    moved = (m.prepare(hot, seg).stats - prep.stats)[:, N_DESCRIPTORS:].abs().sum(1).numpy()
    i = prep.names.index("liver")
    assert moved[i] > 0 and moved[i] == moved.max()  # neighbours within the filter's reach may move, less
