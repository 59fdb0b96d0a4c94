"""Cohorts from stored scores: patients or studies meeting all_of / any_of / none_of finding conditions."""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
from sqlalchemy import and_, select

from ctglip_sdk.errors import ConfigError, QueryError

from .export import shown_study_column
from .filters import parse_where, resolve_patients, text_list
from .queries import _filter_select, _filtered_ids
from .scoring import PROMPT_PREFIX, _classifier, _prompt_probabilities, _prompt_spec, prompt_scope
from .results import CohortResult

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

__all__ = ["cohort"]

log = logging.getLogger(__name__)


# "renal_stones", or a namespaced key such as "clf:nodule" (prompt keys, any text after "prompt:", are told apart
# by their prefix in _read_condition).
_KEY_LIKE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)+$|^[a-z][a-z0-9_]*:\S+$")


@dataclass
class _Part:
    """One condition as the cohort applies it: a stored finding key or free text, in its group, within the
    filters the condition's own words carry ("... in women over 60")."""

    group: str
    name: str  # what evidence is reported under: the finding key (with the part's own filters), or the free text
    kind: str  # "key" or "text"
    key: Optional[str]
    text: str
    where: Dict[str, Any] = field(default_factory=dict)


_FLIP = {"all_of": "none_of", "none_of": "all_of"}


def _read_condition(index: "ArchiveIndex", cond: str, group: str, keys: Set[str], notes: List[str]) -> List[_Part]:
    """How one condition is applied: a dictionary or stored key; a text that asks for findings as search reads it
    (case, hedges, typos; several findings split into one part each, "no X" moved to the other group); or free
    text. Demographic and date words in the text become that condition's own filters.

    A condition shaped like a key ("renal_stones", "prompt:calcs") that is not one is a QueryError with
    suggestions: read as free text it matched nearly every organ, so a typo in none_of emptied the cohort and one
    in all_of kept everyone.
    """
    if cond in keys:
        return [_Part(group, cond, "key", cond, cond)]
    if cond.lower().startswith(PROMPT_PREFIX):
        raise _unknown_prompt(cond, keys)
    if _KEY_LIKE.match(cond):
        close = difflib.get_close_matches(cond, sorted(keys), n=3, cutoff=0.6)
        raise QueryError(f"unknown finding key {cond!r}" + (f"; did you mean {', '.join(close)}?" if close else
                                                             f"; known: {', '.join(sorted(keys))}"))
    from ctglip_sdk.reports.query import explain_query  # noqa: PLC0415

    from .nlq import parse_query  # noqa: PLC0415

    try:
        parsed = parse_query(cond, infer_organ=False)
    except QueryError:
        raise QueryError(f"{group} condition {cond!r} names only filters; pass them as where=") from None
    own = dict(parsed.where)
    notes.extend(f"{cond!r}: {n}" for n in parsed.notes)
    if own:
        notes.append(f"read {cond!r} as {parsed.text!r} within " + ", ".join(_shown(k, v) for k, v in own.items()))
    try:
        reading = explain_query(parsed.text, _classifier(index).dictionary)
    except ConfigError:  # a model without an abnormality dictionary: every text condition is free text
        return [_Part(group, cond, "text", None, parsed.text if own else cond, own)]
    parts: List[_Part] = []
    found = reading.finding
    if found is not None and found.finding in keys:
        parts.append(_Part(group, _label(found.finding, own), "key", found.finding, parsed.text, own))
        if found.corrected:
            notes.append(f"read {cond!r} as {found.read_as!r} ({found.finding})")
    elif reading.negated is not None and reading.negated.finding in keys:
        if group not in _FLIP:
            raise QueryError(f"any_of condition {cond!r} denies a finding; put {reading.negated.finding!r} in none_of")
        parts.append(_Part(_FLIP[group], _label(reading.negated.finding, own), "key", reading.negated.finding,
                           parsed.text, own))
        notes.append(f"read {cond!r} in {group} as {_FLIP[group]} {reading.negated.finding}")
    elif reading.several and all(k in keys for k in reading.several):
        parts.extend(_Part(group, _label(k, own), "key", k, parsed.text, own) for k in reading.several)
        notes.append(f"read {cond!r} as {len(reading.several)} {group} conditions: {', '.join(reading.several)}")
    elif reading.excluded and group == "all_of":
        pass  # "no kidney stones or hydronephrosis": only what it denies, below
    elif reading.excluded:
        raise QueryError(f"{group} condition {cond!r} denies several findings; list them in none_of instead")
    else:  # free text: as written, unless filter words were taken out of it
        return [_Part(group, cond, "text", None, parsed.text if own else cond, own)]
    extra = [k for k in reading.excluded if k in keys]
    if extra:
        if group not in _FLIP:
            raise QueryError(f"any_of condition {cond!r} also denies {', '.join(extra)}; put it in none_of")
        parts.extend(_Part(_FLIP[group], _label(k, own), "key", k, parsed.text, own) for k in extra)
        notes.append(f"read 'no {', '.join(extra)}' in {cond!r} as {_FLIP[group]} {', '.join(extra)}")
    return parts


