"""NegEx-style cue scopes: which negation/uncertainty cues are in force at each matched phrase of a sentence."""

from __future__ import annotations

import re
from typing import List, Optional, Sequence, Tuple

from ctglip_sdk.reports.types import Status
from ctglip_sdk.reports.vocab import (NEG_BOTH, NEG_POST, NEG_PRE, PSEUDO, TERMINATE, UNC_BOTH, UNC_POST, UNC_PRE,
                                      WEAK_PRE, Info)

__all__ = ["cue_scopes", "status_of"]

_MEASURE = re.compile(r"\d+(?:\.\d+)?\s*(?:x\s*\d+(?:\.\d+)?\s*)*(?:mm|cm)\b")

Scope = Tuple[Optional[str], Optional[str]]


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
    pre: List[Optional[str]] = [None] * n
    seen_before = [False] * n
    cur: Optional[str] = None
    seen = False
    prev_end = start
    for i, (a, b, info) in enumerate(toks):
        if cur == "neg" and _MEASURE.search(low, prev_end, a):
            cur = None  # "no hydronephrosis, 4 mm stone": a measurement starts a positive description
        pre[i] = cur
        seen_before[i] = seen
        trig = info.trigger
        if trig is not None:
            if trig == TERMINATE:
                cur, seen = None, False
            elif trig == NEG_PRE or (trig == NEG_BOTH and not seen):
                cur = "neg"
            elif trig == UNC_PRE or trig == UNC_BOTH:
                cur = "unc"
            elif trig == WEAK_PRE:
                cur = "weak"
            elif trig == PSEUDO and cur == "neg":
                cur = None  # "no hydronephrosis, stable renal cyst"
        if info.keys or info.organ:
            seen = True
        prev_end = b
    post: List[Optional[str]] = [None] * n
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
        elif trig == NEG_POST or (trig == NEG_BOTH and seen_before[i]) or trig == UNC_POST or trig == UNC_BOTH:
            cur = "unc" if trig in (UNC_POST, UNC_BOTH) else "neg"
            covered = conj = False
            post[i] = cur
            continue
        post[i] = cur
        if cur is not None and info.keys:
            covered = True
    return list(zip(pre, post))


def status_of(scope: Scope, question: bool) -> Tuple[Status, bool]:
    """Status of a phrase from its scope; the flag marks uncertainty that comes only from "likely"/"probable".

    Uncertainty beats negation ("no definite ..., cannot exclude"), negation beats "likely", and a question
    mark in the sentence makes the rest uncertain.
    """
    pre, post = scope
    if pre == "unc" or post == "unc":
        return Status.UNCERTAIN, False
    if pre == "neg" or post == "neg":
        return Status.ABSENT, False
    if pre == "weak" or post == "weak":
        return Status.UNCERTAIN, True
    if question:
        return Status.UNCERTAIN, False
    return Status.PRESENT, False
