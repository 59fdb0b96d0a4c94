"""Sides of findings: the side word near a phrase, two sides said in one phrase, and where a sided finding lands."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

from ctglip_sdk import organs as _organs
from ctglip_sdk.reports.vocab import TERMINATE, Info

__all__ = ["side_near", "side_after_comma", "pair_sides", "place", "sided"]

_CLASSES = frozenset(_organs.ORGANS)
# What lies between coordinated organs or findings ("liver and both kidneys", "hydronephrosis or nephrolithiasis").
_COORD = re.compile(r"\s*(?:,\s*(?:and\s+|or\s+)?|(?:and|or|nor|&|/|as well as)\s*)(?:the\s+|both\s+)?$")
# Two side words joined into one phrase: "right and left", "left > right", "right greater than left".
# A severity may stand before the second side ("mild right and moderate left hydronephrosis").
_SIDE_PAIR = re.compile(
    r"\s*(?:and|or|&|/|,|>|<|=|\+|(?:(?:slightly|much|somewhat|far)\s+)?"
    r"(?:greater|more|larger|bigger|worse|less|smaller|lesser)\s+than|equal\s+to)\s*(?:the\s+)?"
    r"(?:(?:mild|mildly|moderate|moderately|severe|severely|marked|small|large|trace|tiny|minimal|minor|"
    r"moderate-to-severe|mild-to-moderate|massive|tense)\s+)?$")
# A side said after a comma, as the whole of what follows the finding ("Pleural effusion, left.", "Hydronephrosis,
# mild, right.", "Pleural effusion: small, left."): between the finding and the side only a colon, commas and
# severity or size words; after the side nothing more in its clause (a comma, the sentence's end).
_SEVERITY = (r"(?:mild|mildly|moderate|moderately|severe|severely|marked|small|large|trace|tiny|minimal|minor|"
             r"moderate-to-severe|mild-to-moderate|massive|tense)")
_COMMA_LEAD = re.compile(r"\s*(?::\s*)?(?:" + _SEVERITY + r"\s*)*,\s*(?:" + _SEVERITY + r"\s*,?\s*)*")
_COMMA_TAIL = re.compile(r"\s*(?:sided?\b\s*)?(?:[,;.]|$)")
_AND_OR = re.compile(r"\s*(?:and|or)\s*")
# A side said after a finding as its place ("a cyst on the right"): not the side of what follows it.
# A side right before "there is/are" ("on the left there is a stone"): it opens that clause.
_THERE = re.compile(r"\s?there\s")
_ON_THE = re.compile(r"\s*(?:on|at|to)\s+the\s+")
_BOTH = Info(side="both", flags=True)
_GROUP_MENTIONS: Dict[str, Info] = {}  # group -> the Info of a mention of it (made once)
# Memoised organ-table lookups shared by the parser modules (parser.clear_caches empties them).
_expand = lru_cache(maxsize=4096)(_organs.expand)
_side_of = lru_cache(maxsize=4096)(_organs.side_of)


def sided(organ: str, side: str) -> str:
    """kidney + left -> kidney_left; lung + left -> lung_left; a class stays as it is."""
    cand = f"{organ}_{side}"
    return cand if cand in _organs.GROUPS or cand in _CLASSES else organ


@lru_cache(maxsize=1024)
def both_sides_group(organ: str) -> Optional[str]:
    """The smallest group with ``organ`` and members on both sides (kidney_left -> kidney, lung_left -> lung)."""
    mine = set(_organs.expand(organ))
    best: Optional[str] = None
    for group, members in _organs.GROUPS.items():
        every = set(_organs.expand(group))
        if mine < every and {_side_of(m) for m in every} >= {"left", "right"}:
            if best is None or len(every) < len(_organs.expand(best)):
                best = group
    return best


def pair_sides(low: str, toks: List[Tuple[int, int, Info]], i: int) -> None:
    """Read two sides said in one phrase as both sides, in place, at the side word ``toks[i]``.

    "right and left renal cysts", "right greater than left pleural effusions": the side words become "both", and
    a sided organ after the first side word ("right and left kidney") becomes its group, so that the finding lands
    on each side as after "bilateral".
    """
    a, b, info = toks[i]
    if i + 1 >= len(toks) or (info.side != "left" and info.side != "right"):
        return
    c, d, nxt = toks[i + 1]
    other = nxt.side or (_side_of(nxt.mention) if nxt.mention else None)
    if other not in ("left", "right") or other == info.side or not _SIDE_PAIR.fullmatch(low, b, c):
        return
    toks[i] = (a, b, _BOTH)
    if nxt.side:
        toks[i + 1] = (c, d, _BOTH)
        return
    group = both_sides_group(nxt.mention)  # type: ignore[arg-type]
    if group is not None:
        mention = _GROUP_MENTIONS.get(group)
        if mention is None:
            mention = _GROUP_MENTIONS[group] = Info(organ=group, mention=group, whole=nxt.whole)
        toks[i + 1] = (c, d, mention)


def side_near(low: str, toks: Sequence[Tuple[int, int, Info]], lo_i: int, hi_i: int) -> Optional[str]:
    """A side word right before the phrase/organ ("left renal cyst") or shortly after ("... on the right")."""
    for i in range(hi_i, lo_i - 1, -1):  # "nodule at the right lung base", "bibasilar atelectasis"
        if toks[i][2].side:
            return toks[i][2].side
    anchor = toks[lo_i][0]
    for i in range(lo_i - 1, -1, -1):
        a, b, info = toks[i]
        if "," in low[b:anchor] or anchor - b > 30:
            break
        if info.side:
            if i and toks[i - 1][2].keys and _ON_THE.fullmatch(low, toks[i - 1][1], a):
                break  # "a cyst on the right and a stone": that side is said of the finding right before it
            return info.side
        if info.trigger == TERMINATE and i and toks[i - 1][2].side and _THERE.match(low, toks[i - 1][1], b):
            return toks[i - 1][2].side  # "... and on the left there is a stone": the side opens this clause
        if info.keys or info.organ or info.trigger == TERMINATE:
            break
    anchor = toks[hi_i][1]
    for i in range(hi_i + 1, len(toks)):
        a, b, info = toks[i]
        if info.keys and not info.side and _COORD.fullmatch(low, anchor, a):
            anchor = b  # "no hydronephrosis or nephrolithiasis bilaterally": the side ends the list
            continue
        if "," in low[anchor:a] or a - anchor > 25:
            break
        if info.side:
            if i + 1 < len(toks) and toks[i + 1][2].trigger == TERMINATE and _THERE.match(low, b, toks[i + 1][1]):
                break  # "a cyst and on the left there is a stone": the side opens the next clause
            return info.side
        if info.keys or info.organ or info.trigger == TERMINATE:
            break
    return None


def side_after_comma(low: str, toks: Sequence[Tuple[int, int, Info]], hi_i: int, end: int) -> Optional[str]:
    """A side said after a comma as all that follows the finding ``toks[hi_i]`` in its clause ("Pleural effusion,
    left.", "Hydronephrosis, mild, right.", "Small pleural effusion, right greater than left."), else None.

    Findings joined by "and"/"or" share it ("Renal cyst and hydronephrosis, left."). A side followed by more words
    ("Renal cyst, left kidney normal", "No hydronephrosis, left renal cyst", "Pleural effusions, larger on the left")
    is not read: there the side belongs to another organ or finding, or says something else.
    """
    anchor = toks[hi_i][1]
    n = len(toks)
    i = hi_i + 1
    while i < n and toks[i][2].keys and not toks[i][2].side and _AND_OR.fullmatch(low, anchor, toks[i][0]):
        anchor = toks[i][1]  # "renal cyst and hydronephrosis, left"
        i += 1
    if i >= n:
        return None
    a, b, info = toks[i]
    if not info.side or info.keys or info.organ or "," not in low[anchor:a]:
        return None
    if not _COMMA_LEAD.fullmatch(low, anchor, a):
        return None
    if info is _BOTH:  # a side that pair_sides joined with the next side or sided organ
        if i + 1 < n and toks[i + 1][2] is _BOTH and _SIDE_PAIR.fullmatch(low, b, toks[i + 1][0]):
            b = toks[i + 1][1]  # "right greater than left": both sides
        else:
            return None  # "Pleural effusion, right, left lower lobe atelectasis": the organ is another statement's
    if _COMMA_TAIL.match(low, b, end) is None:
        return None
    return info.side


def place(sites: Dict[str, str], organ: str, side: Optional[str]) -> List[str]:
    """Final organ names for a finding on ``organ`` given a side (``both`` gives two); ``sites`` are the
    finding's dictionary sites ({"left": class})."""
    own = _side_of(organ)
    sides = [own] if own else (["left", "right"] if side == "both" else [side] if side else [])
    if not sides:
        return [organ]
    out = []
    for s in sides:
        if organ in _CLASSES:
            out.append(organ)  # a lobe or a sided class is already as precise as it gets
        elif s in sites:
            out.append(sites[s])
        else:
            out.append(sided(organ, s))
    return list(dict.fromkeys(out))
