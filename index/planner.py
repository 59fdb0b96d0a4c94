"""Filtered search planning: filter -> candidate rows -> exact search on the subset or FAISS with a bitmap."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

from .ann import AnnIndex
from .filters import Condition
from .mirror import MirrorView

__all__ = ["Planner", "Plan", "exact_topk"]

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """How a search ran: where the filter was answered and which search path was taken."""

    strategy: str = "empty"     # "exact" (gathered subset), "scan" (full matmul + mask), "faiss", "empty"
    source: str = "none"        # "mirror" (in-memory columns), "sql", "none" (no filter)
    n_total: int = 0
    n_candidates: int = 0
    timings_ms: dict = field(default_factory=dict)


#: Rows scored per BLAS call of one query. OpenBLAS splits a matrix-vector product of more than ~2k x 128 over
#: its threads, and on a busy machine every such call waited ~12 ms for a descheduled thread (10k gathered rows
#: x 128: 12.0 ms in one call, 0.58 ms in 1,024-row blocks; docs/performance.md): blocks stay below that size.
SCORE_BLOCK = 1024


def _scores(vecs: np.ndarray, q: np.ndarray, rows: Optional[np.ndarray] = None) -> np.ndarray:
    """``vecs[rows] @ q`` (every row when ``rows`` is None) in blocks of SCORE_BLOCK rows."""
    n = vecs.shape[0] if rows is None else rows.size
    q = np.asarray(q, dtype=vecs.dtype)
    out = np.empty(n, dtype=np.result_type(vecs.dtype, q.dtype))
    for start in range(0, n, SCORE_BLOCK):
        part = vecs[start:start + SCORE_BLOCK] if rows is None else vecs[rows[start:start + SCORE_BLOCK]]
        out[start:start + SCORE_BLOCK] = part @ q
    return out


def exact_topk(vecs: np.ndarray, q: np.ndarray, k: int, rows: Optional[np.ndarray] = None,
               mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product for one query; returns ``(scores, rows)`` best first.

    ``rows`` gathers the candidates first (small subsets); ``mask`` scores every row and masks (wide subsets).
    """
    if rows is not None:
        s = _scores(vecs, q, rows)
        base = rows
    else:
        s = _scores(vecs, q)
        base = None
        if mask is not None:
            s = np.where(mask, s, -np.inf)
    n = s.shape[0]
    if n == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    kk = min(k, n)
    top = np.argpartition(-s, kk - 1)[:kk] if kk < n else np.arange(n)
    top = top[np.argsort(-s[top], kind="stable")]
    scores = s[top]
    keep = np.isfinite(scores)
    top, scores = top[keep], scores[keep]
    return scores.astype(np.float32), (base[top] if base is not None else top).astype(np.int64)


