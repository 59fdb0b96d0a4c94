"""Cohorts from stored scores: patients or studies meeting all_of / any_of / none_of finding conditions."""

from __future__ import annotations

import difflib
import logging
import re
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
from sqlalchemy import and_, select

from ctglip_sdk.errors import ConfigError, QueryError

from .filters import parse_where, text_list
from .queries import _classifier, _filter_select, _filtered_ids, _prompt_probabilities, _prompt_spec
from .results import CohortResult

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

__all__ = ["cohort"]

log = logging.getLogger(__name__)


_KEY_LIKE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)+$")


def _condition_key(index: "ArchiveIndex", cond: str, keys: Set[str]) -> Tuple[str, Optional[str], Optional[str]]:
    """How a condition is read: ('key', finding, note) for a dictionary or stored key, or a text that asks for
    one finding (case, hedges and typos as in search); ('text', None, note) for free text.

    A condition shaped like a key ("renal_stones") that is not one is a QueryError with suggestions: read as free
    text it matched nearly every organ, so a typo in none_of emptied the cohort and one in all_of kept everyone.
    """
    if cond in keys:
        return "key", cond, None
    if _KEY_LIKE.match(cond):
        close = difflib.get_close_matches(cond, sorted(keys), n=3, cutoff=0.6)
        raise QueryError(f"unknown finding key {cond!r}" + (f"; did you mean {', '.join(close)}?" if close else
                                                             f"; known: {', '.join(sorted(keys))}"))
    from ctglip_sdk.reports.query import read_query  # noqa: PLC0415

    try:
        found = read_query(cond, _classifier(index).dictionary)
    except ConfigError:  # a model without an abnormality dictionary: every text condition is free text
        found = None
    if found is not None and found.finding in keys:
        return "key", found.finding, (f"read {cond!r} as {found.read_as!r} ({found.finding})" if found.corrected
                                      else None)
    return "text", None, None


