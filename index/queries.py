"""Index queries: text/vector search, similar organs, zero-shot scoring, cohorts and exports."""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from sqlalchemy import and_, bindparam, delete, select, true

from ctglip_sdk import organs as vocab
from ctglip_sdk.errors import ConfigError, QueryError

from .export import shown_series_columns
from .filters import Condition, needs_join, parse_where, resolve_patients, text_list, to_sql
from .nlq import unapplied_filters, where_exprs
from .query_text import _query_vector
from .results import Hit, SearchResults
from .vectors import unit_rows

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

__all__ = ["search", "similar", "score", "insert_scores", "resolve_organs"]

log = logging.getLogger(__name__)
_MAX_K = 10_000
#: Stored findings from ``score(prompts=...)`` are named ``prompt:<key>``.
PROMPT_PREFIX = "prompt:"
#: Column sizes of scores.finding and scores.model_hash (schema.py): checked up front, as SQLite would store a
#: longer value and PostgreSQL refuse it with a driver error.
MAX_FINDING, MAX_MODEL_HASH = 96, 64
_PROMPT_META = "prompt_spec:"  # + a digest of the finding: meta keys are 64 characters, findings up to 96
_SPEC_KEYS = ("positive", "negative", "organ")


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
def _classifier(index: "ArchiveIndex") -> Any:
    zs = getattr(index, "_zeroshot", None)
    if zs is None:
        import ctglip_sdk as cg  # noqa: PLC0415

        zs = cg.ZeroShotClassifier(index.model)
        index._zeroshot = zs  # type: ignore[attr-defined]
    return zs


def _prompt_spec(key: str, spec: Any) -> Tuple[List[str], List[str], Optional[List[str]]]:
    """(positives, negatives, organs) of a user prompt: a text, a list of texts, or a dict with those keys."""
    if isinstance(spec, str):
        spec = {"positive": [spec]}
    elif isinstance(spec, (list, tuple)):
        spec = {"positive": list(spec)}
    for name in spec if isinstance(spec, Mapping) else ():
        if name not in _SPEC_KEYS:  # an ignored 'organs' scored every organ instead of the one meant
            close = difflib.get_close_matches(str(name), _SPEC_KEYS, n=1, cutoff=0.6)
            raise QueryError(f"prompt {key!r}: unknown key {name!r}; " + (f"did you mean {close[0]!r}?" if close else
                             "a prompt spec takes " + ", ".join(map(repr, _SPEC_KEYS))))
    if not isinstance(spec, Mapping) or not spec.get("positive"):
        raise QueryError(f"prompt {key!r}: give a text, a list of texts, or {{'positive': [...], 'negative': [...], "
                         "'organ': ...}")
    pos = text_list(spec["positive"], f"prompt {key!r} positive")
    neg = text_list(spec.get("negative") or [f"no {p}" for p in pos] + ["normal appearance", "unremarkable"],
                    f"prompt {key!r} negative")
    return pos, neg, resolve_organs(spec.get("organ"))


def _prompt_probabilities(index: "ArchiveIndex", vecs: np.ndarray, pos: List[str], neg: List[str]) -> np.ndarray:
    """sigmoid(s · v·(p − n)): the same two-way softmax the classifier uses for dictionary findings."""
    zs = _classifier(index)
    p = unit_rows(zs.embed_prompts(pos).mean(0)[None, :])[0]
    n = unit_rows(zs.embed_prompts(neg).mean(0)[None, :])[0]
    scale = float(index.model.temperature_scale().detach().cpu())
    return (1.0 / (1.0 + np.exp(-scale * (vecs @ (p - n))))).astype(np.float32)


def _calibration_tag(model: Any) -> str:
    """``:c<8 hex>`` of the model's per-finding offsets ('' uncalibrated): a recalibrated model rescores."""
    cal = getattr(model, "calibration", None) or {}
    if not cal:
        return ""
    return ":c" + hashlib.sha256(repr(sorted(cal.items())).encode()).hexdigest()[:8]


