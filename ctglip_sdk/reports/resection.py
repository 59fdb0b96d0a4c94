"""Removed and missing organs: "status post cholecystectomy", "the gallbladder is surgically absent".

An organ that is not there is not a normal organ: the sentence that says so makes no statement about it, and an
organ removed by an operation gets no whole-organ statement anywhere in the report (``drop_resected``).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

from ctglip_sdk import organs as _organs
from ctglip_sdk.reports.sides import _expand, _side_of, sided
from ctglip_sdk.reports.types import OrganFinding, new_finding, new_sentence
from ctglip_sdk.reports.vocab import OTHER, Info

__all__ = ["gone_organs", "drop_resected"]

# Between an organ and the word that says it is missing: "the gallbladder is surgically absent", "the left kidney
# has been removed", "the kidneys are not visualized"; "Left kidney: surgically absent" inside a line).
_AFTER_ORGAN = re.compile(
    r"\s*(?::\s*)?(?:(?:is|are|was|were|has|have|had|been|appears?|remains?|now)\s+)*"
    r"(?:(?:surgically|previously|completely|totally|entirely|now|also)\s+)*$")
# A preposition before the organ makes it the object of another subject ("perfusion of the kidney is absent").
_OBJECT = re.compile(r"\b(?:of|in|within|to|from|at|on|for|into|through)\s+(?:the\s+|both\s+)?$")
_BEFORE_ORGAN = re.compile(r"\s*(?:the\s+)?$")  # "surgically absent gallbladder", "absent spleen"
# A side right before an operation, with one word between at most: "post left nephrectomy", "right radical ...".
_SIDE_GAP = re.compile(r"[\s\-]*(?:[a-z]+\s+)?$")
# An operation that is proposed, not done: "recommend cholecystectomy", "candidate for nephrectomy".
_PLANNED = re.compile(
    r"\b(?:recommend|consider|candidate|plan|schedul|await|pending|prior\s+to|before|pre-?op|referr?|refer)[a-z]*\b"
    r"[^.;,]*$")
_HEDGE_OR_DENIAL = frozenset(("neg", "unc"))
# All a sentence may say besides the missing word for it to be said of its heading's organs ("Surgically absent.").
_FILLER = re.compile(r"[\s.;:!,]*(?:(?:is|are|has|have|been|now|previously|surgically|completely)[\s.;:!,]+)*")


def _has_sides(organ: str) -> bool:
    return {_side_of(m) for m in _expand(organ)} >= {"left", "right"}


def gone_organs(low: str, toks: Sequence[Tuple[int, int, Info]], scopes: Sequence[Tuple[Optional[str], Optional[str]]],
                mentions: Sequence[Tuple[int, int, str]], mention_tok: Sequence[int], heading: Sequence[str],
                start: int, end: int, run: Callable[[int], List[int]]) -> Tuple[FrozenSet[str], Tuple[str, ...]]:
    """(classes the sentence ``low[start:end]`` says are not there, organs removed for the whole report).

    Operations ("status post cholecystectomy", "post left nephrectomy") remove their organ, on the side said
    right before them or of the sided organs the sentence names ("the right kidney is not visualized, consistent
    with prior nephrectomy"); a planned or hedged one does not. A missing word removes the organ it is said of
    ("the gallbladder is surgically absent", "absent spleen"), with the organs listed with it; said alone under a
    heading ("Gallbladder: Surgically absent."), it removes the heading's organs. Organs not seen on this study
    ("the spleen is not visualized") count for the sentence only.
    """
    here: Set[str] = set()
    report: Dict[str, None] = {}
    at = {ti: j for j, ti in enumerate(mention_tok)}
    for i, (a, b, info) in enumerate(toks):
        if info.resects:
            if not _HEDGE_OR_DENIAL.isdisjoint(scopes[i]) or _PLANNED.search(low, start, a):
                continue
            organ = info.resects
            prev = toks[i - 1] if i else None
            side = prev[2].side if prev is not None and _SIDE_GAP.fullmatch(low, prev[1], a) else None
            if side == "left" or side == "right":
                organ = sided(organ, side)
            if side == "both" or _side_of(organ) or not _has_sides(organ):  # "bilateral nephrectomies": both
                here.update(_expand(organ))
                report[organ] = None
                continue
            members = set(_expand(organ))
            named = [m[2] for m in mentions if m[2] != organ and m[2] != OTHER and set(_expand(m[2])) <= members]
            for o in named or [organ]:
                here.update(_expand(o))
                if named:
                    report[o] = None  # else the side is unknown: the other kidney may be reported normal
        elif info.missing:
            j = at.get(i - 1) if i else None
            if j is not None and not (toks[i - 1][2].whole and _AFTER_ORGAN.fullmatch(low, toks[i - 1][1], a)):
                j = None
            if j is None and info.missing == "resected" and low.endswith("absent", a, b):
                k = at.get(i + 1)
                if k is not None and toks[i + 1][2].whole and _BEFORE_ORGAN.fullmatch(low, b, toks[i + 1][0]):
                    j = k
            if j is not None:
                idx = run(j)
                if _OBJECT.search(low, max(start, mentions[idx[0]][0] - 30), mentions[idx[0]][0]):
                    continue  # "enhancement of the left kidney is absent": the organ is not the subject
                organs = [mentions[k][2] for k in idx]
            elif not mentions and heading and len(toks) == 1 and _FILLER.fullmatch(low[start:a] + " " + low[b:end]):
                organs = list(heading)  # "Gallbladder: Surgically absent.", not "Bladder: Catheter removed."
            else:
                continue
            for o in organs:
                if o != OTHER:
                    here.update(_expand(o))
                    if info.missing == "resected":
                        report[o] = None
    return frozenset(here), tuple(report)


def _left(organ: str, gone: Set[str]) -> List[str]:
    """What is left of ``organ`` without the removed classes: itself, nothing, or the group or classes left
    (kidney without kidney_left -> kidney_right)."""
    members = _expand(organ)
    left = [m for m in members if m not in gone]
    if len(left) == len(members):
        return [organ]
    groups = [g for g in _organs.GROUPS if set(_expand(g)) == set(left)] if left else []
    return groups[:1] or left


def _keep(f: OrganFinding, gone: Set[str]) -> List[OrganFinding]:
    """``f``, unless it is a whole-organ statement about removed classes: then dropped or moved to what is left."""
    if f.finding is not None:
        return [f]
    names = _left(f.organ, gone)
    if names == [f.organ]:
        return [f]
    return [new_finding(o, None, f.status, f.sentence, f.span) for o in names]


def drop_resected(items: List[Any], organs: Iterable[str], sentences: bool) -> List[Any]:
    """``items`` (OrganFindings, or SentenceResults with ``sentences``) without whole-organ statements about the
    removed ``organs``: "Status post cholecystectomy. Liver and biliary tree: normal." leaves the liver normal."""
    gone = {m for o in organs for m in _expand(o)}
    if not sentences:
        return [g for f in items for g in _keep(f, gone)]
    out = []
    for s in items:
        kept = tuple(g for f in s.findings for g in _keep(f, gone))
        if kept != s.findings:  # nor is the sentence about them any more (organ_texts)
            about = tuple(dict.fromkeys(o for o in s.organs for o in _left(o, gone)))
            s = new_sentence(s.text, s.span, s.heading, s.organ_from_heading, kept, about)
        out.append(s)
    return out
