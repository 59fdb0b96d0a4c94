"""parse_report: organ-level findings with present/absent/uncertain status from free-text CT reports."""

from __future__ import annotations

import re
from bisect import bisect_left
from typing import Any, Dict, List, Optional, Tuple

from ctglip_sdk.errors import InputError
from ctglip_sdk.reports.dictionary import AbnormalityDictionary
from ctglip_sdk.reports.framing import denial_title
from ctglip_sdk.reports.resection import drop_resected
from ctglip_sdk.reports.segment import _SPLIT_CACHE, _TITLE_OK, _WORD_KIND, _heading_kind, segment
from ctglip_sdk.reports.sentence import SentenceParser, _expand, _side_of, normalise_space
from ctglip_sdk.reports.sides import both_sides_group
from ctglip_sdk.reports.types import (_RANK, OrganFinding, SentenceResult, Status,  # noqa: F401 - _RANK re-exported
                                      new_finding, new_sentence)
from ctglip_sdk.reports.vocab import Info, vocab_for

__all__ = ["Status", "OrganFinding", "SentenceResult", "parse_report", "analyse"]


_CACHE_SIZE = 50_000
# "Rt." / "Lt." inside a sentence ("Rt. kidney normal.": the segmenter does not split before a lower-case word).
_SIDE_DOT = re.compile(r"(?<![a-z])[rl]t\. (?=[a-z])")


def _side_dots(text: str, low: str) -> str:
    """``low`` with the period of "rt."/"lt." read as a space where a lower-case word follows in ``text``, so that
    "Rt. kidney" is read as "Rt kidney" (the right kidney) by the whole-organ rules too; offsets are unchanged."""
    out = low
    for m in _SIDE_DOT.finditer(low):
        if text[m.end()].islower():
            out = out[:m.end() - 2] + " " + out[m.end() - 1:]
    return out


def clear_caches(dictionary: Optional[AbnormalityDictionary] = None, *, memos: bool = False) -> None:
    """Forget cached sentence results and line splits (for benchmarks of unseen text; results never depend on them).

    With ``memos`` also forget what is remembered per vocabulary item (matched phrase -> entry, heading title ->
    organs, word -> abbreviation, organ -> compatible findings), as in a freshly started process.
    """
    vocab = vocab_for(dictionary or AbnormalityDictionary.default())
    if vocab.parser is not None:
        vocab.parser.cache.clear()
    _SPLIT_CACHE.clear()
    if memos:
        if vocab.parser is not None:
            vocab.parser._places.clear()
        vocab.clear_memos()
        _WORD_KIND.clear()
        _TITLE_OK.clear()
        _heading_kind.cache_clear()
        _expand.cache_clear()
        _side_of.cache_clear()
        both_sides_group.cache_clear()


def cache_stats(dictionary: Optional[AbnormalityDictionary] = None) -> Dict[str, int]:
    """How many sentence results and line splits are cached (benchmarks report hit rates from these)."""
    vocab = vocab_for(dictionary or AbnormalityDictionary.default())
    return {"sentences": len(vocab.parser.cache) if vocab.parser is not None else 0, "lines": len(_SPLIT_CACHE),
            "max_sentences": _CACHE_SIZE}


