"""How a sentence frames its findings beyond cue scopes: checklist answers ("Gallstones: none visible"), a title that
denies ("Negative: hydronephrosis"), sides answered one by one ("Hydronephrosis: none on the right, mild on the
left"), a past finding ("previous pneumonia"), a side that opens the sentence ("On the right there is ...") and a
bilateral finding whose largest one is placed ("Bilateral calculi, the largest in the left kidney")."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ctglip_sdk.reports.vocab import Info

__all__ = ["ANSWER_LINE", "frame_scopes", "word_scopes", "checklist_answer", "denial_title", "sided_answers",
           "past_scopes", "opening_side", "bilateral_before", "sided_site"]

Scope = Tuple[Optional[str], Optional[str]]

# A "?" written before a word ("?underlying mass", "? early pneumonia") queries that word, not the sentence.
_QUERY_PREFIX = re.compile(r"(?:(?<=\s)|(?<=^)|(?<=[(\-]))\?\s?(?=[a-z])")

# The answer of a checklist line ("Gallstones: none.", "Hydronephrosis: no", "Renal calculi: not identified",
# "Appendicitis: equivocal"): it says whether what the title names is there. A denial may go on with words that
# only say where or how it was looked for ("None visible", "None identified bilaterally", "none on CT", "None
# suspicious"); anything else ("no change", "none, but ...") is read as a sentence.
_NEG_ANSWER = (r"(?:none|no|nil|negative|absent|not\s+(?:present|seen|identified|detected|demonstrated|"
               r"visuali[sz]ed|visible|noted))")
_ANSWER_TAIL = (
    r"(?:\s+(?:seen|identified|present|detected|demonstrated|visible|visuali[sz]ed|noted|evident|appreciated|"
    r"suspicious|definite|significant|bilaterally|currently|now|today|"
    r"(?:on|in)\s+(?:the\s+)?(?:left|right|either\s+side|both\s+sides|ct|this\s+(?:study|exam|examination|scan))))*")
_ANSWER = re.compile(
    r":\s*(?:(" + _NEG_ANSWER + _ANSWER_TAIL + r")"
    r"|(possible|possibly|questionable|equivocal|indeterminate|uncertain|\?))\s*[.;!]*\s*$")
# A line that is only a denying answer ("None.", "Not seen."): the segmenter joins it to the upper-case finding line
# above it ("PLEURAL EFFUSION" + "None."), so that the pair reads as the bare answer below.
ANSWER_LINE = re.compile(r"(?i)" + _NEG_ANSWER + _ANSWER_TAIL + r"\s*[.;!]*")
# A denying answer that goes on, after a comma, about something else ("Gallstones: none, gallbladder wall
# thickened."): it still denies what the title names.
_LEAD_ANSWER = re.compile(r":\s*" + _NEG_ANSWER + _ANSWER_TAIL + r"\s*,")
# The same answer without the colon, after a title without a comma ("Hydronephrosis none.").
_BARE_ANSWER = re.compile(r"\s+(?:none|no|nil|negative)" + _ANSWER_TAIL + r"\s*[.;!]*\s*$")

# Titles that deny what follows them ("Negative: hydronephrosis, renal calculi."): every sentence under one is a
# denial, as a checklist line's answer is.
_DENIAL_TITLES = frozenset(("negative", "negative for", "none", "absent", "not seen", "not identified"))

_DENIAL_MEMO: Dict[str, bool] = {}  # title -> denial_title (titles repeat across reports)

# One part of a checklist answer given side by side: "none on the right", "mild on the left", "small left".
_SIDED_PART = re.compile(
    r"\s*((?:[a-z0-9.\-]+\s+){0,3}?)(?:(?:on|in|at)\s+(?:the\s+)?)?(left|right)(?:\s+side)?\s*")
_CONTRAST = re.compile(r"^\s*(?:but|except|although|however)\s+")
_PART_DENIED = re.compile(r"(?:none|no|nil|absent|negative|not\s+(?:seen|identified|present))\s*")
_PART_HEDGED = re.compile(r"(?:possible|possibly|questionable|equivocal|indeterminate|\?)\s*")
_PART_WORDS = frozenset(("no", "not", "none", "nil", "absent", "negative", "without", "possible", "possibly",
                         "questionable", "equivocal", "indeterminate", "but", "except"))

# "previous"/"prior" right before a finding (and its side): a finding of the past ("Previous pneumonia in the
# RLL"), which says nothing certain about this scan. Not before an operation, which is done for good.
_PAST = re.compile(r"(?:^|(?<=[^a-z]))(?:previous|prior)\s+(?:(?:left|right|bilateral)\s+)?$")
# Words after a past finding that say it is still there ("The prior liver cyst is unchanged", "Previous left pleural
# effusion has decreased"): a finding of this scan, compared with the prior one.
_STILL = re.compile(r"\b(?:unchanged|stable|persist\w*|again|still|redemonstrat\w*|re-demonstrat\w*|similar|"
                    r"increas\w*|decreas\w*|enlarg\w*|grown|larger|smaller|now|remains?|remaining|residual|"
                    r"interval|measur\w*)\b")
# A side that opens the sentence and is said of what follows ("On the right there is moderate hydronephrosis.",
# "On the left, there is a 2 cm simple renal cyst.").
_OPENING = re.compile(r"\s*(?:on|in)\s+the\s+(left|right)(?:\s+side)?\b")
# The side word right before "effusion(s)" ("small left effusion", "bilateral effusions", "left-sided effusion";
# the last gave no statement before 2026-12-07, the dictionary's own "a small loculated left-sided effusion" too).
_SIDE_BEFORE = re.compile(r"(?<![a-z\-])(?:left|right|bilateral)(?:[\s\-]sided)?\s+$")
# The side said right after "effusion(s)" ("Small effusion on the left.", "effusions on both sides").
_SIDE_AFTER = re.compile(r"s?\s+(?:on|at)\s+(?:the\s+)?(?:left|right|both\s+sides)\b")
# A comma and the largest (dominant) one of a bilateral finding: "Bilateral calculi, the largest in the left kidney".
_LARGEST = re.compile(r"\s*,\s*(?:the|with\s+the)\s+(?:largest|biggest|dominant|most\s+prominent)\b")


def frame_scopes(toks: Sequence[Tuple[int, int, Info]], low: str, start: int, end: int, denied: bool,
                 colon: bool, question: bool, scopes: List[Scope]) -> Tuple[bool, List[Scope], Optional[str]]:
    """``(question, scopes, checklist answer)`` of a sentence ``low[start:end]`` once its frame is read: a "?" before a
    word, a checklist answer ("Gallstones: none."), a title that denies ("Negative:"; ``denied``). ``question`` says
    whether the sentence holds a "?", ``colon`` whether it holds a ":"."""
    if question:
        q = _QUERY_PREFIX.search(low, start, end)
        if q is not None and "?" not in low[q.end():end]:
            # "Dilated duct with abrupt cut-off - ?underlying mass": the "?" queries what follows it only
            question = False
            scopes = [sc if t[0] < q.start() else ("unc", sc[1]) for t, sc in zip(toks, scopes)]
    answer = checklist_answer(low, start, end) if colon else None  # "Gallstones: none." denies what the title names
    if answer is not None:
        scopes = [(None, answer)] * len(toks)
    elif colon:
        c = low.find(":", start, end)
        lead = _LEAD_ANSWER.match(low, c, end) if c >= 0 else None
        # Only when another finding is named after the comma: "Hydronephrosis: none, but mild on the left" goes on
        # about the title's own finding ("mild" may describe it), and is read as before.
        if lead is not None:
            titled = {k for t in toks if t[1] <= c for k in t[2].keys}
            if titled and any(t[0] >= lead.end() and t[2].keys and titled.isdisjoint(t[2].keys) for t in toks):
                scopes = [(None, "neg") if t[1] <= c else sc for t, sc in zip(toks, scopes)]
    if denied:
        scopes = [(sc[0], "neg") for sc in scopes]  # "Negative: hydronephrosis, renal calculi."
    return question, scopes, answer


def word_scopes(toks: Sequence[Tuple[int, int, Info]], low: str, start: int, end: int, colon: bool,
                scopes: List[Scope], answer: Optional[str]) -> Tuple[List[Scope], Optional[str]]:
    """``(scopes, checklist answer)`` of a sentence with findings and "none", "prior " or "previous " in it (the
    caller looks: most sentences have none of them): a title answered without a colon ("Hydronephrosis none."), a
    past finding ("Previous pneumonia in the RLL": not said of this scan)."""
    if not colon:
        answer = checklist_answer(low, start, end)
        if answer is not None:
            scopes = [(None, answer)] * len(toks)
    scopes = list(scopes)
    past_scopes(toks, low, start, end, scopes)
    return scopes, answer


def checklist_answer(low: str, start: int, end: int) -> Optional[str]:
    """"neg" or "unc" when ``low[start:end]`` is a checklist line whose answer after the colon denies or hedges what
    its title names ("gallstones: none.", "hydronephrosis: none bilaterally", "appendicitis: equivocal"), or a
    title without a colon answered "none" ("hydronephrosis none."); None otherwise."""
    c = low.find(":", start, end)
    if c < 0:
        m = _BARE_ANSWER.search(low, start, end)
        return "neg" if m is not None and m.start() > start and low.find(",", start, m.start()) < 0 else None
    m = _ANSWER.match(low, c, end)
    if m is None:
        return None
    return "neg" if m.group(1) else "unc"


def denial_title(heading: Optional[str]) -> bool:
    """Whether a heading's title denies what is written under it ("Negative:")."""
    if heading is None or len(heading) > 16:
        return False
    hit = _DENIAL_MEMO.get(heading)
    if hit is None:
        if len(_DENIAL_MEMO) >= 10_000:
            _DENIAL_MEMO.clear()
        hit = _DENIAL_MEMO[heading] = " ".join(heading.lower().split()) in _DENIAL_TITLES
    return hit


