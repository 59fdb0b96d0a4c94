"""Index queries: text or vector search and similar organs, with their filters (scoring is in scoring.py)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Sequence, Union

import numpy as np
from sqlalchemy import and_, bindparam, select, true

from ctglip_sdk import organs as vocab
from ctglip_sdk.errors import QueryError

from .export import shown_series_columns
from .filters import Condition, needs_join, parse_where, resolve_patients, text_list, to_sql
from .nlq import unapplied_filters, where_exprs
from .query_text import _query_vector
from .results import Hit, SearchResults

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

__all__ = ["search", "similar", "resolve_organs"]  # scoring: index/scoring.py

_MAX_K = 10_000


#: TotalSegmentator 2 class names that v1 lacks ("heart", "atrial_appendage_left", ...).
_V2_ONLY = frozenset(set(vocab.V2.values()) - set(vocab.ORGANS))


def resolve_organs(organ: Union[str, Sequence[str], None]) -> Optional[List[str]]:
    """Canonical class names for names, synonyms or groups (``"kidney"`` -> both kidneys), with TotalSegmentator
    2's own name where it differs (``"heart"`` -> v1's chambers and v2's heart); None = all."""
    if organ is None:
        return None
    names = text_list(organ, "organ")
    if not names:
        raise QueryError("organ= is an empty list; pass None for every organ")
    out = set()
    for n in names:
        v2 = n.strip().lower().replace(" ", "_")
        if v2 in _V2_ONLY:
            # A TotalSegmentator 2 class stored as such (a v2 mask): "heart" also names v1's chambers, so both
            # are searched; a v2-only name ("atrial_appendage_left") is searched as it is.
            out.add(v2)
            if not vocab.is_known(v2) and v2 not in vocab.GROUPS:
                continue
        out.update(vocab.lookup(n))
    return sorted(out)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= _MAX_K:
        raise QueryError(f"k must be an integer between 1 and {_MAX_K}, got {k!r}")
    return int(k)


def _filter_select(index: "ArchiveIndex", column: Any, organs: Optional[Sequence[str]],
                   conditions: Sequence[Condition]) -> Any:
    """SELECT ``column`` FROM organs (joined as the filters need) WHERE organ list and filters hold."""
    t = index.store.t
    studies, series, patients = needs_join(conditions)
    src = t.organs
    if studies:
        src = src.join(t.studies, t.studies.c.id == t.organs.c.study_id)
    if series:
        src = src.join(t.series, t.series.c.id == t.organs.c.series_id)
    if patients:
        src = src.join(t.patients, t.patients.c.id == t.organs.c.patient_id)
    clauses = to_sql(conditions, t)
    if organs is not None:
        clauses.append(t.organs.c.organ.in_(list(organs)))
    return select(column).select_from(src).where(and_(true(), *clauses))


def _filtered_ids(index: "ArchiveIndex", organs: Optional[Sequence[str]], conditions: Sequence[Condition]) -> np.ndarray:
    """Organ ids passing an organ list and filters, answered by SQL (the truth)."""
    q = _filter_select(index, index.store.t.organs.c.id, organs, conditions)
    # Sorted here rather than by ORDER BY: numpy's sort is cheaper than SQL's temporary B-tree.
    return np.sort(np.asarray(index.store.read(lambda c: c.execute(q).scalars().all()), dtype=np.int64))


def _hydrate_statement(index: "ArchiveIndex") -> Any:
    """The metadata join for hits, built once per index (building it cost more than running it)."""
    stmt = getattr(index, "_hydrate_stmt", None)
    if stmt is None:
        t = index.store.t
        o = t.organs
        shown_study, shown_uid, shown_path = shown_series_columns(index)  # without the patient IDs of folder names
        stmt = (select(o.c.id, o.c.organ, o.c.i0, o.c.j0, o.c.k0, o.c.i1, o.c.j1, o.c.k1, o.c.volume_ml,
                       o.c.mean_hu, o.c.age, o.c.sex, o.c.study_date, shown_uid, shown_path,
                       shown_study, t.patients.c.pseudonym)
                .select_from(o.join(t.series, t.series.c.id == o.c.series_id)
                             .join(t.studies, t.studies.c.id == o.c.study_id)
                             .join(t.patients, t.patients.c.id == o.c.patient_id))
                .where(o.c.id.in_(bindparam("ids", expanding=True))))
        index._hydrate_stmt = stmt
    return stmt


