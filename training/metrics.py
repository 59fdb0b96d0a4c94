"""Evaluation metrics in plain numpy: rank-based AUC, ROC points, F1 and thresholds, retrieval recall and mAP."""

from __future__ import annotations

from math import comb
from typing import Dict, Sequence, Tuple

import numpy as np

__all__ = ["auc", "roc_curve", "f1_score", "best_f1_threshold", "average_precision", "retrieval_metrics"]


def _check(scores: Sequence[float], labels: Sequence[bool]) -> Tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    raw = np.asarray(labels).ravel()
    # astype(bool) would count -1 ("unknown") and NaN as positives: callers must drop those rows first.
    if raw.dtype != bool and raw.size and not np.isin(raw, (0, 1)).all():
        raise ValueError("labels must be 0/1 or booleans (drop unknown (-1) or NaN labels first)")
    y = raw.astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    return s, y


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (the Mann-Whitney convention)."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # Boundaries of runs of equal values.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + 1 + b) / 2.0
    return ranks


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half).

    Returns NaN when either class is empty.

    Example:
        >>> auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        0.75
    """
    s, y = _check(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _average_ranks(s)
    u = r[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores: Sequence[float], labels: Sequence[bool]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr, thresholds), thresholds descending; a score >= threshold predicts positive.

    Example:
        >>> fpr, tpr, thr = roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    s, y = _check(scores, labels)
    thr = np.unique(s)[::-1]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tpr = np.array([0.0] + [float((s[y] >= t).sum()) / n_pos for t in thr])
    fpr = np.array([0.0] + [float((s[~y] >= t).sum()) / n_neg for t in thr])
    return fpr, tpr, np.r_[np.inf, thr]


def f1_score(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> float:
    """F1 of the rule `score >= threshold`; 0 when there is no true positive.

    Example:
        >>> f1_score([0.2, 0.6, 0.7, 0.9], [0, 0, 1, 1], 0.65)
        1.0
    """
    s, y = _check(scores, labels)
    pred = s >= threshold
    tp = float((pred & y).sum())
    fp = float((pred & ~y).sum())
    fn = float((~pred & y).sum())
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 or tp == 0 else 2 * tp / denom


def best_f1_threshold(scores: Sequence[float], labels: Sequence[bool]) -> Tuple[float, float]:
    """Threshold maximising F1 on these scores (chosen on a validation split), and that F1.

    Candidates are midpoints between consecutive distinct scores (plus one just below the lowest), so the
    threshold sits between classes rather than on a validation score; ties in F1 keep the higher threshold.
    With no positive example the threshold is above every score and F1 is 0.

    Example:
        >>> t, f1 = best_f1_threshold([0.2, 0.6, 0.7, 0.9], [0, 0, 1, 1])
        >>> round(t, 6), f1
        (0.65, 1.0)
    """
    s, y = _check(scores, labels)
    if not y.any():
        return float(s.max() + 1.0) if s.size else 0.5, 0.0
    u = np.unique(s)
    cands = np.r_[(u[:-1] + u[1:]) / 2.0, u[0] - 1e-6] if u.size > 1 else np.array([u[0] - 1e-6])
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    best_t, best_f1 = float(cands[-1]), -1.0
    n_pos = float(y.sum())
    for t in sorted(cands, reverse=True):
        k = int(np.searchsorted(-s_sorted, -t, side="right"))  # how many scores >= t
        tp = float(y_sorted[:k].sum())
        f1 = 0.0 if tp == 0 else 2 * tp / (k + n_pos)
        if f1 > best_f1 + 1e-12:
            best_t, best_f1 = float(t), f1
    return best_t, best_f1


def _tie_groups(s: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Sizes and relevant counts of the groups of equal scores, best score first."""
    values, inverse = np.unique(-s, return_inverse=True)  # ascending -s: descending score
    sizes = np.bincount(inverse, minlength=values.size)
    relevant = np.bincount(inverse, weights=y.astype(np.float64), minlength=values.size)
    return sizes, relevant


def average_precision(scores: Sequence[float], relevant: Sequence[bool]) -> float:
    """Average precision of a ranking by descending score; NaN with no relevant item.

    Tied scores count as the expectation over every order of the tie (McSherry & Najork, ECIR 2008), so the
    result does not depend on the order the items were listed in: duplicated vectors tie exactly.

    Example:
        >>> average_precision([0.9, 0.8, 0.7], [1, 0, 1])  # (1/1 + 2/3) / 2
        0.8333333333333333
        >>> average_precision([0.5, 0.5], [1, 0])  # either order: (1 + 1/2) / 2
        0.75
    """
    s, y = _check(scores, relevant)
    if not y.any():
        return float("nan")
    total, before, start = 0.0, 0.0, 0
    for g, t in zip(*_tie_groups(s, y)):
        if t:
            pos = np.arange(start + 1, start + g + 1, dtype=np.float64)  # the group's 1-based ranks
            # Rank j holds a relevant item with probability t/g; given that, the group's earlier ranks hold
            # (j - start - 1)(t - 1)/(g - 1) relevant items on average.
            earlier = (pos - start - 1) * ((t - 1) / (g - 1) if g > 1 else 0.0)
            total += t / g * float(((before + earlier + 1) / pos).sum())
        before += t
        start += int(g)
    return float(total) / float(y.sum())


def _hit_within(s: np.ndarray, y: np.ndarray, k: int) -> float:
    """Probability that the top k hold a relevant item when ties are ordered at random."""
    start = 0
    for g, t in zip(*_tie_groups(s, y)):
        g = int(g)
        if start + g <= k:
            if t:
                return 1.0
            start += g
            continue
        slots = k - start  # the tie straddles the cut: ``slots`` of its ``g`` items make the top k
        if slots <= 0 or not t:
            return 0.0
        return 1.0 - comb(g - int(t), slots) / comb(g, slots)  # int / int: exact, no float overflow of comb
    return 0.0


def retrieval_metrics(queries: Sequence[Tuple[Sequence[float], Sequence[bool]]],
                      ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """Recall@k (share of queries with a relevant item in the top k) and mAP over queries.

    Ties are expectations over their orders, as in :func:`average_precision`.

    Queries without any relevant item are skipped (they have no answer to find).

    Example:
        >>> retrieval_metrics([([0.9, 0.1], [0, 1]), ([0.3, 0.2], [1, 0])], ks=(1,))
        {'r@1': 0.5, 'map': 0.75, 'n_queries': 2}
    """
    hits = {k: [] for k in ks}
    aps = []
    for scores, rel in queries:
        s, y = _check(scores, rel)
        if not y.any():
            continue
        for k in ks:
            hits[k].append(_hit_within(s, y, k))
        aps.append(average_precision(s, y))
    out: Dict[str, float] = {f"r@{k}": (float(np.mean(v)) if v else float("nan")) for k, v in hits.items()}
    out["map"] = float(np.mean(aps)) if aps else float("nan")
    out["n_queries"] = len(aps)
    return out
