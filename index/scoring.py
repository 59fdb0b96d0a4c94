"""Zero-shot scores of stored organs: score() (incremental, dictionary findings and prompts), insert_scores()."""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from sqlalchemy import and_, delete, select

from ctglip_sdk.errors import ConfigError, QueryError

from .filters import text_list
from .queries import resolve_organs
from .vectors import unit_rows

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

__all__ = ["score", "insert_scores", "prompt_scope", "PROMPT_PREFIX"]

log = logging.getLogger(__name__)

#: Stored findings from ``score(prompts=...)`` are named ``prompt:<key>``.
PROMPT_PREFIX = "prompt:"
#: Column sizes of scores.finding and scores.model_hash (schema.py): checked up front, as SQLite would store a
#: longer value and PostgreSQL refuse it with a driver error.
MAX_FINDING, MAX_MODEL_HASH = 96, 64
_PROMPT_META = "prompt_spec:"  # + a digest of the finding: meta keys are 64 characters, findings up to 96
_SPEC_KEYS = ("positive", "negative", "organ")


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
