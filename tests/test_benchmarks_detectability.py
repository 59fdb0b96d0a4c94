"""benchmarks/detectability.py: location-known and scan observers on NIfTI studies with planted cysts."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from bench_loader import load_benchmark

AFFINE = np.diag([3.0, 3.0, 5.0, 1.0])


@pytest.fixture(scope="module")
def detectability():
    yield from load_benchmark("detectability")


def _archive(root, n: int = 8, seed: int = 0):
    """n studies of a 'pancreas' block (label 10, ~45 HU); every other one holds a 15 mm water cyst."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows, truth = [], []
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in (40, 40, 16)), indexing="ij"), -1) * [3.0, 3.0, 5.0]
    for i in range(n):
        hu = rng.normal(-100, 5, (40, 40, 16)).astype(np.float32)  # fat around the organ
        lab = np.zeros(hu.shape, np.uint8)
        lab[8:32, 8:32, 3:13] = 10
        hu[lab == 10] = rng.normal(45, 6, int((lab == 10).sum()))
        findings = []
        if i % 2:
            centre = np.array([20 * 3.0 + rng.uniform(-9, 9), 20 * 3.0 + rng.uniform(-9, 9), 8 * 5.0])
            hu[np.linalg.norm(grid - centre, axis=-1) <= 7.5] = rng.normal(8, 6)
            findings.append({"organ": "pancreas", "finding": "pancreatic_cyst", "size_mm": 15.0,
                             "center_ras_mm": centre.tolist()})
        nib.save(nib.Nifti1Image(hu, AFFINE), root / "images" / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, AFFINE), root / "masks" / f"case{i}.nii.gz")
        rows.append({"patient_id": f"P{i}", "study_uid": f"1.{i}", "image": f"images/case{i}.nii.gz",
                     "mask": f"masks/case{i}.nii.gz", "contrast": "none" if i % 4 < 2 else "portal_venous"})
        truth.append({"study_uid": f"1.{i}", "findings": findings})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (root / "truth.jsonl").write_text("".join(json.dumps(t) + "\n" for t in truth))


def test_planted_cysts_are_found_by_both_observers(detectability, tmp_path):
    _archive(tmp_path / "a")
    res = detectability.run(tmp_path / "a", "pancreatic_cyst", ["pancreas"], "dark", [2.5, 6.0], -30.0,
                            spots=5, seed=0, limit=None)
    assert (res["positives"], res["negatives"], res["lesions_with_centre"]) == (4, 4, 4)
    assert res["location_known"]["all"] == 1.0
    assert res["scan"]["6.0"]["all"] == 1.0                # a 15 mm, 37 HU-deep cyst outranks noise
    assert res["location_known"]["size:10-20"] == 1.0
    assert res["location_known"]["size:0-6"] is None       # no lesion of that size: no AUC, not 0.5


def test_bright_polarity_reverses_the_ranking(detectability, tmp_path):
    _archive(tmp_path / "a", seed=1)
    res = detectability.run(tmp_path / "a", "pancreatic_cyst", ["pancreas"], "bright", [6.0], -30.0,
                            spots=5, seed=0, limit=None)
    assert res["location_known"]["all"] == 0.0  # a dark cyst is the least bright spot


def test_auc_counts_ties_half_and_ball_keeps_its_centre(detectability):
    assert detectability.auc([1.0, 1.0], [1.0, 1.0]) == 0.5
    assert detectability.auc([2.0], [1.0, 3.0]) == 0.5
    assert detectability.auc([], [1.0]) is None
    k = detectability.ball(1.0, np.array([3.0, 3.0, 5.0]))   # smaller than a voxel
    assert k.sum() == 1 and k[1, 1, 1] == 1
    assert detectability.ball(6.0, np.array([3.0, 3.0, 5.0])).shape == (5, 5, 5)  # ceil(6 / 3), ceil(6 / 5) voxels each side