def sided_answers(low: str, start: int, end: int) -> Optional[List[Tuple[str, Optional[str]]]]:
    """``[(side, "neg"/"unc"/None)]`` when a checklist line answers side by side ("pleural effusions: none on the
    left, small on the right"), else None. None as a kind means the finding is there on that side."""
    c = low.find(":", start, end)
    if c < 0:
        return None
    parts = low[c + 1:end].rstrip(" .;!").split(",")
    if len(parts) < 2:
        return None
    out: List[Tuple[str, Optional[str]]] = []
    rest: Optional[str] = None  # "none, but mild on the left": the bare denial is said of the sides not named
    for k, part in enumerate(parts):
        if k:
            part = _CONTRAST.sub("", part, count=1)
        if k == 0 and _PART_DENIED.fullmatch(part.strip() + " "):
            rest = "neg"
            continue
        m = _SIDED_PART.fullmatch(part)
        if m is None:
            return None
        lead = m.group(1)
        if _PART_DENIED.fullmatch(lead):
            kind: Optional[str] = "neg"
        elif _PART_HEDGED.fullmatch(lead):
            kind = "unc"
        elif _PART_WORDS.isdisjoint(lead.split()):
            kind = None  # "mild", "small", "3 mm", "present"
        else:
            return None
        out.append((m.group(2), kind))
    if len({side for side, _ in out}) != len(out) or not out:
        return None
    if rest is not None:
        out += [(side, rest) for side in ("left", "right") if side not in {sd for sd, _ in out}]
    return out


