"""read_query: the one dictionary finding a short search text asks for; tolerant of case, hedges, typos, lay words."""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Tuple

from ctglip_sdk.reports.dictionary import AbnormalityDictionary
from ctglip_sdk.reports.lay import lay_dictionary
from ctglip_sdk.reports.parser import parse_report
from ctglip_sdk.reports.types import OrganFinding, Status
from ctglip_sdk.reports.vocab import vocab_for

__all__ = ["QueryFinding", "read_query"]

# A misspelt word is corrected only to a dictionary word this similar (difflib ratio). 0.88 takes
# "cholelithasis" -> "cholelithiasis" (0.96) and "effussion" -> "effusion" (0.94), and leaves apart words that
# merely share a suffix: "appendicitis"/"pancreatitis" 0.50, "transplant"/"transplantation" 0.80.
_CUTOFF = 0.88
_MIN_LEN = 6  # short words are too easily one edit from another word ("mass"/"mast", "cyst"/"cast")
_WORD = re.compile(r"[a-z]+")
_WANTED = (Status.PRESENT, Status.UNCERTAIN)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueryFinding:
    """What :func:`read_query` understood: a finding key, the organ the text ties it to, how it was read.

    ``organ`` is the parsed organ (``"kidney_left"`` for "left kidney stone", ``"kidney"`` for "kidney stone");
    ``read_as`` is the lower-cased text as it was read, after spelling correction when ``corrected``; ``lay`` says
    that lay words were needed ("big liver"; see :mod:`ctglip_sdk.reports.lay`).
    """

    finding: str
    organ: str
    status: Status
    read_as: str
    corrected: bool = False
    lay: bool = False


@dataclass
class _Spelling:
    """What typo correction needs of one vocabulary (cached on it).

    ``known``: every word of its phrases. ``by_len``: the long words a typo of each length may be corrected to: a
    word of length m reaches the cutoff only against words of length n with 2·min(m, n)/(m + n) ≥ cutoff (difflib's
    real_quick_ratio bound), so only those are compared (same answers, less time). ``memo``: word -> correction
    ("" for none), as difflib costs ~0.1 ms a word and searchers retype the same words.
    """

    known: FrozenSet[str]
    by_len: Dict[int, List[str]]
    memo: Dict[str, str]


def _spelling(dictionary: AbnormalityDictionary) -> _Spelling:
    """The typo tables of the lay copy's vocabulary, which holds the clinical phrases too ("swolen" -> "swollen")."""
    vocab = vocab_for(lay_dictionary(dictionary))
    cached = getattr(vocab, "_query_spelling", None)
    if cached is None:
        known = frozenset(w for p in vocab._phrases for w in _WORD.findall(p))
        long_words = sorted(w for w in known if len(w) >= _MIN_LEN)
        top = max((len(w) for w in long_words), default=0)
        by_len = {m: [w for w in long_words if 2 * min(m, len(w)) >= _CUTOFF * (m + len(w))]
                  for m in range(_MIN_LEN, 2 * top + 1)}
        cached = _Spelling(known, by_len, {})
        vocab._query_spelling = cached  # type: ignore[attr-defined]
    return cached


def _read(text: str, dictionary: AbnormalityDictionary) -> List[OrganFinding]:
    """The organ statements of ``text`` (none when the parser cannot read it)."""
    try:
        return parse_report(text, dictionary)
    except Exception:  # noqa: BLE001 - a text the parser cannot read names no finding
        return []


def _one_finding(found: List[OrganFinding], dictionary: AbnormalityDictionary) -> Optional[Tuple[str, str, Status]]:
    """(finding, organ, status) when the statements name exactly one finding of ``dictionary`` as present or
    uncertain."""
    wanted = [f for f in found if f.finding and f.status in _WANTED]
    keys = list(dict.fromkeys(f.finding for f in wanted))
    if len(keys) != 1 or keys[0] not in dictionary:
        return None
    first = wanted[0]
    return first.finding, first.organ, first.status  # type: ignore[return-value]


def _clinical_keys(text: str, dictionary: AbnormalityDictionary,
                   lay: AbnormalityDictionary) -> Optional[FrozenSet[str]]:
    """The findings the text's clinical finding words may mean, lay senses included ("enlarged" also means an
    aneurysm on the aorta); None when it has no clinical finding word.

    Why: clinical words say what kind of finding is asked for, and a lay word elsewhere in the text must not
    replace it: in "small pancreatic lesion", "small" describes the lesion, it does not ask for atrophy.
    """
    spans = [(a, b) for a, b, info in vocab_for(dictionary).tokens(text) if info.keys]
    if not spans:
        return None
    return frozenset(k for a, b, info in vocab_for(lay).tokens(text) if any(a < y and x < b for x, y in spans)
                     for k in info.keys)