def _unknown_prompt(cond: str, keys: Set[str]) -> QueryError:
    """The error for a ``prompt:`` condition that is not stored: a typo, or a prompt not scored yet."""
    name = cond[len(PROMPT_PREFIX):]
    stored = sorted(k for k in keys if k.startswith(PROMPT_PREFIX))
    if not stored:
        return QueryError(f"unknown finding key {cond!r}: no prompt finding is stored; score it first with "
                          f"score(prompts={{{name!r}: TEXT}}) or ctglip score --prompt {name}=TEXT")
    # compared without the shared prefix, which would make every stored prompt look close
    close = difflib.get_close_matches(name, [k[len(PROMPT_PREFIX):] for k in stored], n=3, cutoff=0.6)
    if close:
        return QueryError(f"unknown finding key {cond!r}; did you mean {', '.join(PROMPT_PREFIX + c for c in close)}?")
    return QueryError(f"unknown finding key {cond!r}; stored prompt findings: {', '.join(stored)} (a new prompt is "
                      "scored with score(prompts=...) first)")


def _label(key: str, own: Mapping[str, Any]) -> str:
    """What a key part's evidence is reported under: the finding it holds, with the condition's own filters
    ("no hydronephrosis" in none_of holds P(hydronephrosis) and was shown as 'no hydronephrosis')."""
    return f"{key} ({', '.join(_shown(k, v) for k, v in own.items())})" if own else key


def _shown(key: str, value: Any) -> str:
    """One filter as a reader writes it: ``age>=60``, ``study_date 2021-01-01..2021-12-31``, ``sex=F``."""
    if isinstance(value, tuple):
        lo, hi = value
        if lo is not None and hi is not None:
            return f"{key} {lo}..{hi}"
        return f"{key}>={lo}" if lo is not None else f"{key}<={hi}"
    return f"{key}={value}"