class Planner:
    """Chooses the search path by the candidate count and the index type, never by a user flag.

    Costs are in "row visits" of a full in-memory scan (numpy matvec = 1 per row), measured on 2 cores at 200k
    × 256 (docs/index.md): gathering a candidate then scoring it costs ``gather_cost``; FAISS Flat costs 0.7
    per row without a filter, ``bitmap_row_cost`` per row plus ``faiss_member_cost`` per member with one; IVF
    costs ``ivf_visit_cost`` per vector of the probed lists (nprobe widened by 1/selectivity, see
    AnnIndex.search); HNSW ``hnsw_visit_cost`` per visited node. Below ``exact_max`` candidates the search is
    always exact: approximate recall collapses on small subsets (domain/baselines.md).

    Example:
        >>> Planner().choose(100, 1_000_000, None)
        'exact'
    """

    def __init__(self, exact_max: int = 4096, gather_cost: float = 3.0, bitmap_row_cost: float = 0.05,
                 faiss_member_cost: float = 2.5, ivf_visit_cost: float = 0.7, hnsw_visit_cost: float = 40.0) -> None:
        self.exact_max = exact_max
        self.gather_cost = gather_cost
        self.bitmap_row_cost = bitmap_row_cost
        self.faiss_member_cost = faiss_member_cost
        self.ivf_visit_cost = ivf_visit_cost
        self.hnsw_visit_cost = hnsw_visit_cost

    def choose(self, n_sel: int, n_total: int, ann: Optional[AnnIndex]) -> str:
        """'exact', 'scan', 'faiss' (or 'empty') for a subset of ``n_sel`` rows out of ``n_total``."""
        if n_sel == 0:
            return "empty"
        exact = "exact" if n_sel * self.gather_cost <= n_total else "scan"
        exact_cost = min(n_sel * self.gather_cost, float(n_total))
        if ann is None or n_sel <= self.exact_max or ann.ntotal != n_total:
            return exact
        sel = n_sel / max(n_total, 1)
        if ann.kind == "flat":
            faiss_cost = 0.7 * n_total if n_sel == n_total else \
                n_total * self.bitmap_row_cost + n_sel * self.faiss_member_cost
        elif ann.kind == "ivf":
            base = int(ann.params.get("nprobe", 16))
            nprobe = min(ann.nlist, max(base, math.ceil(base / sel)))
            faiss_cost = n_total * nprobe / max(ann.nlist, 1) * self.ivf_visit_cost + ann.nlist
        elif ann.kind == "hnsw":
            ef = int(ann.params.get("efSearch", 64))
            faiss_cost = ef / sel * self.hnsw_visit_cost
        else:
            faiss_cost = float(n_total)
        return "faiss" if faiss_cost < exact_cost else exact

    def search(self, view: MirrorView, ann: Optional[AnnIndex], q: np.ndarray, k: int,
               organs: Optional[Sequence[str]], conditions: Sequence[Condition],
               sql_ids: Callable[[], np.ndarray], exclude: Optional[np.ndarray] = None
               ) -> Tuple[np.ndarray, np.ndarray, Plan]:
        """Run one query; returns ``(scores, organ ids, plan)`` best first.

        Mirrored filters (organ, age, sex, date, contrast, body part, split) are answered from ``view``; any
        other key sends the whole filter to SQL through ``sql_ids``.
        """
        plan = Plan(n_total=view.n)
        t0 = time.perf_counter()
        mask: Optional[np.ndarray]
        if conditions and not all(c.mirrored for c in conditions):
            ids = sql_ids()
            rows = view.rows_of(ids)
            mask = np.zeros(view.n, bool)
            mask[rows[rows >= 0]] = True
            plan.source = "sql"
        else:
            mask = view.mask(organs, conditions)
            plan.source = "mirror" if mask is not None else "none"
        if exclude is not None and exclude.size:
            mask = np.ones(view.n, bool) if mask is None else mask.copy()
            ex = view.rows_of(exclude)
            mask[ex[ex >= 0]] = False
        n_sel = view.n if mask is None else int(mask.sum())
        plan.n_candidates = n_sel
        t1 = time.perf_counter()
        plan.timings_ms["filter"] = (t1 - t0) * 1e3
        plan.strategy = self.choose(n_sel, view.n, ann)
        q = np.asarray(q, dtype=np.float32).reshape(-1)
        if plan.strategy == "empty":
            scores, ids = np.zeros(0, np.float32), np.zeros(0, np.int64)
        elif plan.strategy == "faiss":
            assert ann is not None  # choose() returns "faiss" only with an index
            bitmap = None
            if mask is not None:
                full = np.zeros(int(view.ids[-1]) + 1, bool)
                full[view.ids[mask]] = True
                bitmap = np.packbits(full, bitorder="little")
            s, i = ann.search(q[None, :], k, bitmap=bitmap, selectivity=n_sel / max(view.n, 1))
            keep = i[0] >= 0
            scores, ids = s[0][keep], i[0][keep]
        elif plan.strategy == "exact":
            rows = np.flatnonzero(mask) if mask is not None else np.arange(view.n)
            scores, r = exact_topk(view.vecs, q, k, rows=rows)
            ids = view.ids[r]
        else:
            scores, r = exact_topk(view.vecs, q, k, mask=mask)
            ids = view.ids[r]
        plan.timings_ms["search"] = (time.perf_counter() - t1) * 1e3
        return scores, ids, plan
