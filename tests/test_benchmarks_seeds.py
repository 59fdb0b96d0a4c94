"""benchmarks/seeds_table.py: per-size AUCs pooled over seeds, weighted by each seed's positives."""

from __future__ import annotations

import pytest

from bench_loader import load_benchmark


@pytest.fixture(scope="module")
def seeds_table():
    yield from load_benchmark("seeds_table")


def _metrics(auc_mean, bins):
    return {"organ_top1": 1.0, "auc_mean": auc_mean, "auc_min": 0.7, "f1_mean": 0.8, "f1_mean_model_thresholds": 0.8,
            "retrieval": {"map": 0.5},
            "per_finding": {"lung_nodule": {"auc": 0.75, "auc_by_size": bins},
                            "emphysema": {"auc": 1.0}}}


def test_pool_auc_by_size_weights_each_seed_by_its_positives(seeds_table):
    per_seed = {1: _metrics(0.95, {"<6 mm": {"auc": 0.6, "n_pos": 10}, ">=20 mm": {"auc": 1.0, "n_pos": 1}}),
                2: _metrics(0.96, {"<6 mm": {"auc": 0.8, "n_pos": 30}})}
    pooled = seeds_table.pool_auc_by_size(per_seed)
    assert set(pooled) == {"lung_nodule"}  # diffuse findings have no size bins
    assert pooled["lung_nodule"]["<6 mm"] == {"auc": pytest.approx((0.6 * 10 + 0.8 * 30) / 40), "n_pos": 40}
    assert pooled["lung_nodule"][">=20 mm"] == {"auc": 1.0, "n_pos": 1}
    summary = seeds_table.summarize(per_seed)
    assert summary["auc_by_size"] == pooled
    assert summary["bars_met_on_every_seed"]["auc_mean"] and not summary["bars_met_on_every_seed"]["auc_min"]


def test_pool_auc_bins_pools_the_contrast_phase_breakdown_the_same_way(seeds_table):
    per_seed = {1: _metrics(0.95, {}), 2: _metrics(0.96, {})}
    per_seed[1]["per_finding"]["lung_nodule"]["auc_by_contrast"] = {"none": {"auc": 0.5, "n_pos": 4, "n_neg": 9},
                                                                   "portal_venous": {"auc": None, "n_pos": 0,
                                                                                     "n_neg": 12}}
    per_seed[2]["per_finding"]["lung_nodule"]["auc_by_contrast"] = {"none": {"auc": 0.9, "n_pos": 6, "n_neg": 8}}
    pooled = seeds_table.summarize(per_seed)["auc_by_contrast"]
    # A phase with no AUC on a seed (no positives there) adds nothing; the rest is weighted by positives.
    assert pooled == {"lung_nodule": {"none": {"auc": pytest.approx((0.5 * 4 + 0.9 * 6) / 10), "n_pos": 10}}}


def test_in_process_encodes_the_calibration_archive_once_for_all_seeds(seeds_table, tmp_path, monkeypatch):
    import ctglip_sdk as cg
    import ctglip_sdk.training.evaluation as ev
    from test_model_encode import TINY

    calib = tmp_path / "calib"
    cg.synth.generate_archive(calib, n_patients=3, seed=5, preset="small", fmt="nifti", progress=False)
    model_dir = tmp_path / "model"
    cg.create("ctglip-tiny", overrides=TINY, seed=0).save_pretrained(model_dir)
    encoded = []
    real = ev.encode_split
    monkeypatch.setattr(ev, "encode_split", lambda m, recs, progress=False, workers=0: encoded.append(len(recs)) or
                        real(m, recs, progress, workers))
    out = seeds_table.main(["--model", str(model_dir), "--seeds", "7", "8", "--patients", "2", "--preset", "small",
                            "--calib-archive", str(calib), "--out", str(tmp_path / "seeds"), "--workers", "1",
                            "--in-process"])
    assert encoded == [3, 2, 2]  # calibration once, then each seed's archive
    assert set(out["per_seed"]) == {7, 8}
    for seed in (7, 8):
        m = out["per_seed"][seed]
        assert 0.0 <= m["organ_top1"] <= 1.0
        # A run's "model/" folder is named after its run (here the test's tmp folder).
        assert (tmp_path / "seeds" / f"eval_{tmp_path.name}_{seed}" / "metrics.json").is_file()