def cohort(index: "ArchiveIndex", all_of: Sequence[str] = (), any_of: Sequence[str] = (),
           none_of: Sequence[str] = (), where: Optional[Mapping[str, Any]] = None, threshold: float = 0.5,
           level: str = "patient") -> CohortResult:
    """Patients (or studies) whose organs meet finding conditions, from stored scores.

    A unit *has* a condition when one of its organs (within ``where``) scores at least ``threshold``. Members
    have every ``all_of``, at least one ``any_of`` (when given) and no ``none_of``. An organ the finding applies
    to but that was never scored for it (ingested after the last ``score()``) is unknown: its unit cannot be a
    member through ``none_of`` (a note says how many; run ``score()``). A prompt finding (``"prompt:calc"``)
    applies to the organs its last ``score(prompts=...)`` named (every organ when it named none). A condition is a
    stored key (``"liver_cyst"``, ``"prompt:calc"``; a key-shaped word or ``prompt:`` name that is not one is a
    QueryError with suggestions), a text that asks for
    findings as search reads it (``"gallstones"``, ``"suspected HCC"``, ``"cholelithasis"``), or free text, scored
    on the fly against every organ vector with the index's text encoder (not stored; a note gives the share of
    organs it matches). A text that names several findings is one condition per finding ("gallstones and fatty
    liver" in all_of: both); one that denies a finding moves it to the other group ("no hydronephrosis" in
    all_of is none_of hydronephrosis; "fatty liver, no gallstones" is both); sex, age and date words in a text
    are that condition's own filters, on top of ``where`` ("enlarged spleen in women over 60": an enlarged
    spleen in a study of a woman aged 60 or more). ``result.notes`` says how each condition was read; evidence is
    reported under the finding key a condition was read as (``"hepatic_steatosis"`` for "fatty liver, no
    gallstones"; ``"hepatic_steatosis (age>=60)"`` with the condition's own filters), free text under its text.

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
    conditions = resolve_patients(index, parse_where(where))
    index._maybe_refresh()
    t = index.store.t
    o = t.organs
    unit_col = o.c.patient_id if level == "patient" else o.c.study_id
    st = index.store.t.scores
    stored: Set[str] = set(index.store.read(lambda c: c.execute(select(st.c.finding).distinct()).scalars().all()))
    known = set(stored)
    try:
        known |= set(_classifier(index).dictionary.keys())
    except ConfigError:
        pass
    notes: List[str] = []
    parts: List[_Part] = []
    for group, conds in groups.items():
        for cond in dict.fromkeys(c.strip() for c in conds):
            parts.extend(_read_condition(index, cond, group, known, notes))
    allowed_of: Dict[Tuple[Tuple[str, Any], ...], Optional[np.ndarray]] = {}

    def allowed_for(part: _Part) -> Optional[np.ndarray]:
        """Organ ids within ``where`` and the part's own filters (None: every organ)."""
        sig = tuple(sorted((k, repr(v)) for k, v in part.where.items()))
        if sig not in allowed_of:
            conds = conditions + parse_where(part.where)
            allowed_of[sig] = _filtered_ids(index, None, conds) if conds else None
        return allowed_of[sig]

    units_of: Dict[int, Dict[int, float]] = {}
    unknown_of: Dict[int, Set[int]] = {}  # units with an organ the finding applies to but no score for it
    for n, part in enumerate(parts):
        allowed = allowed_for(part)
        allowed_set = set(allowed.tolist()) if allowed is not None else None
        if part.kind == "key":
            q = (select(unit_col.label("unit"), o.c.id, st.c.probability).select_from(st.join(o, o.c.id == st.c.organ_id))
                 .where(and_(st.c.finding == part.key, st.c.probability >= float(threshold))))
            hits: Dict[int, float] = {}
            for r in index.store.read(lambda c: c.execute(q).all()):
                if allowed_set is None or r.id in allowed_set:
                    hits[r.unit] = max(hits.get(r.unit, 0.0), float(r.probability))
            missing = _unscored(index, str(part.key), allowed)
            if missing.size:
                unknown_of[n] = set(_units_of(index, missing, level).values())
                again = "score the prompt again (score(prompts=...))" if str(part.key).startswith(PROMPT_PREFIX) \
                    else "run score()"
                notes.append(f"{missing.size} organ(s) that {part.key} applies to have no score for it (ingested since "
                             f"the last score()?): their {'patients' if level == 'patient' else 'studies'} cannot count "
                             f"as without it; {again}")
        else:
            hits, share = _free_text_units(index, part.text, level, allowed, float(threshold))
            notes.append(f"{part.text!r} names no dictionary finding: scored as free text against every organ "
                         f"({share:.0%} of the organs in scope reach the threshold)")
        units_of[n] = hits
    for note in notes:
        log.warning("cohort: %s", note)
    base_q = _filter_select(index, unit_col, None, conditions).distinct()
    base = set(index.store.read(lambda c: c.execute(base_q).scalars().all()))
    members = set(base)
    for n, part in enumerate(parts):
        if part.group == "all_of":
            members &= set(units_of[n])
        elif part.group == "none_of":
            members -= set(units_of[n]) | unknown_of.get(n, set())
    anys = [set(units_of[n]) for n, part in enumerate(parts) if part.group == "any_of"]
    if anys:
        members &= set().union(*anys)
    shown = [(part.name, units_of[n]) for n, part in enumerate(parts) if part.group != "none_of"]
    return CohortResult(level, _describe_units(index, sorted(members), level, shown),
                        {**groups, "threshold": threshold, "where": dict(where or {})}, notes=notes,
                        scored=list(dict.fromkeys(name for name, _ in shown)))


