"""NegEx-style cue scopes: which negation/uncertainty cues are in force at each matched phrase of a sentence."""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

from ctglip_sdk.reports.types import ABSENT, PRESENT, UNCERTAIN, Status
from ctglip_sdk.reports.vocab import (NEG_BOTH, NEG_POST, NEG_PRE, PSEUDO, TERMINATE, UNC_BOTH, UNC_POST, UNC_PRE,
                                      WEAK_PRE, Info)

__all__ = ["cue_scopes", "status_of"]

# "\d+" spelt "\d\d*": a leading character set lets the regex engine skip to digits fast
_MEASURE = re.compile(r"\d\d*(?:\.\d+)?\s*(?:x\s*\d+(?:\.\d+)?\s*)*(?:mm|cm)\b")

Scope = Tuple[Optional[str], Optional[str]]
_NO_SCOPE: Scope = (None, None)
_PRE_SCOPE: Dict[str, Scope] = {k: (k, None) for k in ("neg", "unc", "weak")}  # shared: most scopes are these


def cue_scopes(toks: Sequence[Tuple[int, int, Info]], low: str, start: int) -> List[Scope]:
    """Per phrase: the (pre-cue, post-cue) kind in force: "neg", "unc", "weak" or None.

    A pre-cue ("no", "possible") reaches forward to the end of the sentence, a terminator ("but", "however",
    "which", ", the"), another pre-cue, a measurement after a negation ("no hydronephrosis, 4 mm stone") or a
    pseudo-negation ("stable"). A post-cue ("cannot be excluded", "has resolved") reaches back to the previous
    terminator, and past a comma only within a list ("X, Y and Z are not seen").

    Example:
        >>> from ctglip_sdk.reports import AbnormalityDictionary
        >>> from ctglip_sdk.reports.vocab import vocab_for
        >>> toks = vocab_for(AbnormalityDictionary.default()).tokens("no cyst but a stone")
        >>> [sc[0] for sc in cue_scopes(toks, "no cyst but a stone", 0)]
        [None, 'neg', 'neg', None]
    """
    n = len(toks)
    scopes: List[Scope] = [_NO_SCOPE] * n
    both_seen: List[int] = []  # "resolved"/"absent" tokens with a finding or organ before them
    backward = False  # whether any post-cue can apply; without one the backward pass leaves every phrase None
    cur: Optional[str] = None
    seen = False
    prev_end = start
    for i, (a, b, info) in enumerate(toks):
        if cur is not None:
            # a measurement needs three characters at least ("4mm"): shorter gaps skip the regex
            if cur == "neg" and a - prev_end > 2 and _MEASURE.search(low, prev_end, a):
                cur = None  # "no hydronephrosis, 4 mm stone": a measurement starts a positive description
            else:
                scopes[i] = _PRE_SCOPE[cur]
        trig = info.trigger
        if trig is not None:
            if trig == TERMINATE:
                cur, seen = None, False
            elif trig == NEG_PRE:
                cur = "neg"
            elif trig == NEG_BOTH:
                if seen:
                    both_seen.append(i)
                    backward = True
                else:
                    cur = "neg"
            elif trig == UNC_PRE:
                cur = "unc"
            elif trig == UNC_BOTH:
                cur = "unc"
                backward = True
            elif trig == WEAK_PRE:
                cur = "weak"
            elif trig == PSEUDO:
                if cur == "neg":
                    cur = None  # "no hydronephrosis, stable renal cyst"
            elif trig == NEG_POST or trig == UNC_POST:
                backward = True
        if info.keys or info.organ:
            seen = True
        prev_end = b
    if not backward:
        return scopes
    cur = None
    covered = conj = False
    for i in range(n - 1, -1, -1):
        a, b, info = toks[i]
        if cur is not None and i + 1 < n:
            gap = low[b:toks[i + 1][0]]
            conj = conj or " and " in gap or " or " in gap
            if covered and not conj and "," in gap:
                cur = None  # "wall thickening, neoplasm cannot be excluded": the cue covers its own clause
        trig = info.trigger
        if trig == TERMINATE:
            cur = None
        elif trig == NEG_POST or (trig == NEG_BOTH and i in both_seen) or trig == UNC_POST or trig == UNC_BOTH:
            cur = "unc" if trig in (UNC_POST, UNC_BOTH) else "neg"
            covered = conj = False
            scopes[i] = (scopes[i][0], cur)
            continue
        if cur is not None:
            scopes[i] = (scopes[i][0], cur)
            if info.keys:
                covered = True
    return scopes


def status_of(scope: Scope, question: bool) -> Tuple[Status, bool]:
    """Status of a phrase from its scope; the flag marks uncertainty that comes only from "likely"/"probable".

    Uncertainty beats negation ("no definite ..., cannot exclude"), negation beats "likely", and a question
    mark in the sentence makes the rest uncertain.
    """
    return (STATUS_Q if question else STATUS)[scope]


def _status(pre: Optional[str], post: Optional[str], question: bool) -> Tuple[Status, bool]:
    if pre == "unc" or post == "unc":
        return UNCERTAIN, False
    if pre == "neg" or post == "neg":
        return ABSENT, False
    if pre == "weak" or post == "weak":
        return UNCERTAIN, True
    if question:
        return UNCERTAIN, False
    return PRESENT, False


# status_of as two lookup tables (without and with a question mark): the parser asks once per phrase.
_KINDS = (None, "neg", "unc", "weak")
STATUS: Dict[Scope, Tuple[Status, bool]] = {(p, q): _status(p, q, False) for p in _KINDS for q in _KINDS}
STATUS_Q: Dict[Scope, Tuple[Status, bool]] = {(p, q): _status(p, q, True) for p in _KINDS for q in _KINDS}
