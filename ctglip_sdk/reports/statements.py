"""Small rules of a sentence's statements: merging a finding said twice, folding a group into its sides, and
whether a denial says anything of an organ's other findings."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Sequence, Tuple

from ctglip_sdk.reports.sides import _expand
from ctglip_sdk.reports.types import _RANK, OrganFinding, Status
from ctglip_sdk.reports.vocab import Info

__all__ = ["merge_status", "fold_groups", "denies_other", "examined", "span_start", "bare"]

# An organ named as what the study could examine ("evaluation of the liver is limited"): a word about the study.
_EXAMINED = re.compile(r"(?:evaluation|assessment|visuali[sz]ation|delineation)\s+of\s+(?:the\s+)?$")
# An organ adjective before a word the vocabulary does not know ("pulmonary embolus", "splenic infarct").
_ADJECTIVE_OF = re.compile(r"[ \-]([a-z]{3,})")


def denies_other(low: str, toks: Sequence[Tuple[int, int, Info]], ti: int, end: int) -> bool:
    """Whether the organ mention ``toks[ti]`` is an adjective of a word the vocabulary does not know ("no
    splenic infarct", "no adrenal haemorrhage") and nothing it knows follows: then a negation denies that
    word, not every finding of the organ, so the sentence is no statement that the organ is normal."""
    b = toks[ti][1]
    if _ADJECTIVE_OF.match(low, b, end) is None or (ti + 1 < len(toks) and toks[ti + 1][0] <= b + 1):
        return False
    # "No bowel obstruction or wall thickening" goes on to words the vocabulary knows: still a normal bowel
    return not any(t[2].keys or t[2].generic for t in toks[ti + 1:])


def examined(low: str, start: int, a: int) -> bool:
    """Whether the organ mention at ``low[a]`` is the object of an evaluation ("Without contrast, evaluation of the
    liver is limited"): the sentence says how well the organ was seen, nothing of the organ itself."""
    return _EXAMINED.search(low, a - 30 if a - 30 > start else start, a) is not None


def fold_groups(specific: Dict[Tuple[str, str], List[Any]]) -> None:
    """Fold "kidney: renal_cyst" into "kidney_right: renal_cyst" said in the same sentence ("cyst in the right
    kidney, Bosniak II")."""
    for organ, key in list(specific):
        members = _expand(organ)
        if len(members) < 2:
            continue
        finer = [(o, k) for (o, k) in specific if k == key and o != organ and set(_expand(o)) <= set(members)]
        if finer:
            status, weak, span = specific.pop((organ, key))
            for ok in finer:
                merge_status(specific, ok, status, weak, span)


def merge_status(table: Dict[Tuple[str, str], List[Any]], key: Tuple[str, str], status: Status, weak: bool,
                 span: Tuple[int, int]) -> None:
    """Record ``status`` for (organ, finding) ``key``: present > uncertain > absent, a firm word over "likely"."""
    cur = table.get(key)
    if cur is None:
        table[key] = [status, weak, span]
    elif _RANK[status] > _RANK[cur[0]]:
        table[key] = [status, weak, span]
    elif status is cur[0] and cur[1] and not weak:
        cur[1] = False


def span_start(f: OrganFinding) -> int:
    return f.span[0]


def bare(info: Info) -> bool:
    """Whether a phrase only names an operation, a missing organ or a side ("left", "nephrectomy", "removed")."""
    return not (info.trigger or info.organ or info.keys or info.normal or info.generic or info.heading_organs)
