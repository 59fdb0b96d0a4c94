"""Result types of index queries: Hit, SearchResults (list-like, to_pandas, group_by) and CohortResult."""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union, overload

from ctglip_sdk.errors import ConfigError, QueryError

__all__ = ["Hit", "SearchResults", "CohortResult", "IngestReport"]


@dataclass(frozen=True)
class Hit:
    """One organ crop returned by a search.

    ``bbox`` is ``(i0, j0, k0, i1, j1, k1)`` half-open voxel indices on the series' canonical (RAS+) grid (six
    None for an organ stored by ``add_embeddings`` without a box); ``path`` is relative to the archive root;
    ``patient`` is the index's pseudonym, never the identifier.
    """

    score: float
    crop_id: int
    organ: str
    study_uid: str
    series_uid: str
    patient: str
    bbox: Tuple[Optional[int], ...]
    path: str
    study_date: Optional[str] = None
    age: Optional[float] = None
    sex: Optional[str] = None
    volume_ml: Optional[float] = None
    mean_hu: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["bbox"] = list(self.bbox)
        return d


class SearchResults(Sequence[Hit]):
    """Hits best first; behaves like a list, with ``to_pandas()``, ``to_dicts()`` and ``group_by()``.

    ``plan`` tells how the search ran (filter source, strategy, candidate count, timings).

    Example:
        >>> res = idx.search("liver cyst", k=5, organ="liver")  # doctest: +SKIP
        >>> res[0].score, res.to_pandas().columns[:3]           # doctest: +SKIP
    """

    def __init__(self, hits: Sequence[Hit], query: Any = None, plan: Any = None) -> None:
        self._hits: List[Hit] = list(hits)
        self.query = query
        self.plan = plan
        #: How text hits were ranked: "cosine", "finding:<key>" (zero-shot margin of that finding), or
        #: "absent:<key>" (that margin reversed, for a text such as "no gallstones").
        self.ranking = "cosine"
        #: How a text query was read: a corrected spelling, an organ outside the finding's, no finding found.
        self.notes: List[str] = []

    @overload
    def __getitem__(self, i: int) -> Hit: ...

    @overload
    def __getitem__(self, i: slice) -> "SearchResults": ...

    def __getitem__(self, i: Union[int, slice]) -> Union[Hit, "SearchResults"]:
        if isinstance(i, slice):
            return self._subset(self._hits[i])
        return self._hits[i]

    def _subset(self, hits: Sequence[Hit]) -> "SearchResults":
        """Some of these hits, with this search's query, plan, ranking and notes."""
        out = SearchResults(hits, self.query, self.plan)
        out.ranking, out.notes = self.ranking, list(self.notes)
        return out

    def __len__(self) -> int:
        return len(self._hits)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self._hits)

    def __repr__(self) -> str:
        top = ", ".join(f"{h.organ}:{h.score:.3f}" for h in self._hits[:3])
        return f"SearchResults({len(self)} hits{': ' + top if top else ''}{', …' if len(self) > 3 else ''})"

    @property
    def crop_ids(self) -> List[int]:
        return [h.crop_id for h in self._hits]

    def to_dicts(self) -> List[Dict[str, Any]]:
        """One plain dict per hit (JSON-ready)."""
        return [h.to_dict() for h in self._hits]

    def to_pandas(self) -> Any:
        """A pandas DataFrame, one row per hit (pandas is imported only here)."""
        pd = _pandas()

        cols = [f.name for f in Hit.__dataclass_fields__.values()]  # type: ignore[attr-defined]
        return pd.DataFrame(self.to_dicts(), columns=cols)

    def group_by(self, key: str = "patient") -> Dict[str, "SearchResults"]:
        """Hits grouped by ``"patient"``, ``"study"`` (study UID), ``"series"`` or ``"organ"``, best group first."""
        attr = {"patient": "patient", "study": "study_uid", "study_uid": "study_uid", "series": "series_uid",
                "series_uid": "series_uid", "organ": "organ"}.get(key)
        if attr is None:
            raise QueryError(f"group_by takes 'patient', 'study', 'series' or 'organ', got {key!r}")
        groups: Dict[str, List[Hit]] = {}
        for h in self._hits:  # hits are best first, so groups come out ordered by their best hit
            groups.setdefault(getattr(h, attr), []).append(h)
        return {g: self._subset(hs) for g, hs in groups.items()}