def _hydrate(index: "ArchiveIndex", ids: np.ndarray, scores: np.ndarray) -> List[Hit]:
    if ids.size == 0:
        return []
    q = _hydrate_statement(index)
    id_list = [int(i) for i in ids]
    rows = {r.id: r for r in index.store.read(lambda c: c.execute(q, {"ids": id_list}).all())}
    hits = []
    for i, s in zip(ids.tolist(), scores.tolist()):
        r = rows.get(i)
        if r is None:  # removed by a concurrent re-ingest of its series between search and hydration
            continue
        hits.append(Hit(score=float(s), crop_id=int(i), organ=r.organ, study_uid=r.study_uid,
                        series_uid=r.series_uid, patient=r.pseudonym, bbox=(r.i0, r.j0, r.k0, r.i1, r.j1, r.k1),
                        path=r.path, study_date=r.study_date.isoformat() if r.study_date else None,
                        age=r.age, sex=r.sex, volume_ml=r.volume_ml, mean_hu=r.mean_hu))
    return hits


def _run(index: "ArchiveIndex", q: np.ndarray, k: int, organs: Optional[Sequence[str]],
         conditions: Sequence[Condition], exclude: Optional[np.ndarray] = None) -> SearchResults:
    index._maybe_refresh()
    view = index.mirror.view()
    index._ann_lock.acquire_read()
    try:
        scores, ids, plan = index.planner.search(view, index.ann, q, k, organs, conditions,
                                                 lambda: _filtered_ids(index, organs, conditions), exclude=exclude)
    finally:
        index._ann_lock.release_read()
    t0 = time.perf_counter()
    hits = _hydrate(index, ids, scores)
    plan.timings_ms["hydrate"] = (time.perf_counter() - t0) * 1e3
    return SearchResults(hits, plan=plan)


