"""read_query: the one dictionary finding a short search text asks for; tolerant of case, hedges, typos, lay words."""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, Optional, Tuple

from ctglip_sdk import organs as _organs
from ctglip_sdk.reports.dictionary import AbnormalityDictionary
from ctglip_sdk.reports.lay import lay_dictionary
from ctglip_sdk.reports.parser import parse_report
from ctglip_sdk.reports.types import OrganFinding, Status
from ctglip_sdk.reports.vocab import vocab_for

__all__ = ["QueryFinding", "QueryReading", "read_query", "explain_query"]

# A misspelt word is corrected only to a dictionary word this similar (difflib ratio). 0.88 takes
# "cholelithasis" -> "cholelithiasis" (0.96) and "effussion" -> "effusion" (0.94), and leaves apart words that
# merely share a suffix: "appendicitis"/"pancreatitis" 0.50, "transplant"/"transplantation" 0.80.
_CUTOFF = 0.88
_MIN_LEN = 6  # short words are too easily one edit from another word ("mass"/"mast", "cyst"/"cast")
_MIN_SHORT = 4  # ... except against organ names and for swapped letters ("livr" -> "liver", "lugn" -> "lung")
_WORD = re.compile(r"[a-z]+")
_WANTED = (Status.PRESENT, Status.UNCERTAIN)

logger = logging.getLogger(__name__)

# Words a searcher uses to leave a finding out ("renal cyst excluding hydronephrosis", "fatty liver other than
# those with gallstones"), read as "without". Query-only: in a report "except"/"other than" introduce what *is*
# there ("normal kidneys except a small cyst"), so the report vocabulary keeps them as contrast words.
_EXCLUDING = re.compile(
    r"\b(?:excluding|exclude|except(?: for)?|minus|sans|but not|and not|other than|not due to|not caused by)"
    r"\s+(?:(?:those|patients|people|ones|cases|studies)\s+)?(?:(?:who\s+have|with|having)\s+)?")
# ... unless a denial or a normal word comes first: "no abnormality except a renal cyst", "normal except X".
_CONTRAST_FIRST = re.compile(r"\b(?:no|nothing|none|normal|unremarkable|negative|without)\b")


def _excluding_as_without(low: str) -> str:
    """``low`` with exclusion words read as "without" (see _EXCLUDING)."""
    def one(m: "re.Match[str]") -> str:
        return m.group(0) if _CONTRAST_FIRST.search(low, 0, m.start()) else "without "

    return _EXCLUDING.sub(one, low)


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


@dataclass(frozen=True)
class QueryReading:
    """Everything :func:`explain_query` understood of a search text, also when it is not one finding's positives.

    ``finding`` is what :func:`read_query` returns. When it is None: ``negated`` is the one finding the text
    states as absent ("no gallstones", "liver without steatosis"), ``several`` the findings of a text naming more
    than one, ``candidates`` the findings an ambiguous lay word may mean ("spot on the liver"), and ``organs`` the
    organs (or groups) the text names, so that a search can at least stay on them. ``ignored`` lists the other
    findings of a text read as one finding because only one was in clinical words ("fatty liver and big spleen").
    """

    finding: Optional[QueryFinding]
    negated: Optional[QueryFinding] = None
    several: Tuple[str, ...] = ()
    candidates: Tuple[str, ...] = ()
    organs: Tuple[str, ...] = ()
    ignored: Tuple[str, ...] = ()
    #: Findings the text states as absent besides what it asks for ("fatty liver, no gallstones" ->
    #: ("gallstones",)), or every absent one when it denies several ("no kidney stones or hydronephrosis").
    excluded: Tuple[str, ...] = ()


@dataclass
class _Spelling:
    """What typo correction needs of one vocabulary (cached on it).

    ``known``: every word of its phrases. ``by_len``: the long words a typo of each length may be corrected to: a
    word of length m reaches the cutoff only against words of length n with 2·min(m, n)/(m + n) ≥ cutoff (difflib's
    real_quick_ratio bound), so only those are compared (same answers, less time). ``memo``: word -> correction
    ("" for none), as difflib costs ~0.1 ms a word and searchers retype the same words. ``organ_words``: the
    organ-name words a short typo (4-5 letters: "livr", "kidny") may be corrected to; short words are too easily
    one edit from another word to be corrected to any vocabulary word.
    """

    known: FrozenSet[str]
    by_len: Dict[int, List[str]]
    memo: Dict[str, str]
    organ_words: Tuple[str, ...] = ()


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
        organ_words = tuple(sorted({w for name in (*_organs.SYNONYMS, *_organs.V1.values())
                                    for w in _WORD.findall(name.replace("_", " ")) if 4 <= len(w) <= 7} & known))
        cached = _Spelling(known, by_len, {}, organ_words)
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
    return first.finding, _covering(f.organ for f in wanted if f.finding == first.finding), first.status


