"""read_query: the one dictionary finding a short search text asks for, tolerant of case, hedges and typos."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Tuple

from ctglip_sdk.reports.dictionary import AbnormalityDictionary
from ctglip_sdk.reports.parser import parse_report
from ctglip_sdk.reports.types import Status
from ctglip_sdk.reports.vocab import vocab_for

__all__ = ["QueryFinding", "read_query"]

# A misspelt word is corrected only to a dictionary word this similar (difflib ratio). 0.88 takes
# "cholelithasis" -> "cholelithiasis" (0.96) and "effussion" -> "effusion" (0.94), and leaves apart words that
# merely share a suffix: "appendicitis"/"pancreatitis" 0.50, "transplant"/"transplantation" 0.80.
_CUTOFF = 0.88
_MIN_LEN = 6  # short words are too easily one edit from another word ("mass"/"mast", "cyst"/"cast")
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class QueryFinding:
    """What :func:`read_query` understood: a finding key, the organ the text ties it to, how it was read.

    ``organ`` is the parsed organ (``"kidney_left"`` for "left kidney stone", ``"kidney"`` for "kidney stone");
    ``read_as`` is the lower-cased text as it was read, after spelling correction when ``corrected``.
    """

    finding: str
    organ: str
    status: Status
    read_as: str
    corrected: bool = False


def _words(dictionary: AbnormalityDictionary) -> Tuple[FrozenSet[str], List[str]]:
    """Every word of the vocabulary's phrases, and the long ones that a typo may be corrected to (cached)."""
    vocab = vocab_for(dictionary)
    cached = getattr(vocab, "_query_words", None)
    if cached is None:
        known = frozenset(w for p in vocab._phrases for w in _WORD.findall(p))
        cached = (known, sorted(w for w in known if len(w) >= _MIN_LEN))
        vocab._query_words = cached  # type: ignore[attr-defined]
    return cached


def _one_finding(text: str, dictionary: AbnormalityDictionary) -> Optional[Tuple[str, str, Status]]:
    """(finding, organ, status) when the text states exactly one finding as present or uncertain."""
    try:
        found = parse_report(text, dictionary)
    except Exception:  # noqa: BLE001 - a text the parser cannot read names no finding
        return None
    wanted = [f for f in found if f.finding and f.status in (Status.PRESENT, Status.UNCERTAIN)]
    keys = list(dict.fromkeys(f.finding for f in wanted))
    if len(keys) != 1 or keys[0] not in dictionary:
        return None
    first = wanted[0]
    return first.finding, first.organ, first.status  # type: ignore[return-value]


def _spell_corrected(text: str, dictionary: AbnormalityDictionary) -> str:
    """``text`` with each long word the vocabulary lacks replaced by its closest vocabulary word, if close."""
    known, long_words = _words(dictionary)
    out: Dict[str, str] = {}
    for w in set(_WORD.findall(text)):
        if len(w) < _MIN_LEN or w in known:
            continue
        close = difflib.get_close_matches(w, long_words, n=1, cutoff=_CUTOFF)
        if close:
            out[w] = close[0]
    if not out:
        return text
    return _WORD.sub(lambda m: out.get(m.group(), m.group()), text)


def read_query(text: str, dictionary: Optional[AbnormalityDictionary] = None,
               fuzzy: bool = True) -> Optional[QueryFinding]:
    """The single dictionary finding a search text asks for, or None.

    A query is not a report, so it is read more leniently than :func:`parse_report` reads reports:
    - case is ignored (a report line in capitals is a heading; a query "HCC" or "FATTY LIVER" is not);
    - a hedged finding counts ("suspected gallstones" asks for gallstones);
    - with ``fuzzy``, when nothing is found, long words missing from the vocabulary are corrected to the
      closest vocabulary word ("cholelithasis" -> "cholelithiasis") and the text is read again.
    Negated texts ("no gallstones") and texts naming several findings give None: those are not one finding's
    positives, and search ranks them by plain similarity.

    Example:
        >>> q = read_query("suspected CHOLELITHASIS")
        >>> q.finding, q.organ, q.read_as
        ('gallstones', 'gallbladder', 'suspected cholelithiasis')
    """
    dictionary = dictionary or AbnormalityDictionary.default()
    low = re.sub(r"\s+", " ", text.lower()).strip()
    if not low:
        return None
    hit = _one_finding(low, dictionary)
    read_as = low
    if hit is None and fuzzy:
        fixed = _spell_corrected(low, dictionary)
        if fixed != low:
            hit = _one_finding(fixed, dictionary)
            read_as = fixed
    if hit is None:
        return None
    return QueryFinding(finding=hit[0], organ=hit[1], status=hit[2], read_as=read_as, corrected=read_as != low)