def _candidates(text: str, found: List[OrganFinding], lay: AbnormalityDictionary) -> List[str]:
    """The findings a lay word could mean on an organ the text names, when it could mean several ("spot on the
    liver": liver_cyst or liver_mass); empty when it is not that kind of miss."""
    organs = [f.organ for f in found if f.finding is None and f.status in _WANTED]
    if not organs:
        return []
    vocab = vocab_for(lay)
    out: Dict[str, None] = {}
    for _, _, info in vocab.tokens(text):
        for organ in organs:
            fits = [k for k, o in info.key_organs if vocab.compatible(organ, o)]
            if len(fits) > 1:
                out.update(dict.fromkeys(fits))
    return list(out)


def _spell_corrected(text: str, dictionary: AbnormalityDictionary) -> str:
    """``text`` with each long word the vocabulary lacks replaced by its closest vocabulary word, if close."""
    spell = _spelling(dictionary)
    memo = spell.memo
    out: Dict[str, str] = {}
    for w in set(_WORD.findall(text)):
        if len(w) < _MIN_LEN or w in spell.known:
            continue
        fix = memo.get(w)
        if fix is None:
            close = difflib.get_close_matches(w, spell.by_len.get(len(w), ()), n=1, cutoff=_CUTOFF)
            fix = close[0] if close else ""
            if len(memo) >= 10_000:  # bounded: queries can hold endless words
                memo.clear()
            memo[w] = fix
        if fix:
            out[w] = fix
    if not out:
        return text
    return _WORD.sub(lambda m: out.get(m.group(), m.group()), text)


def _lay_reading(text: str, clinical: List[OrganFinding], dictionary: AbnormalityDictionary
                 ) -> Tuple[Optional[Tuple[str, str, Status]], List[OrganFinding]]:
    """(hit, statements) of the text read with lay words too, after its clinical reading found no single finding.

    Lay words only fill gaps: a text whose clinical reading states a finding (negated, or with another one) is
    not read again, and the lay reading's finding must be one that the text's clinical finding words may mean.
    """
    if any(f.finding for f in clinical):
        return None, []
    lay = lay_dictionary(dictionary)  # built on the first text that needs it (~0.15 s), so clinical texts never wait
    found = _read(text, lay)
    hit = _one_finding(found, dictionary)
    if hit is not None:
        allowed = _clinical_keys(text, dictionary, lay)
        if allowed is not None and hit[0] not in allowed:
            return None, []
    return hit, found


def read_query(text: str, dictionary: Optional[AbnormalityDictionary] = None,
               fuzzy: bool = True) -> Optional[QueryFinding]:
    """The single dictionary finding a search text asks for, or None.

    A query is not a report, so it is read more leniently than :func:`parse_report` reads reports:
    - case is ignored (a report line in capitals is a heading; a query "HCC" or "FATTY LIVER" is not);
    - a hedged finding counts ("suspected gallstones" asks for gallstones);
    - with ``fuzzy``, when nothing is found, long words missing from the vocabulary are corrected to the
      closest vocabulary word ("cholelithasis" -> "cholelithiasis", "swolen" -> "swollen") and the text is read again;
    - when the clinical reading states no finding, the text is read again with lay words too
      (:mod:`ctglip_sdk.reports.lay`): "big liver" -> hepatomegaly, "spot on the lung" -> lung_nodule,
      "water around the lungs" -> pleural_effusion; a lay word that could mean several findings of the organ
      ("spot on the liver": cyst or mass) gives None, and the candidates are logged.
    Negated texts ("no gallstones", "no big liver") and texts naming several findings give None: those are not one
    finding's positives, and search ranks them by plain similarity.

    Example:
        >>> q = read_query("suspected CHOLELITHASIS")
        >>> q.finding, q.organ, q.read_as
        ('gallstones', 'gallbladder', 'suspected cholelithiasis')
        >>> q = read_query("big liver")
        >>> q.finding, q.lay
        ('hepatomegaly', True)
    """
    dictionary = dictionary or AbnormalityDictionary.default()
    low = re.sub(r"\s+", " ", text.lower()).strip()
    if not low:
        return None
    read_as = low
    clinical = _read(low, dictionary)
    hit = _one_finding(clinical, dictionary)
    if hit is None and fuzzy:
        fixed = _spell_corrected(low, dictionary)
        if fixed != low:  # the corrected text only replaces words no vocabulary knows: read it from here on
            read_as = fixed
            clinical = _read(fixed, dictionary)
            hit = _one_finding(clinical, dictionary)
    lay = False
    if hit is None:
        hit, found = _lay_reading(read_as, clinical, dictionary)
        lay = True
        if hit is None:
            maybe = _candidates(read_as, found, lay_dictionary(dictionary)) if found else []
            if maybe:
                logger.info("read_query: %r may mean %s; no single finding, so search ranks it by text similarity",
                            text, " or ".join(maybe))
            return None
    return QueryFinding(finding=hit[0], organ=hit[1], status=hit[2], read_as=read_as, corrected=read_as != low,
                        lay=lay)