def _covering(names: Iterable[Optional[str]]) -> str:
    """One organ name covering every organ a finding was stated on: the name itself when there is one, else the
    smallest organ group holding them all ("bilateral effusions" -> both lower lobes -> "lung"; "renal stones
    bilaterally" -> "kidney"). Why: search keeps to the organs this name resolves to, and taking the first
    statement's organ searched the left side only."""
    wanted = list(dict.fromkeys(n for n in names if n))
    if len(wanted) == 1:
        return wanted[0]
    members = set(_organs.canonical_set(wanted))
    fits = [(len(m), g) for g, m in _organs.GROUPS.items() if members <= set(m)]
    return min(fits)[1] if fits else wanted[0]


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
    # once each: a long text names its organs again and again (tokens x statements made this quadratic)
    organs = list(dict.fromkeys(f.organ for f in found if f.finding is None and f.status in _WANTED))
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
    """``text`` with each word the vocabulary lacks replaced by its closest vocabulary word, if close: any word of
    6+ letters, an organ name for shorter words, and any word that two swapped letters give."""
    spell = _spelling(dictionary)
    memo = spell.memo
    out: Dict[str, str] = {}
    for w in set(_WORD.findall(text)):
        if len(w) < _MIN_SHORT or w in spell.known:
            continue
        fix = memo.get(w)
        if fix is None:
            # Two swapped letters ("anuerysm", "nodlue", "lugn") are the commonest typo and difflib rates them
            # below the cutoff for short and mid-length words; any swap that gives a vocabulary word is taken.
            fix = next((v for v in (w[:i] + w[i + 1] + w[i] + w[i + 2:] for i in range(len(w) - 1))
                        if v in spell.known), "")
            if not fix:
                pool = spell.by_len.get(len(w), ()) if len(w) >= _MIN_LEN else spell.organ_words
                close = difflib.get_close_matches(w, pool, n=1, cutoff=_CUTOFF)
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
    return explain_query(text, dictionary, fuzzy).finding


def explain_query(text: str, dictionary: Optional[AbnormalityDictionary] = None,
                  fuzzy: bool = True) -> QueryReading:
    """:func:`read_query`'s reading of a search text, with what it saw when the text is not one finding's positives.

    Example:
        >>> r = explain_query("liver without steatosis")
        >>> r.finding, r.negated.finding, r.organs
        (None, 'hepatic_steatosis', ('liver',))
        >>> explain_query("spot on the liver").candidates
        ('liver_cyst', 'liver_mass')
    """
    dictionary = dictionary or AbnormalityDictionary.default()
    low = _excluding_as_without(re.sub(r"\s+", " ", text.lower()).strip())
    if not low:
        return QueryReading(None)
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
    found: List[OrganFinding] = []
    if hit is None:
        hit, found = _lay_reading(read_as, clinical, dictionary)
        lay = True
    statements = clinical + found
    organs = tuple(dict.fromkeys(f.organ for f in statements if f.organ))
    denied = tuple(dict.fromkeys(f.finding for f in statements
                                 if f.finding and f.status == Status.ABSENT and f.finding in dictionary))
    if hit is not None:
        ignored: Tuple[str, ...] = ()
        if not lay and " and " in f" {read_as} ":  # a second finding in lay words is not read; say so
            extra = [f for f in _read(read_as, lay_dictionary(dictionary)) if f.finding and f.status in _WANTED]
            ignored = tuple(dict.fromkeys(f.finding for f in extra if f.finding != hit[0]))
        return QueryReading(QueryFinding(finding=hit[0], organ=hit[1], status=hit[2], read_as=read_as,
                                         corrected=read_as != low, lay=lay), organs=organs or (hit[1],),
                            ignored=ignored, excluded=tuple(k for k in denied if k != hit[0]))
    maybe = tuple(_candidates(read_as, found, lay_dictionary(dictionary))) if found else ()
    if maybe:
        logger.info("read_query: %r may mean %s; no single finding", text, " or ".join(maybe))
    several = tuple(dict.fromkeys(f.finding for f in statements if f.finding and f.status in _WANTED))
    negated = None
    absent = [f for f in statements if f.finding and f.status == Status.ABSENT]
    if absent and not several and len({f.finding for f in absent}) == 1 and absent[0].finding in dictionary:
        negated = QueryFinding(finding=absent[0].finding, organ=_covering(f.organ for f in absent),
                               status=Status.ABSENT, read_as=read_as, corrected=read_as != low,
                               lay=not any(f.finding for f in clinical))
    return QueryReading(None, negated=negated, several=several if len(several) > 1 else (), candidates=maybe,
                        organs=organs, excluded=() if negated is not None else denied)
