"""Words for the TotalSegmentator 2 classes that v1 lacks, for reading search text ("thyroid nodule")."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Dict, Tuple

__all__ = ["V2_PHRASES", "v2_named_in"]

# Kept apart from organs.SYNONYMS on purpose: SYNONYMS feeds the report parser and the word list a text tower's
# tokenizer is trained on, so adding words there would change how stored reports parse and what a retrained
# model sees. These phrases are only read in search text, where a v2 index's organs must be reachable.
_SIDED = {  # phrase -> class stem; "left <phrase>" / "right <phrase>" pick one side, the bare phrase both
    "common carotid artery": "common_carotid_artery", "common carotid": "common_carotid_artery",
    "carotid artery": "common_carotid_artery", "carotid": "common_carotid_artery",
    "subclavian artery": "subclavian_artery", "subclavian": "subclavian_artery",
    "brachiocephalic vein": "brachiocephalic_vein", "innominate vein": "brachiocephalic_vein",
}
_PLAIN = {
    "thyroid": "thyroid_gland", "thyroid gland": "thyroid_gland",
    "prostate": "prostate", "prostatic": "prostate", "prostate gland": "prostate",
    "spinal cord": "spinal_cord",
    "superior vena cava": "superior_vena_cava", "svc": "superior_vena_cava",
    "sternum": "sternum", "sternal": "sternum", "breastbone": "sternum", "breast bone": "sternum",
    "skull": "skull", "calvarium": "skull", "cranium": "skull",
    "costal cartilage": "costal_cartilages", "costal cartilages": "costal_cartilages",
    "pulmonary vein": "pulmonary_vein", "pulmonary veins": "pulmonary_vein",
    "brachiocephalic trunk": "brachiocephalic_trunk", "brachiocephalic artery": "brachiocephalic_trunk",
    "innominate artery": "brachiocephalic_trunk",
    "left atrial appendage": "atrial_appendage_left",  # v2 segments the left one only: "right atrial ..." is none
    "s1 vertebra": "vertebrae_S1", "first sacral vertebra": "vertebrae_S1",
}


def _phrases() -> Dict[str, Tuple[str, ...]]:
    out: Dict[str, Tuple[str, ...]] = {p: (c,) for p, c in _PLAIN.items()}
    for phrase, stem in _SIDED.items():
        out[phrase] = (f"{stem}_left", f"{stem}_right")
        if phrase.endswith(("artery", "vein")):
            out[phrase[:-1] + "ies" if phrase.endswith("y") else phrase + "s"] = out[phrase]
        for side in ("left", "right"):
            out[f"{side} {phrase}"] = (f"{stem}_{side}",)
    return out


#: Phrase (lower case) -> the v2-only classes it names.
V2_PHRASES: Dict[str, Tuple[str, ...]] = _phrases()


@lru_cache(maxsize=1)
def _pattern() -> "re.Pattern[str]":
    # Longest phrase first, so "left common carotid artery" wins over "carotid"; whole words only ("svc" is
    # not inside another word, "sternal" not in "sternocleidomastoid").
    alts = sorted(V2_PHRASES, key=len, reverse=True)
    # not a vessel that merely shares the words ("internal carotid artery" is no common carotid)
    return re.compile(r"(?<!internal )(?<!external )\b(" + "|".join(re.escape(a).replace(r"\ ", r"[\s_\-]+")
                                                               for a in alts) + r")\b", re.I)


def v2_named_in(text: str) -> Tuple[Tuple[str, ...], str]:
    """The v2-only classes ``text`` names, and the text with those words blanked out (for the finding reader).

    Example:
        >>> v2_named_in("nodule in the left thyroid gland")[0]
        ('thyroid_gland',)
        >>> v2_named_in("superior vena cava thrombus")
        (('superior_vena_cava',), ' thrombus')
    """
    found: Dict[str, None] = {}

    def blank(m: "re.Match[str]") -> str:
        found.update(dict.fromkeys(V2_PHRASES[re.sub(r"[\s_\-]+", " ", m.group(1).lower())]))
        return ""

    rest = _pattern().sub(blank, text)
    return tuple(found), rest
