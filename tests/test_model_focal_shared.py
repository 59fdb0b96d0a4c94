"""The one-pass focal stats: the same numbers as each family alone, and the faster helpers equal the plain ones."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

import ctglip_sdk as cg
from ctglip_sdk.io import load_segmentation, load_volume
from ctglip_sdk.model.focal import (FOCAL, _medians, _thickness, descriptor_columns, focal_descriptors,
                                    study_residual)
from ctglip_sdk.model.focal_ext import EXTENDED, _isolated_peak, _shell_offsets, extended_descriptors


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One default-grid (3 x 3 x 5 mm) synthetic study read back from NIfTI, its labels renumbered 1..n."""
    root = tmp_path_factory.mktemp("focal_shared")
    cg.synth.generate_archive(root, 1, seed=11, fmt="nifti", preset="default", progress=False)
    vol = load_volume(next((root / "images").iterdir()))
    seg = load_segmentation(next((root / "masks").iterdir()), like=vol)
    ids = np.unique(seg.array[seg.array > 0])
    lut = np.zeros(int(ids.max()) + 1, np.uint8)
    lut[ids] = np.arange(1, ids.size + 1)
    return lut[seg.array], vol.array.astype(np.float32), int(ids.size), vol.spacing


def test_one_pass_equals_each_family_alone(study):
    lab, hu, n, sp = study
    both = descriptor_columns(lab, hu, n, sp, [FOCAL, EXTENDED])
    alone = np.concatenate([focal_descriptors(lab, hu, n, sp), extended_descriptors(lab, hu, n, sp)], axis=1)
    assert both.shape == alone.shape and np.array_equal(both, alone)
    assert np.count_nonzero(both.any(axis=1)) >= 40  # most organs of a whole-body study have non-zero rows


def test_medians_equal_a_full_sort(study):
    lab, hu, n, _ = study
    at = lab > 0
    lab_v, hu_v = lab[at].astype(np.intp), hu[at].astype(np.float32)
    order = np.lexsort((hu_v, lab_v))  # the reference: sort by (label, HU), take the lower middle
    counts = np.bincount(lab_v, minlength=n + 1)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ref = np.zeros(n + 1, np.float32)
    has = counts > 0
    ref[has] = hu_v[order][start[has] + (counts[has] - 1) // 2]
    assert np.array_equal(_medians(lab_v, hu_v, n), ref)


def test_thickness_per_organ_equals_one_transform_of_the_whole_box(study):
    lab, hu, n, sp = study
    r = study_residual(lab, hu, n, sp)
    dist = ndi.distance_transform_edt(r.interior, sampling=r.sp)
    ref = np.zeros(n + 1, np.float32)
    at = r.lab > 0
    np.maximum.at(ref, r.lab[at].astype(np.intp), dist[at].astype(np.float32))
    got = _thickness(r, n)
    assert np.array_equal(got, ref) and got.max() > 20.0  # the liver's interior is mm deep


def _reference_isolated_peak(organ, resid, sp, shells):
    """Every peak tested one by one, in no particular order (what the batched early stop must equal)."""
    from ctglip_sdk.model.focal import _gauss
    from ctglip_sdk.model.focal_ext import PEAK_HU, PEAK_MM, SHELL_HU

    sm = _gauss(resid, PEAK_MM, sp)
    peaks = np.argwhere(organ & (sm > PEAK_HU) & (sm == ndi.maximum_filter(sm, size=3, mode="constant")))
    shape = np.asarray(organ.shape)
    best = 0.0
    for c in peaks:
        for off in shells:
            q = c + off
            inside = np.all((q >= 0) & (q < shape), axis=1)
            q = q[inside]
            if inside.sum() >= 0.5 * len(off) and not (sm[q[:, 0], q[:, 1], q[:, 2]] > SHELL_HU).any():
                best = max(best, float(sm[tuple(c)]))
                break
    return best, len(peaks)


def test_brightest_isolated_peak_equals_testing_every_peak():
    """110 brighter peaks on vessel-like lines (not isolated) come first; the dimmer isolated ball is the
    answer, found past the first batch, as testing every peak finds it."""
    rng = np.random.default_rng(5)
    sp = np.array([3.0, 3.0, 5.0])
    organ = np.ones((60, 60, 30), bool)
    resid = rng.normal(0, 5, organ.shape).astype(np.float32)
    for k in range(8):
        resid[5 + 6 * k, 3:57, 8] = 2500.0 + rng.normal(0, 200, 54)
    shells = _shell_offsets(sp)
    assert _isolated_peak(organ, resid, sp, shells) == 0.0 == _reference_isolated_peak(organ, resid, sp, shells)[0]
    g = np.meshgrid(*[np.arange(s) for s in organ.shape], indexing="ij")
    resid[(g[0] - 30) ** 2 + (g[1] - 30) ** 2 + ((g[2] - 22) * 5 / 3) ** 2 <= 4] = 600.0
    ref, n_peaks = _reference_isolated_peak(organ, resid, sp, shells)
    assert n_peaks > 100 and ref > 500.0
    assert _isolated_peak(organ, resid, sp, shells) == ref