def cohort(index: "ArchiveIndex", all_of: Sequence[str] = (), any_of: Sequence[str] = (),
           none_of: Sequence[str] = (), where: Optional[Mapping[str, Any]] = None, threshold: float = 0.5,
           level: str = "patient") -> CohortResult:
    """Patients (or studies) whose organs meet finding conditions, from stored scores.

    A unit *has* a condition when one of its organs (within ``where``) scores at least ``threshold``. Members
    have every ``all_of``, at least one ``any_of`` (when given) and no ``none_of``. An organ the finding applies
    to but that was never scored for it (ingested after the last ``score()``) is unknown: its unit cannot be a
    member through ``none_of`` (a note says how many; run ``score()``). A condition is a dictionary key
    (``"liver_cyst"``; a key-shaped word that is not one is a QueryError with suggestions), a text that asks for
    one key as search reads it (``"gallstones"``, ``"suspected HCC"``, ``"cholelithasis"``), or free text, scored
    on the fly against every organ vector with the index's text encoder (not stored; a note gives the share of
    organs it matches). ``result.notes`` says how each condition was read.

    Example:
        >>> idx.score()                                                                        # doctest: +SKIP
        >>> idx.cohort(all_of=["renal_cyst"], none_of=["hydronephrosis"], where={"age": (50, None)}).ids  # doctest: +SKIP
    """
    if level not in ("patient", "study"):
        raise QueryError(f"level must be 'patient' or 'study', got {level!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= float(threshold) <= 1.0:
        raise QueryError(f"threshold must be a number in [0, 1], got {threshold!r}")
    groups = {"all_of": text_list(all_of, "all_of"), "any_of": text_list(any_of, "any_of"),
              "none_of": text_list(none_of, "none_of")}
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
    unknown_of: Dict[str, Set[int]] = {}  # units with an organ the finding applies to but no score for it
    notes: List[str] = []
    for cond in dict.fromkeys(c.strip() for cs in groups.values() for c in cs):
        kind, key, note = _condition_key(index, cond, known)
        if note:
            notes.append(note)
        if kind == "key":
            q = (select(unit_col.label("unit"), o.c.id, st.c.probability).select_from(st.join(o, o.c.id == st.c.organ_id))
                 .where(and_(st.c.finding == key, st.c.probability >= float(threshold))))
            hits: Dict[int, float] = {}
            for r in index.store.read(lambda c: c.execute(q).all()):
                if allowed_set is None or r.id in allowed_set:
                    hits[r.unit] = max(hits.get(r.unit, 0.0), float(r.probability))
            missing = _unscored(index, str(key), allowed)
            if missing.size:
                unknown_of[cond] = set(_units_of(index, missing, level).values())
                notes.append(f"{missing.size} organ(s) that {key} applies to have no score for it (ingested since "
                             f"the last score()?): their {'patients' if level == 'patient' else 'studies'} cannot count "
                             "as without it; run score()")
        else:
            hits, share = _free_text_units(index, cond, level, allowed, float(threshold))
            notes.append(f"{cond!r} names no dictionary finding: scored as free text against every organ "
                         f"({share:.0%} of the organs in scope reach the threshold)")
        units_of[cond] = hits
    for note in notes:
        log.warning("cohort: %s", note)
    base_q = _filter_select(index, unit_col, None, conditions).distinct()
    base = set(index.store.read(lambda c: c.execute(base_q).scalars().all()))
    members = set(base)
    for c in groups["all_of"]:
        members &= set(units_of[c.strip()])
    if groups["any_of"]:
        members &= set().union(*(set(units_of[c.strip()]) for c in groups["any_of"]))
    for c in groups["none_of"]:
        members -= set(units_of[c.strip()]) | unknown_of.get(c.strip(), set())
    return CohortResult(level, _describe_units(index, sorted(members), level, groups, units_of),
                        {**groups, "threshold": threshold, "where": dict(where or {})}, notes=notes)


def _unscored(index: "ArchiveIndex", key: str, allowed: Optional[np.ndarray]) -> np.ndarray:
    """Ids of organs (within ``allowed``) whose class the dictionary finding ``key`` applies to, with no score
    for it; empty for keys outside the dictionary (user prompts say their own organs)."""
    from .queries import _finding_keys  # noqa: PLC0415

    zs = _classifier(index)
    try:
        if key not in zs.dictionary:
            return np.zeros(0, np.int64)
    except ConfigError:
        return np.zeros(0, np.int64)
    view = index.mirror.view()
    if not view.n:
        return np.zeros(0, np.int64)
    classes = [i for i, name in enumerate(view.organ_names) if key in _finding_keys(zs.dictionary, name)]
    ids = view.ids[np.isin(view.organ, classes)]
    if allowed is not None:
        ids = ids[np.isin(ids, allowed)]
    st = index.store.t.scores
    scored = np.asarray(index.store.read(lambda c: c.execute(
        select(st.c.organ_id).where(st.c.finding == key)).scalars().all()), np.int64)
    return np.setdiff1d(ids, scored)


def _units_of(index: "ArchiveIndex", ids: np.ndarray, level: str) -> Dict[int, int]:
    """{organ id: patient or study id} for organ ids, read in chunks of 900 (SQLite's bound-parameter limit)."""
    o = index.store.t.organs
    col = o.c.patient_id if level == "patient" else o.c.study_id
    out: Dict[int, int] = {}
    for start in range(0, ids.size, 900):
        part = ids[start:start + 900].tolist()
        for r in index.store.read(lambda c: c.execute(select(o.c.id, col.label("unit")).where(o.c.id.in_(part))).all()):
            out[int(r.id)] = int(r.unit)
    return out


def _free_text_units(index: "ArchiveIndex", text: str, level: str, allowed: Optional[np.ndarray],
                     threshold: float) -> Tuple[Dict[int, float], float]:
    """Units with an organ whose free-text probability reaches ``threshold``, and the share of organs in scope
    that do (near 1 means the text separates nothing)."""
    view = index.mirror.view()
    pos, neg, _ = _prompt_spec(text, text)
    probs = _prompt_probabilities(index, view.vecs, pos, neg) if view.n else np.zeros(0, np.float32)
    scope = np.isin(view.ids, allowed) if allowed is not None else np.ones(view.n, bool)
    sel = (probs >= threshold) & scope
    share = float(sel.sum()) / max(int(scope.sum()), 1)
    ids = view.ids[sel]
    if ids.size == 0:
        return {}, share
    best = dict(zip(ids.tolist(), probs[sel].tolist()))
    out: Dict[int, float] = {}
    for organ_id, unit in _units_of(index, ids, level).items():
        out[unit] = max(out.get(unit, 0.0), best[organ_id])
    return out, share


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