def past_scopes(toks: Sequence[Tuple[int, int, Info]], low: str, start: int, end: int,
                scopes: List[Scope]) -> None:
    """Mark, in place, findings said right after "previous"/"prior" as past ("hist"), unless a cue is in force. The
    organ words right before the finding belong to it ("Previous left pleural effusion", "prior right renal cyst")."""
    for i, (a, _b, info) in enumerate(toks):
        if not info.keys or scopes[i][0] is not None:
            continue
        j = i
        while j > 0 and toks[j - 1][2].mention and not toks[j - 1][2].keys and low[toks[j - 1][1]:toks[j][0]].isspace():
            j -= 1
        a = toks[j][0]
        if _PAST.search(low, a - 24 if a - 24 > start else start, a) and not _STILL.search(low, _b, end):
            scopes[i] = ("hist", scopes[i][1])


def opening_side(low: str, start: int, toks: Sequence[Tuple[int, int, Info]]) -> Optional[str]:
    """The side a sentence opens with ("On the right there is ..."), said of its findings that name none."""
    if not toks or not toks[0][2].side:
        return None
    m = _OPENING.match(low, start)
    return m.group(1) if m is not None and m.end(1) == toks[0][1] else None


def bilateral_before(low: str, toks: Sequence[Tuple[int, int, Info]], i: int, used: Sequence[int],
                     mention_tok: Sequence[int]) -> bool:
    """Whether finding ``toks[i]`` is said to be bilateral right before it, and the organs it was placed on (the
    mentions ``used``, at tokens ``mention_tok[j]``) are named only in a following "..., the largest in the left
    kidney": they place the largest one, not the finding."""
    if not used or min(mention_tok[j] for j in used) <= i or _LARGEST.match(low, toks[i][1]) is None:
        return False
    anchor = toks[i][0]
    for j in range(i - 1, -1, -1):
        a, b, info = toks[j]
        if anchor - b > 30 or "," in low[b:anchor]:
            return False
        if info.side:
            return info.side == "both"
        if info.organ or info.trigger:
            return False
        anchor = a
    return False


def sided_site(low: str, info: Info, a: int, start: int, entries: Mapping[str, Any]) -> Optional[str]:
    """The finding an "effusion" right after a side word, with no organ, names: the one whose dictionary ``sites``
    place it by side ("Small left effusion" -> pleural effusion; a pericardial effusion has no side)."""
    if not low.startswith("effusion", a):
        return None
    if _SIDE_BEFORE.search(low, a - 18 if a - 18 > start else start, a) is None and \
            _SIDE_AFTER.match(low, a + 8) is None:
        return None
    keys = [k for k in info.keys if entries[k].sites]
    return keys[0] if len(keys) == 1 else None
