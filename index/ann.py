"""The FAISS side of the index: IndexIDMap2 wrapper, index type by size and memory, tuning, filtered search."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ctglip_sdk.errors import ConfigError, IndexStateError
from ctglip_sdk.faiss_backend import import_faiss

from .vectors import atomic_write, file_checksum

__all__ = ["AnnIndex", "choose_factory", "text_queries", "FLAT_MAX", "DEFAULT_MEMORY_BUDGET"]

log = logging.getLogger(__name__)

#: Below this many vectors the index is Flat (exact). From here the automatic IVF (nlist 512, trainable from
#: 512 x 39 = 19,968 vectors) already beat Flat through the planner at d = 128: 3.3x unfiltered at 2e4, 5.8x at
#: 5e4, 16x at 1e5, with recall@10 >= 0.97 at every selectivity (benchmarks/ann_crossover.py, docs/performance.md).
FLAT_MAX = 20_000
#: Memory the vector index may use when choosing its type (bytes); ``memory_budget=`` overrides.
DEFAULT_MEMORY_BUDGET = 8 << 30
_IVF_RE = re.compile(r"IVF(\d+)")


def _nlist_for(n: int) -> int:
    """nlist ≈ 4·sqrt(N) rounded to a power of two (autofaiss' rule of thumb), at least 16."""
    return max(16, 1 << int(round(math.log2(4 * math.sqrt(max(n, 1))))))


def choose_factory(n: int, dim: int, memory_budget: Optional[int] = None) -> str:
    """Pick a FAISS factory string for ``n`` vectors of ``dim`` within a memory budget.

    Flat below ``FLAT_MAX`` (exact and fast enough); above it IVF with nlist ≈ 4·sqrt(N): ``IVF…,Flat`` when
    raw float32 vectors fit the budget, ``IVF…,SQ8`` (4× smaller) when they do not, ``IVF…,PQm`` beyond. HNSW
    is left to explicit overrides: it cannot drop vectors and its recall under a filter cannot be rescued by
    widening the search the way IVF's ``nprobe`` can.

    Example:
        >>> choose_factory(10_000, 256)
        'Flat'
        >>> choose_factory(1_000_000, 256)
        'IVF4096,Flat'
    """
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    if n < FLAT_MAX:
        return "Flat"
    nlist = _nlist_for(n)
    if n * dim * 4 * 1.1 <= budget:
        return f"IVF{nlist},Flat"
    if n * dim * 1.1 <= budget:
        return f"IVF{nlist},SQ8"
    m = max(c for c in (8, 16, 32, 48, 64) if dim % c == 0 and (c <= 8 or n * c * 1.1 <= budget))
    return f"IVF{nlist},PQ{m}"


def text_queries(model: Any, limit: int = 100) -> Optional[np.ndarray]:
    """The model's unit vectors of the abnormality dictionary's finding phrasings (what users search for), to tune
    search parameters on; None when the dictionary is unavailable."""
    try:
        from ctglip_sdk.reports import AbnormalityDictionary  # noqa: PLC0415 - only IVF/HNSW builds need it

        texts = sorted({p for e in AbnormalityDictionary.default().findings() for p in e.positives})
        if not texts:
            return None
        texts = texts[:: max(1, len(texts) // limit)][:limit]  # spread over the sorted list: every organ and kind
        vecs = np.asarray(model.encode_text(texts), dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - tuning falls back to random directions; it never fails a build
        log.info("no finding phrasings to tune on (%s: %s); random directions instead", type(exc).__name__, exc)
        return None
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


class AnnIndex:
    """A FAISS index over unit vectors (inner product) whose ids are the SQL primary keys of the organ rows.

    Flat and HNSW indexes sit in an ``IndexIDMap2`` (``add_with_ids``, never positions). IVF indexes store the
    ids in their inverted lists themselves: wrapping them in IDMap2 would corrupt the id map on ``remove_ids``
    (IDMap assumes the inner index renumbers like Flat does, IVF does not), and a filter's bitmap is then
    tested on the real ids without a translation step.

    Example:
        >>> ann = AnnIndex.build(256, "Flat")                       # doctest: +SKIP
        >>> ann.add(np.array([7]), np.ones((1, 256), np.float32))   # doctest: +SKIP
    """

    def __init__(self, index: Any, factory: str) -> None:
        self.faiss = import_faiss()
        self.index = index
        self.factory = factory
        self.mapped = isinstance(index, self.faiss.IndexIDMap2)
        self._inner = self.faiss.downcast_index(index.index) if self.mapped else index
        # The kind and the search parameters live in the FAISS object itself (nprobe and efSearch are saved with
        # the file), so a file is self-describing whatever the manifest says.
        if isinstance(self._inner, self.faiss.IndexFlat):
            self.kind = "flat"
        elif isinstance(self._inner, self.faiss.IndexIVF):
            self.kind = "ivf"
        elif isinstance(self._inner, self.faiss.IndexHNSW):
            self.kind = "hnsw"
        else:
            self.kind = "other"
        self.tuned_recall: Optional[float] = None

    @property
    def params(self) -> Dict[str, Any]:
        """Search parameters: ``nprobe`` (IVF) or ``efSearch`` (HNSW)."""
        if self.kind == "ivf":
            return {"nprobe": int(self._inner.nprobe), "nlist": self.nlist}
        if self.kind == "hnsw":
            return {"efSearch": int(self._inner.hnsw.efSearch)}
        return {}

    def set_param(self, key: str, value: int) -> None:
        """Set ``nprobe`` (IVF) or ``efSearch`` (HNSW); other keys raise ConfigError."""
        if key == "nprobe" and self.kind == "ivf":
            self._inner.nprobe = int(value)
        elif key == "efSearch" and self.kind == "hnsw":
            self._inner.hnsw.efSearch = int(value)
        else:
            raise ConfigError(f"search parameter {key!r} does not apply to a {self.kind} index ({self.factory})")

    @classmethod
    def build(cls, dim: int, factory: str) -> "AnnIndex":
        """An empty index (``factory`` without the ``IDMap2,`` prefix, e.g. ``"Flat"``, ``"IVF1024,Flat"``)."""
        faiss = import_faiss()
        spec = factory if factory.upper().startswith("IVF") else f"IDMap2,{factory}"
        try:
            index = faiss.index_factory(int(dim), spec, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ConfigError(f"invalid FAISS factory string {factory!r}: {str(exc).splitlines()[-1]}") from None
        ann = cls(index, factory)
        if ann.kind == "ivf":
            ann.set_param("nprobe", min(16, ann.nlist))  # until tune() measures recall
        return ann

    def describe(self) -> Dict[str, Any]:
        """Factory, kind, count and search parameters (for the manifest, verify and the CLI)."""
        out: Dict[str, Any] = {"factory": self.factory, "kind": self.kind, "ntotal": self.ntotal, **self.params}
        if self.tuned_recall is not None:
            out["tuned_recall"] = self.tuned_recall
        return out

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def nlist(self) -> int:
        return int(getattr(self._inner, "nlist", 0))

    def ids(self) -> np.ndarray:
        """Every id in the index (int64; insertion order for IDMap2, list order for IVF)."""
        if self.mapped:
            return self.faiss.vector_to_array(self.index.id_map).astype(np.int64)
        invlists = self._inner.invlists
        parts = []
        for lst in range(invlists.nlist):
            size = invlists.list_size(lst)
            if size:
                ptr = invlists.get_ids(lst)
                parts.append(self.faiss.rev_swig_ptr(ptr, size).astype(np.int64).copy())
                invlists.release_ids(lst, ptr)
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def train(self, vectors: np.ndarray, seed: int = 0, per_list: int = 64) -> None:
        """Train (IVF/PQ) on a sample of at most ``per_list`` vectors per list (FAISS wants 39 to 256)."""
        if self.is_trained:
            return
        n_need = max(self.nlist, 1) * 39
        if vectors.shape[0] < n_need:
            raise ConfigError(f"factory {self.factory!r} needs at least {n_need} vectors to train, the index has "
                              f"{vectors.shape[0]}; use 'Flat' or a smaller nlist")
        cap = max(self.nlist, 1) * max(per_list, 39)
        if vectors.shape[0] > cap:
            sample = np.random.default_rng(seed).choice(vectors.shape[0], cap, replace=False)
            vectors = vectors[np.sort(sample)]
        self.index.train(np.ascontiguousarray(vectors, dtype=np.float32))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under their SQL ids (the caller excludes concurrent searches)."""
        if len(ids) == 0:
            return
        if not self.is_trained:
            raise IndexStateError(f"the {self.factory} index is not trained; run `ctglip verify --repair`")
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> bool:
        """Remove ids; returns False when the index type cannot remove (HNSW) and must be rebuilt."""
        if len(ids) == 0:
            return True
        try:
            self.index.remove_ids(self.faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64)))
        except RuntimeError:
            return False
        return True

    # -- search -----------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, bitmap: Optional[np.ndarray] = None,
               selectivity: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k ``(scores, ids)`` for float32 queries ``[m, d]``; ``bitmap`` (packed, little-endian bit order,
        one bit per id) restricts the search. IVF widens ``nprobe`` by 1/selectivity so that a filter does not
        starve the probed lists of candidates."""
        faiss = self.faiss
        sel = faiss.IDSelectorBitmap(bitmap.size * 8, faiss.swig_ptr(bitmap)) if bitmap is not None else None
        if self.kind == "ivf":
            base = int(self._inner.nprobe)
            nprobe = min(self.nlist, max(base, int(math.ceil(base / max(selectivity, 1e-9)))))
            params = faiss.SearchParametersIVF(nprobe=nprobe)
        elif self.kind == "hnsw":
            ef = int(self._inner.hnsw.efSearch)
            params = faiss.SearchParametersHNSW(efSearch=max(k, min(4096, int(ef / max(selectivity, 1e-9)))))
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.shape[0] == 1:
            # FAISS parallelises over queries: one query gains nothing from OpenMP, and a team of spinning
            # threads on a busy machine costs 30x (0.2 ms -> 6 ms for IVF, docs/index.md). The setting is
            # per calling thread, so concurrent searches and batch work elsewhere are unaffected.
            before = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                scores, ids = self.index.search(q, int(k), params=params)
            finally:
                faiss.omp_set_num_threads(before)
        else:
            scores, ids = self.index.search(q, int(k), params=params)
        del sel  # keep the selector (and the bitmap it points into) alive until the search returns
        return scores, ids

    def tune(self, ids: np.ndarray, vectors: np.ndarray, target_recall: float = 0.95, k: int = 10,
             n_queries: int = 200, seed: int = 0, queries: Optional[np.ndarray] = None) -> Dict[str, Any]:
        """Smallest nprobe / efSearch reaching ``target_recall`` at ``k`` on two query samples, each on its own.

        Half the queries are stored vectors (near the data, like ``similar``); the other half ``queries`` (the
        model's text vectors: text queries lie far from organ vectors, cosines ~0.3) or, without them, random
        unit directions. Tuned on stored vectors alone, text queries got recall@10 0.63-0.76; on random
        directions, 0.88-0.97 (docs/performance.md). ``ids`` (increasing) and ``vectors`` are the index's
        contents, row for row.
        """
        if self.kind not in ("ivf", "hnsw") or vectors.shape[0] <= k:
            return self.params
        rng = np.random.default_rng(seed)
        near = vectors[rng.choice(vectors.shape[0], min(n_queries // 2, vectors.shape[0]), replace=False)]
        if queries is not None and len(queries):
            far = np.asarray(queries, np.float32)[:n_queries - n_queries // 2]
        else:
            far = rng.standard_normal((n_queries - n_queries // 2, vectors.shape[1]))
            far /= np.maximum(np.linalg.norm(far, axis=1, keepdims=True), 1e-12)
        q = np.ascontiguousarray(np.concatenate([near, far]), dtype=np.float32)
        truth = self._exact_topk(vectors, q, k)
        key, values = ("nprobe", [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]) \
            if self.kind == "ivf" else ("efSearch", [16, 32, 64, 128, 256, 512, 1024])
        if self.kind == "ivf":
            values = [v for v in values if v < self.nlist] + [self.nlist]
        recall = 0.0
        for v in values:
            self.set_param(key, v)
            _, found = self.search(q, k)
            found_rows = np.searchsorted(ids, found)  # ids -> rows of ``vectors`` (same numbering as truth)
            hits = np.array([len(set(f) & set(t)) / k for f, t in zip(found_rows, truth)])
            recall = float(min(hits[:len(near)].mean(), hits[len(near):].mean()))
            if recall >= target_recall:
                break
        self.tuned_recall = round(recall, 4)
        log.info("tuned %s: %s=%s recall@%d=%.3f", self.factory, key, self.params[key], k, recall)
        return self.params

    @staticmethod
    def _exact_topk(vectors: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
        best_s = np.full((q.shape[0], k), -np.inf, np.float32)
        best_i = np.zeros((q.shape[0], k), np.int64)
        for start in range(0, vectors.shape[0], 65536):
            block = np.asarray(vectors[start:start + 65536], dtype=np.float32)
            s = q @ block.T
            cat_s = np.concatenate([best_s, s], axis=1)
            cat_i = np.concatenate([best_i, np.arange(start, start + block.shape[0])[None, :].repeat(q.shape[0], 0)],
                                   axis=1)
            top = np.argpartition(-cat_s, k - 1, axis=1)[:, :k]
            best_s = np.take_along_axis(cat_s, top, 1)
            best_i = np.take_along_axis(cat_i, top, 1)
        return best_i

    # -- files ------------------------------------------------------------------------------------------
    def save(self, path: Path) -> str:
        """Write atomically (temp file, fsync, replace); returns the file's checksum."""
        atomic_write(Path(path), lambda tmp: self.faiss.write_index(self.index, str(tmp)))
        return file_checksum(Path(path))

    @classmethod
    def load(cls, path: Path, factory: str) -> "AnnIndex":
        """Read an index file written by ``save``."""
        faiss = import_faiss()
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexStateError(f"cannot read the FAISS index ({str(exc).splitlines()[-1]})", path=path) from None
        # read_index already returns the concrete class; downcasting again would drop the owning wrapper and
        # free the index under us.
        if not isinstance(index, (faiss.IndexIDMap2, faiss.IndexIVF)):
            raise IndexStateError("the FAISS file holds neither an IndexIDMap2 nor an IVF index", path=path)
        return cls(index, factory)