@dataclass
class CohortResult(Sequence[Dict[str, Any]]):
    """Members of a cohort (patients or studies) with the evidence that put them there.

    Each member is a dict: ``patient`` (pseudonym) or ``study_uid`` (with ``patient``), ``studies`` (study UIDs),
    and ``evidence`` ``{name: best probability}`` for the all_of/any_of conditions, named after the finding key
    a condition was read as (``"no hydronephrosis"`` in none_of -> ``hydronephrosis``; with the condition's own
    filters, ``"hepatic_steatosis (age>=60)"``), or a free-text condition's text.
    """

    level: str
    members: List[Dict[str, Any]]
    conditions: Dict[str, Any] = field(default_factory=dict)
    #: How conditions were read: a corrected spelling, free text, organs left unscored since the last score().
    notes: List[str] = field(default_factory=list)
    #: The names evidence is reported under, in order: the finding key each all_of/any_of condition was read as
    #: (several for a text split into findings: "gallstones and fatty liver" -> gallstones, hepatic_steatosis).
    scored: List[str] = field(default_factory=list)

    def __getitem__(self, i: Any) -> Any:
        return self.members[i]

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return iter(self.members)

    @property
    def ids(self) -> List[str]:
        """Patient pseudonyms (level="patient") or study UIDs (level="study")."""
        key = "patient" if self.level == "patient" else "study_uid"
        return [m[key] for m in self.members]

    def to_dicts(self) -> List[Dict[str, Any]]:
        return [dict(m) for m in self.members]

    def to_pandas(self) -> Any:
        """A DataFrame with one row per member and one ``p:<condition>`` column per scored condition."""
        pd = _pandas()

        rows = []
        for m in self.members:
            row = {k: v for k, v in m.items() if k != "evidence"}
            row["studies"] = ";".join(m.get("studies", []))
            row.update({f"p:{k}": v for k, v in m.get("evidence", {}).items()})
            rows.append(row)
        # The columns do not depend on who is a member: an empty cohort still has them, so that code which
        # selects or merges on "patient" works on every result.
        unit = ["patient", "studies"] if self.level == "patient" else ["study_uid", "patient", "studies"]
        conds = [f"p:{c}" for c in self.scored] if self.scored else \
            [f"p:{c}" for g in ("all_of", "any_of") for c in self.conditions.get(g, [])]
        cols = list(dict.fromkeys(unit + conds + [k for r in rows for k in r]))
        return pd.DataFrame(rows, columns=cols)


def _pandas() -> Any:
    """pandas, an optional dependency (the ``pandas`` extra), or a ConfigError saying how to install it."""
    try:
        import pandas as pd  # noqa: PLC0415 - imported lazily: the core install does not need it
    except ImportError:
        raise ConfigError("to_pandas() needs pandas: pip install 'ctglip-sdk[pandas]' (or use to_dicts())") from None
    return pd


@dataclass
class IngestReport:
    """Outcome of one ``ingest`` run: counts, per-stage timings, and the series that failed (with reasons)."""

    run_id: int
    archive: str
    seen: int = 0
    ok: int = 0
    skipped: int = 0
    errors: List[Dict[str, Any]] = field(default_factory=list)
    #: ``{"series", "warning"}``: ingested, but a metadata value could not be read and was stored empty.
    warnings: List[Dict[str, Any]] = field(default_factory=list)
    organs_added: int = 0
    organs_removed: int = 0
    timings: Dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    started_at: Optional[_dt.datetime] = None

    @property
    def n_errors(self) -> int:
        return len(self.errors)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["n_errors"] = self.n_errors
        d["started_at"] = self.started_at.isoformat() if self.started_at else None
        return d

    def summary(self) -> str:
        """One human line, e.g. for the CLI."""
        rate = self.ok / self.seconds if self.seconds > 0 else 0.0
        n_warned = len({w["series"] for w in self.warnings})
        warned = f", {n_warned} with unreadable metadata" if n_warned else ""
        return (f"{self.seen} series: {self.ok} ingested ({self.organs_added} organs), {self.skipped} skipped, "
                f"{self.n_errors} failed{warned} in {self.seconds:.1f} s ({rate:.2f} series/s)")

    def __str__(self) -> str:
        return self.summary()