def _unscored(index: "ArchiveIndex", key: str, allowed: Optional[np.ndarray]) -> np.ndarray:
    """Ids of organs (within ``allowed``) that the finding ``key`` applies to, with no score for it: a dictionary
    finding's organ classes, or a prompt's recorded organs (every organ when it named none); empty for other
    stored keys (``insert_scores`` says nothing of the organs it left out)."""
    view = index.mirror.view()
    if not view.n:
        return np.zeros(0, np.int64)
    st = index.store.t.scores

    def scored() -> np.ndarray:
        return np.asarray(index.store.read(lambda c: c.execute(
            select(st.c.organ_id).where(st.c.finding == key)).scalars().all()), np.int64)

    done: Optional[np.ndarray] = None
    if key.startswith(PROMPT_PREFIX):
        recorded, organs = prompt_scope(index, key)
        if recorded:
            classes = [i for i, name in enumerate(view.organ_names) if organs is None or name in organs]
        else:  # scored before scopes were recorded: the organ classes it holds scores for are its best guess
            done = scored()
            rows = view.rows_of(done)
            classes = np.unique(view.organ[rows[rows >= 0]]).tolist()
    else:
        classes = _dictionary_classes(index, key, view.organ_names)
    if not classes:
        return np.zeros(0, np.int64)
    ids = view.ids[np.isin(view.organ, classes)]
    if allowed is not None:
        ids = ids[np.isin(ids, allowed)]
    return np.setdiff1d(ids, scored() if done is None else done)


def _dictionary_classes(index: "ArchiveIndex", key: str, organ_names: Sequence[str]) -> List[int]:
    """Indices of the organ classes a dictionary finding applies to (none for keys outside the dictionary)."""
    from .scoring import _finding_keys  # noqa: PLC0415

    zs = _classifier(index)
    try:
        if key not in zs.dictionary:
            return []
    except ConfigError:
        return []
    return [i for i, name in enumerate(organ_names) if key in _finding_keys(zs.dictionary, name)]


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


def _describe_units(index: "ArchiveIndex", units: List[int], level: str,
                    shown: List[Tuple[str, Dict[int, float]]]) -> List[Dict[str, Any]]:
    if not units:
        return []
    t = index.store.t
    key_col = t.studies.c.patient_id if level == "patient" else t.studies.c.id
    # The study UID as every output shows it: a study named after its path-keyed series carried the PatientID of
    # folder names ("series:path:SYN7378319/ct.nii.gz") into cohort members, their CSV and CohortResult.ids.
    q = (select(key_col.label("unit"), shown_study_column(index), t.patients.c.pseudonym)
         .select_from(t.studies.join(t.patients, t.patients.c.id == t.studies.c.patient_id))
         .where(key_col.in_(units)).order_by(t.studies.c.study_uid))
    info: Dict[int, Dict[str, Any]] = {}
    for r in index.store.read(lambda c: c.execute(q).all()):
        m = info.setdefault(r.unit, {"patient": r.pseudonym, "studies": []})
        m["studies"].append(r.study_uid)
    out = []
    for u in units:
        m = dict(info.get(u, {"patient": None, "studies": []}))
        if level == "study":
            m["study_uid"] = m["studies"][0] if m["studies"] else None
        m["evidence"] = {name: round(hits[u], 4) for name, hits in shown if u in hits}
        out.append(m)
    out.sort(key=lambda m: (m["patient"] or "", m.get("study_uid") or ""))
    return out
