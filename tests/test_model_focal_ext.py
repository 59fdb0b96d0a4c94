"""Extended focal descriptors: large nodules, the largest dense ball, isolated peaks vs vessel junctions."""

from __future__ import annotations

import numpy as np

import ctglip_sdk as cg
from ctglip_sdk.model.config import PreprocessConfig
from ctglip_sdk.model.focal_ext import EXTENDED_NAMES, N_EXTENDED, extended_descriptors

COL = {name: i for i, name in enumerate(EXTENDED_NAMES)}
SP = (3.0, 3.0, 5.0)  # the default synthetic grid


def _lung(seed=0, size_mm=(150.0, 150.0, 200.0)):
    """A lobe-like ellipsoid (label 1) of -850 HU parenchyma in soft tissue (40 HU, unlabelled), with noise."""
    shape = tuple(int(round(s / sp)) for s, sp in zip(size_mm, SP))
    grid = np.meshgrid(*[(np.arange(n) + 0.5) * sp for n, sp in zip(shape, SP)], indexing="ij")
    centre = [s / 2 for s in size_mm]
    r = np.sqrt(sum(((g - c) / rad) ** 2 for g, c, rad in zip(grid, centre, (65.0, 65.0, 90.0))))
    lab = (r <= 1.0).astype(np.uint8)
    hu = np.where(lab > 0, -850.0, 40.0) + np.random.default_rng(seed).normal(0, 15, shape)
    return lab, hu.astype(np.float32), grid, np.asarray(centre)


def _ball(grid, centre, diameter):
    return np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre))) <= diameter / 2


