"""benchmarks/probe_readout.py: zero-shot AUC of a projection and truth-label probes on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ctglip_sdk as cg
from ctglip_sdk.reports.dictionary import AbnormalityDictionary
from ctglip_sdk.training.readout import ReadoutInputs, fit_readout
from bench_loader import load_benchmark
from test_training_readout import MLP


@pytest.fixture(scope="module")
def probe_readout():
    yield from load_benchmark("probe_readout")


def _table(width: int, n: int, seed: int, signal_col: int) -> dict:
    """Liver and spleen rows; a third of the livers have a cyst (truth and report) that shifts one column."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, width)).astype(np.float32)
    organs = ["liver" if i % 2 == 0 else "spleen" for i in range(n)]
    cyst = np.array([o == "liver" and rng.random() < 0.33 for o in organs])
    x[cyst, signal_col] += 4.0
    present = [("liver_cyst",) if c else () for c in cyst]
    phase = np.array(["none" if i % 4 < 2 else "portal_venous" for i in range(n)])
    return {"data": ReadoutInputs(torch.from_numpy(x), organs, present, [()] * n),
            "truth": [set(p) for p in present], "phase": phase}


def test_model_scores_rise_after_the_readout_learns_the_finding(probe_readout):
    model = cg.create(MLP, seed=0)
    model.eval()
    width = next(m for m in model.vision_proj.modules() if isinstance(m, torch.nn.Linear)).in_features
    train, test = _table(width, 400, 0, 0), _table(width, 400, 1, 0)
    d = AbnormalityDictionary.default()
    before = probe_readout.model_scores(model, test, d)["liver_cyst"]
    with torch.enable_grad():
        fit_readout(model, train["data"], d, epochs=40, lr=3e-3, batch_size=64, seed=0)
    model.eval()
    after = probe_readout.model_scores(model, test, d)
    cyst = after["liver_cyst"]
    assert cyst["n_pos"] == sum("liver_cyst" in t for t in test["truth"])
    assert cyst["auc"] > max(0.9, before["auc"] + 0.1)
    assert {"none", "portal_venous"} <= set(cyst)  # per-phase AUCs
    summary = probe_readout._summary(after)
    assert summary["auc_min"] == min(v["auc"] for v in after.values())


def test_truth_probes_find_a_signal_in_the_stats_columns_and_not_outside_them(probe_readout):
    d = AbnormalityDictionary.default()
    width, n_stats = 12, 4
    in_stats = probe_readout.probe_scores(_table(width, 400, 0, width - 1), _table(width, 400, 1, width - 1), d,
                                          ["liver_cyst"], n_stats)["liver_cyst"]
    assert in_stats["stats linear"]["auc"] > 0.9 and in_stats["all linear"]["auc"] > 0.9
    pooled = probe_readout.probe_scores(_table(width, 400, 0, 0), _table(width, 400, 1, 0), d,
                                        ["liver_cyst"], n_stats)["liver_cyst"]
    assert pooled["all linear"]["auc"] > 0.9
    assert pooled["stats linear"]["auc"] < 0.7  # the signal column is not among the stats
