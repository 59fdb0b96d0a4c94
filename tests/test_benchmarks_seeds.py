"""benchmarks/seeds_table.py: per-size AUCs pooled over seeds, weighted by each seed's positives."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def seeds_table():
    sys.path.insert(0, str(BENCH))  # seeds_table imports its sibling `common`
    try:
        spec = importlib.util.spec_from_file_location("seeds_table", BENCH / "seeds_table.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


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