def _results(text: str, dictionary: Optional[AbnormalityDictionary], sentences: bool) -> List[Any]:
    """SentenceResults of a report (``sentences``), or only its OrganFindings (no SentenceResult is built)."""
    if not isinstance(text, str):
        raise InputError(f"report text must be a string, got {type(text).__name__}")
    vocab = vocab_for(dictionary or AbnormalityDictionary.default())
    parser = vocab.parser
    if parser is None:
        parser = vocab.parser = SentenceParser(vocab)
    low = text.lower()
    if len(low) != len(text):  # a few Unicode letters change length when lowered; keep offsets aligned
        low = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    if "t. " in low:
        low = _side_dots(text, low)
    out: List[Any] = []
    heading: Optional[str] = None
    denied = False
    context: Tuple[str, ...] = ()
    cache = parser.cache
    parse = parser.sentence
    entries = vocab.entries
    all_toks: Optional[List[Tuple[int, int, Info]]] = None
    removed: List[str] = []  # organs the report says were removed
    starts: List[int] = []
    for sent in segment(text, vocab.heading_organs, vocab.title_memo):
        start, end, s_heading, s_organs, _section = sent
        if s_heading != heading:
            heading, context = s_heading, ()
            denied = denial_title(heading)
        # Reports repeat their sentences ("No hydronephrosis.") across an archive: a sentence's result depends
        # only on its text, heading organs and the previous sentence's organs (and on a title that denies it,
        # "Negative:"), so it is computed once.
        key = (low[start:end], s_organs, context, True) if denied else (low[start:end], s_organs, context)
        hit = cache.get(key)
        if hit is None:
            toks = vocab.sentence_tokens(low, start, end)
            if toks is None:
                if all_toks is None:  # no barrier before the sentence: scan the whole report once
                    all_toks = vocab.tokens(low)
                    starts = [t[0] for t in all_toks]
                i = bisect_left(starts, start)
                toks = all_toks[i:bisect_left(starts, end, i)]
                if toks and toks[-1][1] > end:
                    toks.pop()  # phrases do not overlap: only the last one can run past the sentence
            rec = parse(text, low, sent, toks, context, denied)
            found = rec[1]
            # the next sentence may continue about these organs; sides are its own to say ("... right calculus")
            if not found:
                following = context
            elif len(found) == 1:
                f = found[0]
                following = (entries[f.finding].organ if f.finding else f.organ,)
            else:
                following = tuple(dict.fromkeys([entries[f.finding].organ if f.finding else f.organ
                                                 for f in found]))
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[key] = (rec, start, text[start:end], following)
        else:
            rec, was, raw, following = hit
            found = rec[1]
            if found and (was != start or not text.startswith(raw, start)):
                # the same sentence elsewhere (or spelt in another case) in another report: move its spans
                s_text = rec[0] if text.startswith(raw, start) else normalise_space(text[start:end])
                d = start - was
                found = tuple([new_finding(f.organ, f.finding, f.status, s_text, (f.span[0] + d, f.span[1] + d))
                               for f in found])
                rec = (s_text, found) + rec[2:]
            elif sentences and not text.startswith(raw, start):
                rec = (normalise_space(text[start:end]),) + rec[1:]
        if rec[4]:
            removed.extend(rec[4])
        if sentences:
            out.append(new_sentence(rec[0], (start, end), s_heading, rec[2], found, rec[3]))
        elif found:
            out.extend(found)
        context = following
    if removed:  # "Status post cholecystectomy": no sentence of the report makes the gallbladder normal
        return drop_resected(out, removed, sentences)
    return out


def analyse(text: str, dictionary: Optional[AbnormalityDictionary] = None) -> List[SentenceResult]:
    """Sentence-level results of :func:`parse_report` (sentences with no organ statement included)."""
    return _results(text, dictionary, True)


def parse_report(text: str, dictionary: Optional[AbnormalityDictionary] = None) -> List[OrganFinding]:
    """Organ-level findings of a free-text CT report.

    Args:
        text: the report (any layout: headings, lists, wrapped lines, FINDINGS/IMPRESSION sections).
        dictionary: vocabulary to match; the default dictionary when None.

    Returns:
        OrganFindings in report order. See docs/reports.md for the status rules.

    Example:
        >>> [(f.organ, f.finding, str(f.status)) for f in parse_report("KIDNEYS: Left renal cyst. No hydronephrosis.")]
        [('kidney_left', 'renal_cyst', 'present'), ('kidney', 'hydronephrosis', 'absent')]
    """
    return _results(text, dictionary, False)