def _tube(grid, a, b, radius):
    """Voxels within ``radius`` of the segment a-b."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    p = np.stack(grid, -1)
    t = np.clip(((p - a) @ (b - a)) / float((b - a) @ (b - a)), 0, 1)
    return np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1) <= radius


def _junction(hu, grid, at, radius=2.5, length=40.0):
    """Three vessels (40 HU) meeting at ``at``: a blob to a Hessian filter, but not isolated."""
    out = hu.copy()
    for d in ([1, 0, 0.3], [-0.5, 0.8, 0.2], [-0.5, -0.8, -0.4]):
        d = np.asarray(d) / np.linalg.norm(d)
        out[_tube(grid, at, at + length * d, radius)] = 40.0
    return out


def _raw(d, name):  # back from the scaling to the response itself
    if name == "dense_radius":
        return 10 ** d[COL[name]] - 1
    return 10 ** d[COL[name]] * 10 - 10


def test_a_large_nodule_is_a_large_blob_and_a_large_dense_ball_a_vessel_junction_is_not():
    lab, hu, grid, c = _lung()
    junction = _junction(hu, grid, c)
    nodule = junction.copy()
    nodule[_ball(grid, c + [30, 0, 0], 24.0) & (lab > 0)] = 40.0
    d_j = extended_descriptors(lab, junction, 1, SP)[0]
    d_n = extended_descriptors(lab, nodule, 1, SP)[0]
    # A 24 mm ball holds a ~10 mm ball of dense voxels; 2.5 mm vessels (even where three meet) hold ~4 mm.
    assert _raw(d_n, "dense_radius") >= 9.0
    assert _raw(d_j, "dense_radius") <= 5.5
    assert _raw(d_n, "bright_blob_large") > 1.5 * _raw(d_j, "bright_blob_large")
    assert d_n[COL["bright_dot_large"]] > d_j[COL["bright_dot_large"]]


def test_a_small_nodule_in_empty_parenchyma_is_isolated_a_brighter_vessel_junction_is_not():
    lab, hu, grid, c = _lung(seed=1)
    junction = _junction(hu, grid, c)
    d_j = extended_descriptors(lab, junction, 1, SP)[0]
    assert d_j[COL["isolated_bright"]] == 0.0  # its branches cross every shell
    nodule = junction.copy()
    nodule[_ball(grid, c + [0, 0, -45], 8.0)] = 40.0  # 8 mm, 45 mm below the junction
    d_n = extended_descriptors(lab, nodule, 1, SP)[0]
    assert _raw(d_n, "isolated_bright") > 150.0
    # The same nodule touching a vessel is no longer isolated: the test is about empty surroundings.
    touching = _junction(hu, grid, c)
    touching[_ball(grid, c + [12, 0, 3.6], 8.0)] = 40.0
    assert extended_descriptors(lab, touching, 1, SP)[0][COL["isolated_bright"]] == 0.0
    # Noise alone (15 HU) never makes a peak: a plain lobe reads 0.
    assert extended_descriptors(lab, hu, 1, SP)[0][COL["isolated_bright"]] == 0.0


def test_each_organ_is_described_alone_and_an_empty_label_reads_zero():
    lab, hu, grid, c = _lung(seed=2)
    two = lab.copy()
    two[(lab > 0) & (grid[0] > c[0])] = 3  # split the lobe in two labels; label 2 absent
    hu2 = hu.copy()
    hu2[two == 3] += 300.0  # another median, so a leak of one organ's residual into the other would show
    # A 20 mm nodule in organ 3 against the split, and a 10 mm water ball in organ 3 too.
    hu2[_ball(grid, c + [12, 0, 0], 20.0) & (two == 3)] = 40.0
    hu2[_ball(grid, c + [8, 30, 0], 10.0) & (two == 3)] = 5.0
    d = extended_descriptors(two, hu2, 3, SP)
    assert d.shape == (3, N_EXTENDED) and d.dtype == np.float32
    assert np.all(d[1] == 0.0)
    alone = extended_descriptors(np.where(two == 1, 1, 0).astype(np.uint8), hu2, 1, SP)[0]
    np.testing.assert_allclose(d[0], alone, atol=1e-6)  # the lesions next door do not move organ 1
    assert _raw(d[2], "dense_radius") > _raw(d[0], "dense_radius") + 3.0


def test_the_config_flag_adds_the_columns_and_leaves_older_configs_hash_unchanged():
    base = PreprocessConfig(focal_descriptors=True)
    ext = base.replace(focal_extended=True)
    assert ext.n_stats == base.n_stats + N_EXTENDED
    assert "focal_extended" not in base.to_dict() and ext.to_dict()["focal_extended"] is True
    assert PreprocessConfig.from_dict(ext.to_dict()) == ext
    # Every saved model's full config reads back to exactly its JSON, whether or not it names the flag: a model
    # saved before the flag existed keeps its config_hash, which an index stores.
    import json
    from pathlib import Path

    from ctglip_sdk.model.config import CTGlipConfig

    root = Path(cg.__file__).parent / "model"
    saved = [json.loads(p.read_text())["config"] for p in sorted((root / "weights").glob("*/config.json"))]
    assert saved
    old = {k: v for k, v in saved[0]["preprocess"].items() if k != "focal_extended"}
    assert "focal_extended" not in PreprocessConfig.from_dict(old).to_dict()
    for d in saved:
        assert CTGlipConfig.from_dict(d).to_dict() == d


def test_a_cyst_at_the_rim_of_a_thin_organ_is_a_water_ball_fat_partial_volume_is_not():
    """A pancreas-like slab (24 mm thick, 45 HU unenhanced) in fat, edges blurred by partial volume."""
    from scipy import ndimage as ndi

    size_mm = (120.0, 60.0, 100.0)
    shape = tuple(int(round(s / sp)) for s, sp in zip(size_mm, SP))
    grid = np.meshgrid(*[(np.arange(n) + 0.5) * sp for n, sp in zip(shape, SP)], indexing="ij")
    c = np.asarray(size_mm) / 2
    slab = (np.abs(grid[1] - c[1]) <= 12.0) & (np.abs(grid[0] - c[0]) <= 50.0) & (np.abs(grid[2] - c[2]) <= 40.0)
    truth = np.where(slab, 45.0, -100.0)
    # Partial volume: the image is the truth blurred by about a voxel, the label is the truth's voxels.
    plain = ndi.gaussian_filter(truth, 1.2 / np.asarray(SP)) + np.random.default_rng(3).normal(0, 10, shape)
    cyst_truth = truth.copy()
    ball = _ball(grid, c + [0, 10, 0], 16.0)          # centred 2 mm inside the slab's edge: it bulges out
    cyst_truth[ball] = 8.0
    cyst = ndi.gaussian_filter(cyst_truth, 1.2 / np.asarray(SP)) + np.random.default_rng(3).normal(0, 10, shape)
    lab = (slab | ball).astype(np.uint8)               # the cyst carries the organ's label, as a mask would
    d_plain = extended_descriptors(slab.astype(np.uint8), plain.astype(np.float32), 1, SP)[0]
    d_cyst = extended_descriptors(lab, cyst.astype(np.float32), 1, SP)[0]
    assert _raw(d_plain, "dense_radius") == 0.0
    assert 10 ** d_plain[COL["water_radius"]] - 1 <= 3.0 + 1e-4  # a thin layer: one voxel to its edge
    assert 10 ** d_cyst[COL["water_radius"]] - 1 >= 5.0    # a 16 mm cyst holds a ~6 mm ball
