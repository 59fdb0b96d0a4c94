"""Organ descriptors: deviation volumes, HU percentiles and organ volume, computed and fed to the projection."""

from __future__ import annotations

import numpy as np
import pytest

import ctglip_sdk as cg
from ctglip_sdk.model.preprocess import DEVIATION_EDGES, N_DESCRIPTORS, PERCENTILES, organ_descriptors
from ctglip_sdk.volume import Volume
from test_model_encode import IDS, TINY, make_phantom


def _organ(cyst: bool, stone: bool, size: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    lab = np.zeros((size + 4,) * 3, np.uint8)
    lab[2:-2, 2:-2, 2:-2] = 1
    hu = rng.normal(60.0, 5.0, lab.shape).astype(np.float32)   # liver-like parenchyma with noise
    if cyst:
        hu[6:10, 6:10, 6:10] = 5.0                             # 64 voxels of water inside
    if stone:
        hu[14, 14, 14] = 700.0                                 # one calcified voxel
    return lab, hu


def test_deviation_volumes_are_absolute_and_centred_on_the_organ_median():
    voxel_ml = 0.027  # 3 mm voxels
    plain = organ_descriptors(*_organ(False, False), 1, voxel_ml)[0]
    lesion = organ_descriptors(*_organ(True, True), 1, voxel_ml)[0]
    assert plain.shape == lesion.shape == (N_DESCRIPTORS,)
    dev_bands = len(DEVIATION_EDGES)
    # The cyst (-55 HU from the median) lands in the -80..-40 band: 64 voxels = 1.728 ml -> log10(1 + 17.28).
    band = list(DEVIATION_EDGES).index(-80.0) + 1  # bins: <-150, -150..-80, -80..-40, ...
    np.testing.assert_allclose(lesion[band], np.log10(1 + 64 * voxel_ml / 0.1), rtol=1e-5)
    assert plain[band] == 0.0
    # The stone: +640 HU, the top band; one voxel.
    np.testing.assert_allclose(lesion[dev_bands - 1], np.log10(1 + voxel_ml / 0.1), rtol=1e-5)
    # Percentiles: the median stays at the parenchyma (5 HU bins), the 0.1 % tail sees the cyst.
    pct = lesion[dev_bands:dev_bands + len(PERCENTILES)] * 500.0
    assert abs(pct[PERCENTILES.index(50.0)] - 60.0) <= 5.0 and pct[0] < 15.0
    # Volume: the whole organ (20^3 voxels), whatever is inside it.
    np.testing.assert_allclose(lesion[-1], np.log10(20 ** 3 * voxel_ml + 1e-3) / 2.0, rtol=1e-5)
    assert plain[-1] == lesion[-1]


def test_a_diffusely_darker_organ_moves_the_median_not_the_deviation_volumes():
    lab, hu = _organ(False, False)
    base = organ_descriptors(lab, hu, 1, 0.027)[0]
    dark = organ_descriptors(lab, hu - 40.0, 1, 0.027)[0]  # steatosis-like: every voxel 40 HU lower
    dev_bands = len(DEVIATION_EDGES)
    np.testing.assert_allclose(dark[:dev_bands], base[:dev_bands], atol=0.35)  # noise moves a few voxels
    med = PERCENTILES.index(50.0) + dev_bands
    assert (base[med] - dark[med]) * 500.0 == pytest.approx(40.0, abs=5.0)


def test_model_with_descriptors_sizes_its_projection_and_sees_a_lesion():
    vol, seg = make_phantom()
    edges = [-500.0, 0.0, 100.0]
    m = cg.create("ctglip-tiny", overrides={**TINY, "preprocess": {"spacing": [4.0, 4.0, 4.0], "hu_histogram": edges,
                                                                   "organ_descriptors": True,
                                                                   "focal_descriptors": False,
                                                                   "focal_extended": False}}, seed=2)
    assert m.config.preprocess.n_stats == len(edges) + 1 + N_DESCRIPTORS
    assert m.vision_proj.in_features == m.vision.out_channels + m.config.preprocess.n_stats
    prep = m.prepare(vol, seg)
    assert tuple(prep.stats.shape) == (len(prep.names), m.config.preprocess.n_stats)
    emb = m.encode_organs(vol, seg)
    hot = Volume(vol.array.copy(), vol.affine)
    liver = np.argwhere(seg.array == IDS["liver"])
    cx, cy, cz = liver[len(liver) // 2]
    hot.array[cx - 1:cx + 2, cy - 1:cy + 2, cz:cz + 1] = 5.0  # a small water-density focus in the liver
    other = m.encode_organs(hot, seg)
    i = emb.names.index("liver")
    assert float(emb.vectors[i] @ other.vectors[i]) < 0.99999
    changed = (m.prepare(hot, seg).stats != prep.stats).any(1).numpy()
    assert changed[i] and changed.sum() == 1  # only the liver's own stats see the focus


def test_edge_voxels_count_unless_they_touch_bone_or_air_of_another_label():
    lab, hu = _organ(False, False)
    hu[lab == 0] = -100.0                         # fat around the organ
    top = len(DEVIATION_EDGES) - 1                # the +150 HU band
    rib = hu.copy()
    rib[1, 8:12, 8:12] = 900.0                    # bone just outside the face x = 2: partial volume at the edge
    rib[2, 8:12, 8:12] = 400.0
    assert organ_descriptors(lab, rib, 1, 0.027)[0][top] == 0.0  # not a calcification
    stone = hu.copy()
    stone[2, 14, 14] = 900.0                      # a stone on the organ's edge, next to fat
    np.testing.assert_allclose(organ_descriptors(lab, stone, 1, 0.027)[0][top], np.log10(1 + 0.027 / 0.1),
                               rtol=1e-5)


def _neighbours_3d(lab, hu):
    """Reference for the two edge rules, written plainly on the 3-D arrays (six shifted comparisons)."""
    interior, clear = lab > 0, lab > 0
    for ax in range(3):
        for shift in (1, -1):
            nlab = np.full(lab.shape, -1, np.int64)  # outside the array: another label, neither bone nor air
            nhu = np.zeros(lab.shape, np.float32)
            src, dst = [slice(None)] * 3, [slice(None)] * 3
            src[ax], dst[ax] = (slice(shift, None), slice(None, -shift)) if shift > 0 else \
                (slice(None, shift), slice(-shift, None))
            nlab[tuple(dst)], nhu[tuple(dst)] = lab[tuple(src)], hu[tuple(src)]
            interior &= nlab == lab
            clear &= ~((nlab != lab) & ((nhu > 300) | (nhu < -500)))
    return interior, clear


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flat_neighbour_rules_match_the_3d_reference(seed):
    from ctglip_sdk.model.preprocess import _OrganVoxels

    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 4, (11, 9, 7)).astype(np.uint8)
    lab[2:9, 2:7, 1:6] = 2                                    # a block with a real interior, touching borders
    lab[0, :, :] = 3
    hu = rng.normal(0, 500, lab.shape).astype(np.float32)
    v = _OrganVoxels(lab, hu)
    interior, clear = _neighbours_3d(lab, hu)
    flat = np.flatnonzero(lab)
    np.testing.assert_array_equal(v.idx, flat)
    np.testing.assert_array_equal(v.interior, interior.reshape(-1)[flat])
    np.testing.assert_array_equal(v.clear, clear.reshape(-1)[flat])
    assert v.interior.any() and not v.interior.all() and not v.clear.all()


def _stats_cfg():
    from ctglip_sdk.model.config import PreprocessConfig
    return PreprocessConfig(hu_histogram=[-50.0, 0.0, 30.0, 100.0], organ_descriptors=True, focal_descriptors=True)


def test_fine_grids_are_block_averaged_before_every_stat_and_coarse_ones_are_untouched():
    """0.8 mm voxels are averaged 3 x 3 x 3: the stats equal those of the averaged image given at 2.4 mm."""
    from ctglip_sdk.model.preprocess import organ_stats
    rng = np.random.default_rng(3)
    fine_lab = np.zeros((60, 60, 60), np.uint8)
    fine_lab[6:54, 6:54, 6:54] = 1
    fine_lab[21:39, 21:39, 21:39] = 2                      # a second organ inside the box
    fine_hu = rng.normal(60.0, 15.0, fine_lab.shape).astype(np.float32)
    fine_hu[fine_lab == 2] += 40.0
    fine_hu[12:18, 12:18, 12:18] = 0.0                    # a 4.8 mm cyst in organ 1
    coarse_hu = fine_hu.reshape(20, 3, 20, 3, 20, 3).mean(axis=(1, 3, 5), dtype=np.float32)
    coarse_lab = fine_lab[1::3, 1::3, 1::3]
    cfg = _stats_cfg()
    fine = organ_stats(fine_lab, fine_hu, 2, cfg, 0.8 ** 3 / 1000, (0.8, 0.8, 0.8))
    coarse = organ_stats(coarse_lab, coarse_hu, 2, cfg, 2.4 ** 3 / 1000, (2.4, 2.4, 2.4))
    np.testing.assert_allclose(fine, coarse, rtol=1e-4, atol=1e-3)  # 0.8 * 3 != 2.4 exactly in floats
    # A Fortran-ordered copy (as some loaders give) reads the same.
    fort = organ_stats(np.asfortranarray(fine_lab), np.asfortranarray(fine_hu), 2, cfg, 0.8 ** 3 / 1000,
                       (0.8, 0.8, 0.8))
    np.testing.assert_allclose(fort, fine, rtol=1e-5, atol=1e-5)


def test_an_organ_thinner_than_a_block_keeps_its_stats_on_the_full_grid():
    """Labels are block centres: a one-voxel-thin organ could vanish, so then nothing is block-averaged."""
    from ctglip_sdk.model.preprocess import organ_stats
    rng = np.random.default_rng(4)
    lab = np.zeros((30, 30, 30), np.uint8)
    lab[3:27, 3:27, 3:27] = 1
    lab[3:27, 3:27, 26] = 2                               # a plate one voxel thick, off the block centres
    hu = rng.normal(60.0, 10.0, lab.shape).astype(np.float32)
    hu[lab == 2] = 200.0
    cfg = _stats_cfg()
    got = organ_stats(lab, hu, 2, cfg, 0.001, (1.0, 1.0, 1.0))
    ref = organ_stats(lab, hu, 2, cfg, 0.001, (2.5, 2.5, 2.5))   # coarse spacing: never averaged
    assert np.abs(got[1]).sum() > 0                       # the plate has stats, not an empty row
    np.testing.assert_allclose(got[:, :5], ref[:, :5], rtol=1e-6)  # histogram: same voxels, same fractions