def _write_scores(index: "ArchiveIndex", ids: np.ndarray, keys: Sequence[str], probs: np.ndarray, mh: str,
                  prelude: Optional[Callable[[Any], None]] = None) -> None:
    """Replace the scores of ``(ids[i], keys[i])`` in one transaction, after ``prelude(conn)`` in the same one."""
    t = index.store.t.scores
    rows = [{"organ_id": int(i), "finding": k, "probability": float(p), "model_hash": mh}
            for i, k, p in zip(ids.tolist(), keys, probs.tolist())]

    def tx(conn: Any) -> None:
        if prelude is not None:
            prelude(conn)
        # A first scoring of these findings has nothing to replace: skip the DELETEs (half the write time).
        has_any = conn.execute(select(t.c.organ_id).where(t.c.finding.in_(sorted(set(keys)))).limit(1)).first()
        for k in (sorted(set(keys)) if has_any else ()):
            sel = [int(i) for i, kk in zip(ids.tolist(), keys) if kk == k]
            for start in range(0, len(sel), 900):  # SQLite caps bound parameters per statement
                conn.execute(delete(t).where(and_(t.c.finding == k, t.c.organ_id.in_(sel[start:start + 900]))))
        conn.execute(t.insert(), rows)
    if rows:
        index.store.write(tx)


def insert_scores(index: "ArchiveIndex", rows: Sequence[Tuple[int, str, float]], model_hash: Optional[str] = None) -> int:
    """Store ``(crop_id, finding, probability)`` rows from any classifier (replacing earlier values).

    A ``(crop_id, finding)`` pair given twice in one call is a QueryError naming it; nothing is written.

    Example:
        >>> idx.insert_scores([(12, "liver_cyst", 0.93)], model_hash="my-classifier-v2")  # doctest: +SKIP
        1
    """
    if not rows:
        return 0
    try:
        # an id that drifted through a float column must be whole: int(90.7) stored a score on crop 90
        if any(isinstance(r[0], bool) or not float(r[0]).is_integer() for r in rows):
            raise ValueError
        ids = np.asarray([int(r[0]) for r in rows], np.int64)
        probs = np.asarray([float(r[2]) for r in rows], np.float32)
        names = [r[1] for r in rows]
    except (TypeError, ValueError, IndexError, OverflowError):
        raise QueryError("rows must be (crop_id: int, finding: str, probability: float) tuples") from None
    if not all(isinstance(f, str) and f.strip() for f in names):
        raise QueryError("every row needs a finding name (a non-empty string)")
    long = next((f for f in names if len(f.strip()) > MAX_FINDING), None)
    if long is not None:
        raise QueryError(f"finding name {long.strip()[:40]!r}... is too long: at most {MAX_FINDING} characters")
    if model_hash is not None and (not isinstance(model_hash, str) or len(model_hash) > MAX_MODEL_HASH):
        raise QueryError(f"model_hash must be a string of at most {MAX_MODEL_HASH} characters")
    if not np.all((probs >= 0) & (probs <= 1)):  # NaN fails this too
        raise QueryError("probabilities must lie in [0, 1]")
    # One score per (crop, finding): which of two values is meant cannot be guessed (it used to fail in SQL).
    twice = [(pair, n) for pair, n in Counter(zip(ids.tolist(), (f.strip() for f in names))).items() if n > 1]
    if twice:
        shown = "; ".join(f"({i}, {f!r}) is given {n} times" for (i, f), n in twice[:3])
        raise QueryError(f"rows hold one probability per (crop_id, finding): {shown}" +
                         (f" (and {len(twice) - 3} more pairs)" if len(twice) > 3 else ""))
    view = index.mirror.view()
    if np.any(view.rows_of(ids) < 0):
        index._maybe_refresh(force=True)
        bad = ids[index.mirror.view().rows_of(ids) < 0]
        if bad.size:
            raise QueryError(f"crop id(s) {bad[:5].tolist()} are not in this index")
    with index.writer_lock:
        _write_scores(index, ids, [f.strip() for f in names], probs, model_hash or "user")
    return len(rows)