def search(index: "ArchiveIndex", query: Union[str, np.ndarray], k: int = 20,
           organ: Union[str, Sequence[str], None] = None, where: Optional[Mapping[str, Any]] = None,
           rank: str = "auto") -> SearchResults:
    """Organs whose vectors are closest (cosine) to a text or a vector, optionally filtered.

    Args:
        query: free text (encoded with the index's model) or a vector of the index's dimension.
        rank: for text queries. ``"auto"``: when the text asks for one dictionary finding ("kidney stone",
            "enlarged spleen", "suspected gallstones", "HCC", "cholelithasis" read as "cholelithiasis"), rank by
            that finding's zero-shot margin ``v·(p̄ − n̄)`` (positive prompts plus the text, against the negative
            ones) over the organs the finding belongs to (within ``organ`` when given); otherwise, and with
            ``"cosine"``, by cosine to the text. ``res.ranking`` says which was used (``"finding:<key>"`` or
            ``"cosine"``) and ``res.notes`` how the text was read.
        k: number of hits (1..10000).
        organ: canonical names, synonyms or groups (``"kidney"``, ``["liver", "spleen"]``); None = every organ.
        where: filters on the allowlist of :data:`ctglip_sdk.index.filters.FILTERS` (age and date ranges as
            ``(lo, hi)`` with None for an open end, sex, contrast, body_part, split, uids, patient pseudonym…).

    Returns:
        SearchResults, best first; ``.plan`` tells which path the planner took.

    Example:
        >>> res = idx.search("hepatic cyst", k=10, organ="liver", where={"age": (60, None), "sex": "F"})  # doctest: +SKIP
        >>> res.to_pandas()[["score", "patient", "study_uid"]]                                             # doctest: +SKIP
    """
    k = _check_k(k)
    if rank not in ("auto", "cosine"):
        raise QueryError(f"rank must be 'auto' or 'cosine', got {rank!r}")
    organs = resolve_organs(organ)
    asked = organ  # the organs the caller or the text named, for the note when the index stores none of them
    conditions = resolve_patients(index, parse_where(where))
    qv = _query_vector(index, query, rank)
    notes: List[str] = []
    if qv.organ is not None:
        # A finding's margin means something only on the organs the finding belongs to: over every organ, ribs
        # and iliac vessels outscored the livers for "hepatomegaly". So the finding's organs bound the search.
        own = resolve_organs(qv.organ) or []
        if organs is None:
            organs = own
        elif set(organs) & set(own):
            organs = [o for o in organs if o in own]
        else:
            notes.append(f"{qv.ranking.split(':', 1)[1]} is not a finding of {', '.join(organs)}; ranked by cosine")
            qv = _query_vector(index, query, "cosine")
        if qv.read_as is not None:
            notes.append(f"read as {qv.read_as!r}")
        notes += qv.notes
    elif isinstance(query, str) and rank == "auto":
        if qv.scope and organs is None:  # the organs the text names, when it names no single finding
            organs = resolve_organs(list(qv.scope))
            asked = list(qv.scope)
        # The note names the organs searched: organ= when given (it used to name the text's organs instead).
        within = list(asked if not isinstance(asked, str) else [asked]) if asked else []
        notes += [f"{n} within {', '.join(within)}" if i == 0 and within else n for i, n in enumerate(qv.notes)]
    if organs is not None and asked is not None:
        stored = set(index.mirror.view().organ_names)
        absent = sorted(set(resolve_organs(asked) or []) - stored)
        if stored and absent and not set(organs) & stored:
            # e.g. a TotalSegmentator v2 class ("kidney_cyst_left", "prostate") in an index of v1 organs: zero hits
            # used to come back with no word of why.
            notes.append(f"no organ of this index is named {', '.join(absent[:5])}: nothing can match the organs "
                         f"{'the text names' if organ is None else 'asked for'}")
    if isinstance(query, str):
        unused = unapplied_filters(query, where)
        if unused is not None:
            notes.append(f"the words {unused[0]!r} look like filters ({', '.join(where_exprs(unused[1]))}) but "
                         f"search does not apply them; pass where=, or read them with "
                         f"ctglip_sdk.index.nlq.parse_query")
    res = _run(index, qv.vector, k, organs, conditions)
    res.query = query if isinstance(query, str) else "<vector>"
    res.ranking = qv.ranking
    res.notes = notes
    return res


def similar(index: "ArchiveIndex", crop_id: int, k: int = 10, same_organ: bool = True,
            where: Optional[Mapping[str, Any]] = None) -> SearchResults:
    """Organs most like the stored organ ``crop_id`` (itself excluded); the same organ class by default.

    Example:
        >>> hit = idx.search("renal cyst", k=1, organ="kidney")[0]  # doctest: +SKIP
        >>> idx.similar(hit.crop_id, k=5).to_pandas()               # doctest: +SKIP
    """
    k = _check_k(k)
    if isinstance(crop_id, bool) or not isinstance(crop_id, (int, np.integer)):
        # int() would quietly take 1.5 as crop 1: an id that drifted through a float column picks another organ
        raise QueryError(f"crop_id must be an integer id of this index, got {crop_id!r}")
    if not 0 <= int(crop_id) < 2 ** 63:  # crop ids are SQL primary keys (int64); 2**70 raised OverflowError
        raise QueryError(f"crop id {crop_id} is not in this index")
    conditions = resolve_patients(index, parse_where(where))
    index._maybe_refresh()
    view = index.mirror.view()
    row = int(view.rows_of(np.asarray([int(crop_id)]))[0])
    if row < 0:
        raise QueryError(f"crop id {crop_id} is not in this index")
    organs = [view.organ_names[int(view.organ[row])]] if same_organ else None
    res = _run(index, np.asarray(view.vecs[row]), k, organs, conditions, exclude=np.asarray([int(crop_id)]))
    res.query = f"similar:{int(crop_id)}"
    return res


# -- scores -------------------------------------------------------------------------------------------------
