"""AUC, ROC, F1, thresholds and retrieval metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctglip_sdk.training.metrics import (auc, average_precision, best_f1_threshold, f1_score, retrieval_metrics,
                                         roc_curve)


def test_auc_hand_values():
    # Pairs (pos, neg): (0.35 vs 0.1 win, vs 0.4 lose), (0.8 wins both) -> 3 of 4.
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auc([1, 2, 3], [0, 1, 1]) == 1.0 and auc([3, 2, 1], [0, 1, 1]) == 0.0
    # Ties between classes count one half: pos {0.5, 0.9}, neg {0.5, 0.1} -> (0.5 + 1 + 1 + 1) / 4.
    assert auc([0.5, 0.9, 0.5, 0.1], [1, 1, 0, 0]) == 0.875
    assert auc([0.3, 0.3, 0.3], [1, 0, 1]) == 0.5
    assert math.isnan(auc([0.1, 0.2], [1, 1]))


def test_auc_matches_pairwise_count_on_random_data():
    rng = np.random.default_rng(0)
    s = np.round(rng.random(60), 1)  # coarse rounding makes many ties
    y = rng.random(60) < 0.3
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert auc(s, y) == pytest.approx(pairwise, abs=1e-12)


def test_roc_curve_points_and_area():
    fpr, tpr, thr = roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thr[0] == np.inf and thr[1:].tolist() == [0.8, 0.4, 0.35, 0.1]
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)


def test_f1_and_threshold():
    # threshold 0.5: predictions [0,1,1,1] vs labels [0,0,1,1]: tp 2, fp 1, fn 0 -> 4/5.
    assert f1_score([0.2, 0.6, 0.7, 0.9], [0, 0, 1, 1], 0.5) == pytest.approx(0.8)
    assert f1_score([0.2, 0.6], [0, 0], 0.1) == 0.0
    t, f = best_f1_threshold([0.2, 0.6, 0.7, 0.9], [0, 0, 1, 1])
    assert (t, f) == (pytest.approx(0.65), 1.0)
    # Overlapping classes: scores 1..6, labels 0 1 0 1 1 1. Best: predict >= 1.5 -> tp 4, fp 1, fn 0 -> 8/9.
    t, f = best_f1_threshold([1, 2, 3, 4, 5, 6], [0, 1, 0, 1, 1, 1])
    assert t == pytest.approx(1.5) and f == pytest.approx(8 / 9)
    t, f = best_f1_threshold([0.1, 0.2], [0, 0])
    assert f == 0.0 and t > 0.2
    with pytest.raises(ValueError, match="differ"):
        auc([0.1], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        auc([float("nan"), 0.1], [0, 1])


def test_average_precision_and_retrieval():
    assert average_precision([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.1, 0.9], [1, 0]) == pytest.approx(0.5)
    q1 = ([0.9, 0.8, 0.1, 0.0], [0, 0, 1, 0])    # relevant item at rank 3
    q2 = ([0.5, 0.4, 0.3, 0.2], [1, 0, 0, 1])    # ranks 1 and 4
    q3 = ([0.5, 0.4], [0, 0])                    # no answer: skipped
    m = retrieval_metrics([q1, q2, q3], ks=(1, 2, 3))
    assert m["r@1"] == 0.5 and m["r@2"] == 0.5 and m["r@3"] == 1.0 and m["n_queries"] == 2
    assert m["map"] == pytest.approx((1 / 3 + (1 + 2 / 4) / 2) / 2)


def _brute_force_ties(s, y, k):
    """AP and hit@k averaged over every order of tied scores (each consistent permutation once)."""
    import itertools

    aps, hits = [], []
    for perm in itertools.permutations(range(len(s))):
        if np.any(np.diff(s[list(perm)]) > 0):
            continue
        yy = y[list(perm)]
        aps.append((np.cumsum(yy) / np.arange(1, len(s) + 1))[yy.astype(bool)].mean())
        hits.append(bool(yy[:k].any()))
    return float(np.mean(aps)), float(np.mean(hits))


def test_ties_count_as_the_expectation_over_their_orders():
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(120):
        n = int(rng.integers(2, 7))
        s, y = rng.integers(0, 3, n).astype(float), rng.integers(0, 2, n)
        if not y.any():
            continue
        k = int(rng.integers(1, n + 1))
        ap, hit = _brute_force_ties(s, y, k)
        got = retrieval_metrics([(s, y)], ks=(k,))
        assert got["map"] == pytest.approx(ap, abs=1e-12) and got[f"r@{k}"] == pytest.approx(hit, abs=1e-12)
        checked += 1
    assert checked > 50
    # Listing order no longer decides a tie (it did: the first-listed item took the rank).
    assert average_precision([0.5, 0.5, 0.1], [1, 0, 0]) == average_precision([0.5, 0.5, 0.1], [0, 1, 0]) == 0.75
    assert retrieval_metrics([([0.5, 0.5, 0.5, 0.5], [0, 0, 0, 1])], ks=(1, 2))["r@2"] == pytest.approx(0.5)
    # A wide tie cut deep: comb() of 20,000 exceeds a float (it raised OverflowError)
    wide = retrieval_metrics([(np.zeros(20_000), np.arange(20_000) < 3)], ks=(200,))["r@200"]
    assert wide == pytest.approx(1 - np.prod([(20_000 - 3 - i) / (20_000 - i) for i in range(200)]))