def score(index: "ArchiveIndex", findings: Optional[Sequence[str]] = None, prompts: Optional[Mapping[str, Any]] = None,
          batch_size: int = 4096) -> Dict[str, Any]:
    """Zero-shot probabilities for every stored organ and every applicable finding, stored in SQL.

    Incremental: a pair (organ, finding) already scored with the same model, dictionary version (or prompt
    texts) is not scored again, so a second call after ingesting new studies scores only their organs.

    Args:
        findings: dictionary keys (default: every key); each applies to the organs the dictionary says.
        prompts: extra findings from your own texts, ``{"key": "text" | [texts] | {"positive": [...],
            "negative": [...], "organ": "liver"}}``; stored as ``prompt:<key>`` (all organs unless ``organ``;
            another spec key is a QueryError). Scoring a key again with another definition drops the old
            definition's scores; the organs it applies to are recorded for ``cohort``.
        batch_size: organs scored per batch (and per SQL transaction); an integer >= 1 (ConfigError).

    Returns:
        ``{"scored": pairs written, "organs": organs touched, "findings": keys, "seconds": ...}``

    Example:
        >>> idx.score(findings=["liver_cyst", "renal_cyst"])  # doctest: +SKIP
        {'scored': 3120, 'organs': 2080, 'findings': ['liver_cyst', 'renal_cyst'], 'seconds': 0.4}
    """
    t0 = time.perf_counter()
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    zs = _classifier(index)
    keys = list(dict.fromkeys(text_list(findings, "findings"))) if findings is not None else None
    if prompts is not None and (not isinstance(prompts, Mapping) or
                                not all(isinstance(k, str) and k.strip() for k in prompts)):
        raise QueryError("prompts: expected {key: text | [texts] | {'positive': [...], ...}} with non-empty keys")
    long = [k for k in (prompts or {}) if len(PROMPT_PREFIX + k) > MAX_FINDING]
    if long:
        raise QueryError(f"prompt name {long[0][:40]!r}... is too long: at most {MAX_FINDING - len(PROMPT_PREFIX)} "
                         "characters")
    version = "0"
    if keys is None or keys:  # prompts alone do not need the abnormality dictionary
        d = zs.dictionary
        keys = sorted(d.keys()) if keys is None else keys
        unknown = [k for k in keys if k not in d]
        if unknown:
            raise QueryError(f"unknown finding(s) {unknown}; known: {', '.join(sorted(d.keys()))}")
        version = str(getattr(d, "version", "0"))
    specs = {f"prompt:{k}": _prompt_spec(k, v) for k, v in (prompts or {}).items()}
    if not keys and not specs:
        raise QueryError("nothing to score: pass findings (dictionary keys) and/or prompts")
    dict_hash = f"{index.model_hash}:{version}{_calibration_tag(index.model)}"
    st = index.store.t.scores
    scored, touched = 0, set()
    with index.writer_lock:
        if index._data_version != index.store.data_version():
            index._load_state()  # another process ingested since this object last looked
        view = index.mirror.view()
        names = np.asarray(view.organ_names, dtype=object)[view.organ] if view.n else np.zeros(0, object)
        hashes = [dict_hash] + [_spec_hash(index, s) for s in specs.values()]
        have_q = select(st.c.organ_id, st.c.finding).where(and_(st.c.model_hash.in_(hashes),
                                                                st.c.finding.in_(keys + sorted(specs))))
        have = index.store.read(lambda c: {(int(r.organ_id), r.finding) for r in c.execute(have_q)})
        wanted = set(keys)
        applicable = {o: [k for k in _finding_keys(zs.dictionary, o) if k in wanted]
                      for o in set(names.tolist())} if keys else {}
        todo = [r for r in range(view.n)
                if any((int(view.ids[r]), k) not in have for k in applicable.get(names[r], ()))]
        for start in range(0, len(todo), batch_size):
            rows = np.asarray(todo[start:start + batch_size], np.int64)
            r, ks, p = zs.detect_arrays(names[rows].tolist(), view.vecs[rows], keys)
            ids = view.ids[rows][r]
            keep = np.asarray([(int(i), k) not in have for i, k in zip(ids.tolist(), ks)], bool)
            if keep.any():
                _write_scores(index, ids[keep], [k for k, m in zip(ks, keep) if m], p[keep], dict_hash)
                scored += int(keep.sum())
                touched.update(ids[keep].tolist())
        for key, spec in specs.items():
            mh = _spec_hash(index, spec)
            pos, neg, organs = spec
            rows = np.arange(view.n) if organs is None else np.flatnonzero(np.isin(names, organs))
            rows = np.asarray([r for r in rows if (int(view.ids[r]), key) not in have], np.int64)
            define = _define_prompt(index, key, spec, mh)
            if rows.size == 0:  # nothing to score, but an old definition may still need replacing
                index.store.write(define)
            for start in range(0, rows.size, batch_size):
                part = rows[start:start + batch_size]
                probs = _prompt_probabilities(index, view.vecs[part], pos, neg)
                _write_scores(index, view.ids[part], [key] * part.size, probs, mh,
                              prelude=define if start == 0 else None)
                scored += int(part.size)
                touched.update(view.ids[part].tolist())
    out = {"scored": scored, "organs": len(touched), "findings": keys + sorted(specs),
           "model_hash": dict_hash, "seconds": round(time.perf_counter() - t0, 3)}
    log.info("scored %d (organ, finding) pairs over %d organs", scored, len(touched))
    return out


