"""In-memory mirror of what searches filter on (organ, age, sex, date, contrast…) and of the float32 vectors."""

from __future__ import annotations

import datetime as _dt
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .filters import NO_CONTRAST, Condition

__all__ = ["Mirror", "MirrorView", "NO_DATE"]

NO_DATE = np.iinfo(np.int32).min
_EPOCH = _dt.date(1970, 1, 1)
_SEX_CODE = {"M": 1, "F": 2, "O": 3}
_CATS = ("contrast", "body_part", "split")


def _days(d: Any) -> int:
    if d is None:
        return int(NO_DATE)
    if isinstance(d, str):
        d = _dt.date.fromisoformat(d[:10])
    if isinstance(d, _dt.datetime):
        d = d.date()
    return (d - _EPOCH).days


def _in_codes(column: np.ndarray, codes: Sequence[int], n_codes: int) -> np.ndarray:
    """``column ∈ codes`` for small integer codes (−1 = NULL): equality tests for a few codes, else a lookup
    table (np.isin is ~100x slower than ``==`` on these small-int columns)."""
    if len(codes) <= 8:
        out = np.zeros(column.shape, bool)
        for code in codes:
            out |= column == code
        return out
    lut = np.zeros(n_codes + 2, bool)
    lut[np.asarray(codes, dtype=np.int64) + 1] = True
    return lut[column.astype(np.int32) + 1]


@dataclass(frozen=True)
class MirrorView:
    """An immutable snapshot: row ``r`` describes organ id ``ids[r]`` (ids increasing)."""

    ids: np.ndarray
    vecs: np.ndarray
    organ: np.ndarray
    age: np.ndarray
    sex: np.ndarray
    date: np.ndarray
    cats: Dict[str, np.ndarray]
    organ_names: Tuple[str, ...]
    cat_values: Dict[str, Tuple[str, ...]]

    @property
    def n(self) -> int:
        return int(self.ids.size)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row numbers of ``ids`` (−1 for ids not present)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.n == 0:
            return np.full(ids.shape, -1, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), self.n - 1)
        return np.where(self.ids[pos] == ids, pos, -1)

    def mask(self, organs: Optional[Sequence[str]], conditions: Sequence[Condition]) -> Optional[np.ndarray]:
        """Boolean row mask for an organ list and mirrored conditions; None means "every row"."""
        m: Optional[np.ndarray] = None

        def both(x: np.ndarray) -> None:
            nonlocal m
            m = x if m is None else (m & x)

        if organs is not None:
            wanted = set(organs)
            both(_in_codes(self.organ, [i for i, name in enumerate(self.organ_names) if name in wanted],
                           len(self.organ_names)))
        for c in conditions:
            if c.key == "age":
                col = self.age
                x = np.ones(self.n, bool)
                if c.lo is not None:
                    x &= col >= c.lo  # NaN (unknown age) compares False: excluded, as SQL's NULL is
                if c.hi is not None:
                    x &= col <= c.hi
                both(x)
            elif c.key == "study_date":
                x = self.date != NO_DATE
                if c.lo is not None:
                    x &= self.date >= _days(c.lo)
                if c.hi is not None:
                    x &= self.date <= _days(c.hi)
                both(x)
            elif c.key == "sex":
                both(_in_codes(self.sex, [_SEX_CODE[v] for v in c.values], 4))
            elif c.key in _CATS:
                values = self.cat_values[c.key]
                if c.flag is not None:
                    # NULL counts as "no contrast" in SQL (coalesce(col, '') is in NO_CONTRAST): same here.
                    none = [i for i, v in enumerate(values) if v in NO_CONTRAST] + [-1]
                    x = _in_codes(self.cats[c.key], none, len(values))
                    both(~x if c.flag else x)
                else:
                    wanted = set(c.values)
                    both(_in_codes(self.cats[c.key], [i for i, v in enumerate(values) if v in wanted], len(values)))
            else:  # pragma: no cover - the planner only passes mirrored keys
                raise KeyError(c.key)
        return m


class _Column:
    """A growable array; views handed out earlier stay valid because growth allocates a new buffer."""

    def __init__(self, dtype: Any, shape: Tuple[int, ...] = ()) -> None:
        self.buf = np.empty((16, *shape), dtype=dtype)
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        m = len(values)
        if self.n + m > len(self.buf):
            cap = max(len(self.buf) * 2, self.n + m)
            new = np.empty((cap, *self.buf.shape[1:]), dtype=self.buf.dtype)
            new[:self.n] = self.buf[:self.n]
            self.buf = new
        self.buf[self.n:self.n + m] = values
        self.n += m

    def view(self) -> np.ndarray:
        v = self.buf[:self.n]
        v.flags.writeable = False
        return v


