"""Cohorts from stored scores: patients or studies meeting all_of / any_of / none_of finding conditions."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
from sqlalchemy import and_, select

from ctglip_sdk.errors import ConfigError, QueryError

from .filters import parse_where
from .queries import _classifier, _filter_select, _filtered_ids, _prompt_probabilities, _prompt_spec
from .results import CohortResult

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

__all__ = ["cohort"]

log = logging.getLogger(__name__)


def _condition_key(index: "ArchiveIndex", cond: str, keys: Set[str]) -> Tuple[str, Optional[str]]:
    """('key', finding) for a dictionary key or a text the report parser maps to one; ('text', None) otherwise."""
    if cond in keys:
        return "key", cond
    try:
        from ctglip_sdk.reports import parse_report  # noqa: PLC0415

        found = {f.finding for f in parse_report(cond) if getattr(f, "finding", None) and
                 str(getattr(f, "status", "present")).lower() == "present"}
    except (ImportError, AttributeError):  # the report parser is optional for cohorts
        found = set()
    found &= keys
    if len(found) == 1:
        return "key", found.pop()
    return "text", None


def cohort(index: "ArchiveIndex", all_of: Sequence[str] = (), any_of: Sequence[str] = (),
           none_of: Sequence[str] = (), where: Optional[Mapping[str, Any]] = None, threshold: float = 0.5,
           level: str = "patient") -> CohortResult:
    """Patients (or studies) whose organs meet finding conditions, from stored scores.

    A unit *has* a condition when one of its organs (within ``where``) scores at least ``threshold``. Members
    have every ``all_of``, at least one ``any_of`` (when given) and no ``none_of``; organs never scored for a
    finding count as not having it. A condition is a dictionary key (``"liver_cyst"``), a text the report parser
    maps to one key (``"gallstones present"``), or free text, scored on the fly against every organ vector with
    the index's text encoder (not stored).

    Example:
        >>> idx.score()                                                                        # doctest: +SKIP
        >>> idx.cohort(all_of=["renal_cyst"], none_of=["hydronephrosis"], where={"age": (50, None)}).ids  # doctest: +SKIP
    """
    if level not in ("patient", "study"):
        raise QueryError(f"level must be 'patient' or 'study', got {level!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise QueryError(f"threshold must lie in [0, 1], got {threshold!r}")
    groups = {"all_of": list(all_of), "any_of": list(any_of), "none_of": list(none_of)}
    for name, conds in groups.items():
        if any(not isinstance(c, str) or not c.strip() for c in conds):
            raise QueryError(f"{name}: every condition must be a non-empty string")
    if not any(groups.values()):
        raise QueryError("a cohort needs at least one condition (all_of, any_of or none_of)")
    conditions = parse_where(where)
    index._maybe_refresh()
    t = index.store.t
    o = t.organs
    unit_col = o.c.patient_id if level == "patient" else o.c.study_id
    allowed = _filtered_ids(index, None, conditions) if conditions else None
    allowed_set = set(allowed.tolist()) if allowed is not None else None
    st = index.store.t.scores
    stored: Set[str] = set(index.store.read(lambda c: c.execute(select(st.c.finding).distinct()).scalars().all()))
    known = set(stored)
    try:
        known |= set(_classifier(index).dictionary.keys())
    except ConfigError:
        pass
    units_of: Dict[str, Dict[int, float]] = {}
    for cond in dict.fromkeys(c.strip() for cs in groups.values() for c in cs):
        kind, key = _condition_key(index, cond, known)
        if kind == "key" and key not in stored:
            log.warning("no stored scores for %r: every unit counts as not having it; run score() first", key)
        if kind == "key":
            q = (select(unit_col.label("unit"), o.c.id, st.c.probability).select_from(st.join(o, o.c.id == st.c.organ_id))
                 .where(and_(st.c.finding == key, st.c.probability >= float(threshold))))
            hits: Dict[int, float] = {}
            for r in index.store.read(lambda c: c.execute(q).all()):
                if allowed_set is None or r.id in allowed_set:
                    hits[r.unit] = max(hits.get(r.unit, 0.0), float(r.probability))
        else:
            hits = _free_text_units(index, cond, level, allowed, float(threshold))
        units_of[cond] = hits
    base_q = _filter_select(index, unit_col, None, conditions).distinct()
    base = set(index.store.read(lambda c: c.execute(base_q).scalars().all()))
    members = set(base)
    for c in groups["all_of"]:
        members &= set(units_of[c.strip()])
    if groups["any_of"]:
        members &= set().union(*(set(units_of[c.strip()]) for c in groups["any_of"]))
    for c in groups["none_of"]:
        members -= set(units_of[c.strip()])
    return CohortResult(level, _describe_units(index, sorted(members), level, groups, units_of),
                        {**groups, "threshold": threshold, "where": dict(where or {})})


def _free_text_units(index: "ArchiveIndex", text: str, level: str, allowed: Optional[np.ndarray],
                     threshold: float) -> Dict[int, float]:
    view = index.mirror.view()
    pos, neg, _ = _prompt_spec(text, text)
    probs = _prompt_probabilities(index, view.vecs, pos, neg) if view.n else np.zeros(0, np.float32)
    sel = probs >= threshold
    if allowed is not None:
        sel &= np.isin(view.ids, allowed)
    ids = view.ids[sel]
    if ids.size == 0:
        return {}
    o = index.store.t.organs
    col = o.c.patient_id if level == "patient" else o.c.study_id
    best = dict(zip(ids.tolist(), probs[sel].tolist()))
    out: Dict[int, float] = {}
    for start in range(0, ids.size, 900):
        part = ids[start:start + 900].tolist()
        for r in index.store.read(lambda c: c.execute(select(o.c.id, col.label("unit")).where(o.c.id.in_(part))).all()):
            out[r.unit] = max(out.get(r.unit, 0.0), best[r.id])
    return out


def _describe_units(index: "ArchiveIndex", units: List[int], level: str, groups: Dict[str, List[str]],
                    units_of: Dict[str, Dict[int, float]]) -> List[Dict[str, Any]]:
    if not units:
        return []
    t = index.store.t
    key_col = t.studies.c.patient_id if level == "patient" else t.studies.c.id
    q = (select(key_col.label("unit"), t.studies.c.study_uid, t.patients.c.pseudonym)
         .select_from(t.studies.join(t.patients, t.patients.c.id == t.studies.c.patient_id))
         .where(key_col.in_(units)).order_by(t.studies.c.study_uid))
    info: Dict[int, Dict[str, Any]] = {}
    for r in index.store.read(lambda c: c.execute(q).all()):
        m = info.setdefault(r.unit, {"patient": r.pseudonym, "studies": []})
        m["studies"].append(r.study_uid)
    scored = [c.strip() for c in groups["all_of"] + groups["any_of"]]
    out = []
    for u in units:
        m = dict(info.get(u, {"patient": None, "studies": []}))
        if level == "study":
            m["study_uid"] = m["studies"][0] if m["studies"] else None
        m["evidence"] = {c: round(units_of[c][u], 4) for c in scored if u in units_of[c]}
        out.append(m)
    out.sort(key=lambda m: (m["patient"] or "", m.get("study_uid") or ""))
    return out
