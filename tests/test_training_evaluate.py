"""`evaluate`: F1 at the model's own calibrated threshold beside F1 at the val split's threshold."""

from __future__ import annotations

import math

import pytest

import ctglip_sdk as cg
from ctglip_sdk.training import calibrate
from ctglip_sdk.training.evaluation import evaluate, markdown_table
from test_model_encode import TINY


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalarch")
    cg.synth.generate_archive(root, n_patients=6, seed=31, preset="small", fmt="nifti", progress=False,
                              overwrite=True)
    return root


def test_f1_at_the_model_threshold_is_the_calibrated_decision(archive):
    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    report = calibrate(model, archive, "all", labels="truth", min_positives=1)
    assert report["offsets"]
    # Calibrated and scored on the same studies: the model's 0.5 is each finding's F1-best threshold there,
    # so F1 at 0.5 is the best F1 calibrate found (its report rounds to 4 decimals), and no threshold chosen
    # on that split does better.
    m = evaluate(model, archive, split="all", val_split="all", val_archive=archive)
    for key in report["offsets"]:
        entry = m["per_finding"][key]
        assert entry["f1_at_model_threshold"] == pytest.approx(report["per_finding"][key]["f1"], abs=6e-5)
        assert entry["f1_at_model_threshold"] <= entry["f1"] + 1e-9
    scored = [v["f1_at_model_threshold"] for v in m["per_finding"].values() if v["f1_at_model_threshold"] is not None]
    assert m["f1_mean_model_thresholds"] == pytest.approx(sum(scored) / len(scored))
    assert all(v["f1_at_model_threshold"] is None for v in m["per_finding"].values() if not v["n_pos"])
    assert "F1 at 0.5 (model's threshold)" in markdown_table(m) and math.isfinite(m["f1_mean_model_thresholds"])
