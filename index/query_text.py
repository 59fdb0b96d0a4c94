"""Search texts to query vectors: a finding's zero-shot margin, its reverse for a negated finding, else cosine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Tuple, Union

import numpy as np

from ctglip_sdk.errors import QueryError
from ctglip_sdk.organs import display_name
from ctglip_sdk.organs_v2_words import v2_named_in

from .nlq import MAX_QUERY_CHARS
from .vectors import unit_rows

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

__all__: list = []  # internal to queries

_COSINE_NOTE = "ranked by cosine similarity to the text (scores are not comparable across queries)"


def _encode_single(model: Any, text: str) -> np.ndarray:
    """Encode one query sentence with one torch thread.

    For a single short sentence a 2-thread team costs more in synchronisation than it gains (bench_score:
    74.6 ms p50 with 2 threads vs 12.9 ms with 1). The setting is process-wide, so it is restored at once.
    """
    import torch  # noqa: PLC0415 - already loaded by the model

    n = torch.get_num_threads()
    if n == 1:
        return model.encode_text([text])
    torch.set_num_threads(1)
    try:
        return model.encode_text([text])
    finally:
        torch.set_num_threads(n)


class _QueryVector(NamedTuple):
    """A unit query vector and how it ranks.

    ``ranking`` is ``"cosine"``, ``"finding:<key>"`` (the finding's margin) or ``"absent:<key>"`` (the margin
    reversed: the organs most confidently without it). ``organ`` is the organ (or group) a finding ranking is
    bound to; ``read_as`` the text as read when a typo was corrected. For cosine, ``scope`` holds the organs the
    text names (a search stays on them unless ``organ=`` says otherwise), and ``notes`` say how it was read.
    """

    vector: np.ndarray
    ranking: str
    organ: Optional[str] = None
    read_as: Optional[str] = None
    scope: Tuple[str, ...] = ()
    notes: Tuple[str, ...] = ()


def _margin(index: "ArchiveIndex", key: str, text: str) -> Optional[np.ndarray]:
    """The unit zero-shot direction ``p̄ − n̄`` of finding ``key``, with the user's own words among the positives
    (so their phrasing still counts); None when it is degenerate."""
    from .scoring import _classifier  # noqa: PLC0415 - one classifier per index, kept by scoring

    zs = _classifier(index)
    pos, neg = zs.finding_prompts(key)
    p, n = zs.prompt_ensembles([[*pos, text], neg])
    d = p - n
    if not np.all(np.isfinite(d)) or float(np.linalg.norm(d)) < 1e-6:
        return None
    return unit_rows(d[None, :].astype(np.float32))[0]


def _from_text(index: "ArchiveIndex", text: str) -> _QueryVector:
    """How ``rank="auto"`` searches a text (see ``search``); read by ``reports.query.explain_query``.

    Why each branch: every kidney is close to "kidney stone" (the organ words dominate the cosine), so a finding
    is ranked by its margin, the quantity ``ZeroShotClassifier.detect`` thresholds. "no gallstones" asks for
    gallbladders without stones: the margin reversed. A text that names organs but no single finding ("spot on
    the liver", "normal liver", "hepatomegaly and splenomegaly") is ranked by cosine on those organs, since over
    every organ ribs and muscles outscored the organ the text named.
    """
    from ctglip_sdk.reports.query import explain_query  # noqa: PLC0415

    from .scoring import _classifier  # noqa: PLC0415

    v2, rest = v2_named_in(text)
    reading = explain_query(text, _classifier(index).dictionary)
    found = reading.finding or reading.negated
    v2_notes: Tuple[str, ...] = ()
    if v2 and found is None:
        # A finding read from the text wins ("liver metastases from thyroid cancer" is a liver mass search); else
        # the v2 class is what is searched, unless the index has none of it and the text names v1 organs too
        # ("pulmonary vein stenosis" in an index of v1 masks stays within the lungs, as before).
        stored = set(index.mirror.view().organ_names)
        if set(v2) & stored or not reading.organs:
            return _v2_organs(index, text, v2, rest)
        v2_notes = (f"no organ of this index is named {', '.join(v2)} (TotalSegmentator 2); searched within the "
                    "organs the text also names",)
    if found is not None:
        d = _margin(index, found.finding, found.read_as)
        if d is not None:
            absent = reading.finding is None
            notes = []
            if reading.ignored:
                notes.append(f"searched for {found.finding} only; the text also names {', '.join(reading.ignored)} "
                             "(search one finding at a time, or combine them with cohort(all_of=[...]))")
            if absent:
                notes.append(f"read as organs without {found.finding}: ranked by the lowest {found.finding} margin")
            if reading.excluded:
                notes.append(f"the text also says no {', '.join(reading.excluded)}: search does not exclude it "
                             "(ranked by the first finding only); cohort(none_of=[...]) does")
            return _QueryVector(-d if absent else d, f"{'absent' if absent else 'finding'}:{found.finding}",
                                found.organ, found.read_as if found.corrected else None, notes=tuple(notes))
    vector = unit_rows(np.asarray(_encode_single(index.model, text), np.float32))[0]
    if reading.candidates:
        why = f"may mean {' or '.join(reading.candidates)}; no single finding, so"
    elif reading.several:
        why = (f"names several findings ({', '.join(reading.several)}); search one at a time, or combine them with "
               "cohort(all_of=[...]);")
    elif reading.excluded:
        why = (f"denies several findings ({', '.join(reading.excluded)}); search them one at a time (\"no X\"), or "
               "use cohort(none_of=[...]);")
    else:
        why = "no single dictionary finding recognised;"
    # the organs searched are added to this note by search(), which knows whether organ= overrides these
    return _QueryVector(vector, "cosine", scope=reading.organs, notes=(f"{why} {_COSINE_NOTE}", *v2_notes))


def _v2_organs(index: "ArchiveIndex", text: str, v2: Tuple[str, ...], rest: str) -> _QueryVector:
    """Cosine within the TotalSegmentator 2 classes ``text`` names ("thyroid nodule", "SVC thrombus").

    The dictionary has no finding on them, so a finding read from the other words would bind the search to the
    wrong organ ("nodule" -> the lung lobes): only the v1 organs those words name join the scope.
    """
    from ctglip_sdk.reports.query import explain_query  # noqa: PLC0415

    from .scoring import _classifier  # noqa: PLC0415

    also = explain_query(rest, _classifier(index).dictionary).organs if rest.strip() else ()
    scope = tuple(dict.fromkeys((*v2, *also)))
    vector = unit_rows(np.asarray(_encode_single(index.model, text), np.float32))[0]
    names = ", ".join(display_name(o) for o in v2)
    note = (f"{names}: TotalSegmentator 2 class{'es' if len(v2) > 1 else ''} with no dictionary finding; "
            f"{_COSINE_NOTE}")
    return _QueryVector(vector, "cosine", scope=scope, notes=(note,))


def _query_vector(index: "ArchiveIndex", query: Union[str, np.ndarray], rank: str = "cosine") -> _QueryVector:
    """The unit query vector and how it ranks (``_from_text`` for texts with ``rank="auto"``); text vectors are
    cached per (rank, text)."""
    if isinstance(query, str):
        text = query.strip()
        if not text:
            raise QueryError("empty query text")
        if len(text) > MAX_QUERY_CHARS:
            # A service passing user text on: the text tower reads its first max_length tokens anyway, and the
            # reading of a pasted document costs seconds per 100 kB.
            raise QueryError(f"query text of {len(text):,} characters: search takes at most {MAX_QUERY_CHARS:,} "
                             "(a few words or sentences: the text tower reads only its first max_length tokens)")
        key = (rank, text)
        with index._cache_lock:
            cached = index._text_cache.get(key)
        if cached is None:
            if rank == "auto":
                cached = _from_text(index, text)
            else:
                cached = _QueryVector(unit_rows(np.asarray(_encode_single(index.model, text), np.float32))[0],
                                      "cosine")
            with index._cache_lock:
                index._text_cache[key] = cached
                while len(index._text_cache) > 512:
                    index._text_cache.popitem(last=False)
        return cached
    try:
        q = np.asarray(query, dtype=np.float32)
    except (TypeError, ValueError):
        raise QueryError(f"a query is a text or a vector of the index's dimension, got {type(query).__name__}") from None
    if q.ndim == 2 and q.shape[0] == 1:
        q = q[0]
    if q.shape != (index.dim,) or not np.all(np.isfinite(q)) or not np.any(q):
        raise QueryError(f"a query vector must be finite, non-zero and of shape ({index.dim},), got {q.shape}")
    return _QueryVector(unit_rows(q[None, :])[0], "cosine")