def _finding_keys(dictionary: Any, organ: str) -> List[str]:
    """Dictionary keys that apply to a v1 organ class (none for organs the dictionary does not cover)."""
    try:
        return [e.key for e in dictionary.for_organ(organ)]
    except (KeyError, QueryError):
        return []


def _spec_hash(index: "ArchiveIndex", spec: Tuple[List[str], List[str], Optional[List[str]]]) -> str:
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    return f"{index.model_hash}:p{digest}"


def _prompt_meta_key(finding: str) -> str:
    return _PROMPT_META + hashlib.sha1(finding.encode()).hexdigest()


def _define_prompt(index: "ArchiveIndex", key: str, spec: Tuple[List[str], List[str], Optional[List[str]]],
                   mh: str) -> Callable[[Any], None]:
    """A transaction step making ``spec`` the definition of the prompt finding ``key``: rows of another definition
    go (a redefined key kept the old organs' scores under the new name), and the spec is recorded in the meta
    table so that ``cohort`` knows which organs the prompt applies to."""
    t = index.store.t.scores
    pos, neg, organs = spec
    value = json.dumps({"finding": key, "model_hash": mh, "positive": pos, "negative": neg, "organs": organs},
                       sort_keys=True)

    def step(conn: Any) -> None:
        gone = conn.execute(delete(t).where(and_(t.c.finding == key, t.c.model_hash != mh))).rowcount
        if gone:
            log.info("%s: dropped %d score(s) of its previous definition", key, gone)
        index.store.set_meta(conn, _prompt_meta_key(key), value)
    return step


def prompt_scope(index: "ArchiveIndex", finding: str) -> Tuple[bool, Optional[List[str]]]:
    """``(recorded, organs)`` of a stored prompt finding: the organ classes its last ``score(prompts=...)`` applied
    it to (None: every organ); ``recorded`` is False for prompts scored before scopes were recorded."""
    raw = index.store.get_meta(_prompt_meta_key(finding))
    try:
        organs = json.loads(raw)["organs"] if raw is not None else None
    except (ValueError, TypeError, KeyError):
        return False, None
    if raw is None or not (organs is None or isinstance(organs, list)):
        return False, None
    return True, organs