class Mirror:
    """Columns kept in step with SQL (SQL stays the truth): rebuilt on open, extended by each ingest batch.

    Writers call :meth:`append`/:meth:`remove` (under the index's writer lock); readers take :meth:`view`, an
    immutable snapshot that later appends do not disturb.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._ids = _Column(np.int64)
        self._vecs = _Column(np.float32, (self.dim,))
        self._organ = _Column(np.int16)
        self._age = _Column(np.float32)
        self._sex = _Column(np.int8)
        self._date = _Column(np.int32)
        self._cats = {k: _Column(np.int16) for k in _CATS}
        self._organ_names: List[str] = []
        self._organ_codes: Dict[str, int] = {}
        self._cat_values: Dict[str, List[str]] = {k: [] for k in _CATS}
        self._cat_codes: Dict[str, Dict[str, int]] = {k: {} for k in _CATS}
        self._view = self._make_view()

    def _make_view(self) -> MirrorView:
        return MirrorView(self._ids.view(), self._vecs.view(), self._organ.view(), self._age.view(),
                          self._sex.view(), self._date.view(), {k: c.view() for k, c in self._cats.items()},
                          tuple(self._organ_names), {k: tuple(v) for k, v in self._cat_values.items()})

    def view(self) -> MirrorView:
        """The current snapshot (cheap; safe to use from any thread)."""
        return self._view

    @staticmethod
    def _code(values: List[str], codes: Dict[str, int], value: Optional[str], lower: bool = True) -> int:
        if value is None:
            return -1
        v = str(value).strip().lower() if lower else value
        code = codes.get(v)
        if code is None:
            code = codes[v] = len(values)
            values.append(v)
        return code

    def append(self, rows: Sequence[Tuple[Any, ...]], vectors: np.ndarray) -> None:
        """Add rows ``(id, organ, age, sex, study_date, contrast, body_part, split)`` (ids above every present id)."""
        if not rows:
            return
        with self._lock:
            ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            if self._ids.n and ids[0] <= self._ids.buf[self._ids.n - 1]:
                raise ValueError("mirror ids must increase")  # internal invariant, not user input
            organ = np.array([self._code(self._organ_names, self._organ_codes, r[1], lower=False) for r in rows],
                             np.int16)
            age = np.array([np.nan if r[2] is None else float(r[2]) for r in rows], np.float32)
            sex = np.array([_SEX_CODE.get(r[3] or "", 0) for r in rows], np.int8)
            date = np.array([_days(r[4]) for r in rows], np.int32)
            cats = {k: np.array([self._code(self._cat_values[k], self._cat_codes[k], r[5 + j]) for r in rows],
                                np.int16)
                    for j, k in enumerate(_CATS)}
            self._ids.extend(ids)
            self._vecs.extend(np.asarray(vectors, np.float32))
            self._organ.extend(organ)
            self._age.extend(age)
            self._sex.extend(sex)
            self._date.extend(date)
            for k in _CATS:
                self._cats[k].extend(cats[k])
            self._view = self._make_view()

    def remove(self, ids: Iterable[int]) -> None:
        """Drop ids (a replaced series): rebuilds the buffers, readers keep their old snapshot."""
        drop = np.fromiter(ids, np.int64)
        if drop.size == 0:
            return
        with self._lock:
            old = self._view
            keep = ~np.isin(old.ids, drop)
            cols = [self._ids, self._vecs, self._organ, self._age, self._sex, self._date, *self._cats.values()]
            arrays = [old.ids, old.vecs, old.organ, old.age, old.sex, old.date, *old.cats.values()]
            for col, arr in zip(cols, arrays):
                kept = arr[keep]
                col.buf = np.empty((max(16, len(kept)), *arr.shape[1:]), dtype=arr.dtype)
                col.n = 0
                col.extend(kept)
            self._view = self._make_view()

    def load(self, rows: Sequence[Tuple[Any, ...]], vectors: np.ndarray) -> None:
        """Replace everything (open / refresh)."""
        with self._lock:
            self._reset()
        self.append(rows, vectors)
