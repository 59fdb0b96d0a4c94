"""Lay words in search texts: "big liver", "spot on the lung", "water around the lungs", "smoker's lung".

Researchers type lay phrasings into search; reports never use them. The lexicon below maps lay words onto the
clinical terms a dictionary already uses ("swollen" means what "enlarged" means), and :func:`lay_dictionary`
turns it, for any dictionary, into a *query-only* copy whose findings also carry the lay words of the clinical
terms they carry themselves. That copy is read by the same parser as reports, so organs, sides, negation and the
choice between an organ's findings all work as for clinical words; the report vocabulary is never touched.

Why query-only: reports do use some of these words with another sense ("small right pleural effusion", "left
pleural effusion (large)", "mass effect"); made report vocabulary, they would change the parsed training labels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, FrozenSet, List, Mapping, Tuple

from ctglip_sdk import organs as _organs
from ctglip_sdk.reports.dictionary import _TOP_LISTS, AbnormalityDictionary, FindingEntry
from ctglip_sdk.reports.vocab import Vocab

__all__ = ["LayTerm", "LAY_TERMS", "LAY_ORGANS", "lay_dictionary", "lay_organs"]


@dataclass(frozen=True)
class LayTerm:
    """Lay ``words`` that say what the clinical terms ``means`` say.

    A finding whose synonyms or descriptors contain one of ``means`` (exact phrase, any case) gets ``words`` as
    descriptors (they need an organ from the text, as "enlarged" does); one that has it only among its hedged words
    gets them as hedged words ("widened aorta" is as uncertain an aneurysm as "dilated aorta"). With ``names``, the
    words name the finding and its organ on their own and are matched against synonyms only ("smoker's lung").
    ``sized`` lesion nouns also take a size word before them as one phrase ("large lump"), so that the size word is
    not read as the organ's enlargement.
    """

    means: FrozenSet[str]
    words: Tuple[str, ...]
    names: bool = False
    sized: bool = False


def _term(means: str, words: str, names: bool = False, sized: bool = False) -> LayTerm:
    """A LayTerm from ``|``-separated lists (the table stays readable)."""
    return LayTerm(frozenset(m.strip() for m in means.split("|")), tuple(w.strip() for w in words.split("|")),
                   names, sized)


# Comparatives take "than normal"-style endings as one phrase, so that "normal" is not read as a normal statement
# ("spleen is larger than normal").
_COMPARATIVES = ("bigger", "larger", "smaller", "wider", "thicker")
_THAN = ("than normal", "than usual", "than expected", "than it should be", "than they should be")
# Size words before a lay lesion noun describe the lesion, not the organ ("big lump in the liver").
_SIZES = ("big", "large", "small", "tiny", "little", "huge", "giant")

#: The lay lexicon. Keys name the idea; ``means`` are clinical terms as dictionaries spell them. A lay word is
#: listed under one idea only (tests check it), so a finding gets it with one status.
LAY_TERMS: Dict[str, LayTerm] = {
    # organ size: onto the organ's own enlargement ("enlarged liver" -> hepatomegaly, "aneurysmal aorta")
    "enlarged": _term(
        "enlarged|enlargement|aneurysm|aneurysmal",
        "enlarged|enlargement|big|bigger|large|larger|huge|giant|oversized|too big|too large|swollen|swelling|"
        "swelled|bulging|bulge|bulges|ballooned|ballooning|balloon|ballooning out|expanded|blown up"),
    # a tube widened along its length: "dilated" is hedged for the aorta, a certainty for the pancreatic duct
    "dilated": _term("dilated|dilatation|dilation", "widened|widening|wide|wider|stretched"),
    "atrophic": _term(
        "atrophy|atrophic",
        "shrunken|shrunk|shrank|shrinking|shrinkage|shrivelled|shriveled|shrivelling|shriveling|withered|"
        "wasted|wasting|small|smaller|tiny|undersized|too small"),
    # focal lesions. A "lump" or "growth" is solid: onto findings that call themselves a mass or tumour.
    "mass": _term("mass|tumor|tumour|neoplasm", "lump|lumpy|growth", sized=True),
    # a "spot" may be any focal lesion: where an organ has several (hepatic cyst and hepatic mass), the parser
    # gets several candidates and gives no finding, as it does for "liver lesion"
    "lesion": _term("lesion|focal lesion|nodule|mass", "spot|speck|dot|mark|blob|bump",
                    sized=True),
    # a "shadow" or "patch" may also be an airspace opacity: on the lung it stays undecided (nodule or consolidation)
    "shadow": _term("lesion|nodule|mass|opacity|opacities", "shadow|shadowing|patch|cloudy patch|hazy patch|"
                    "cloudy area|hazy area|white patch", sized=True),
    # "hydro-" is water: "water on the kidney" is the lay name of hydronephrosis
    "fluid": _term("fluid|effusion|effusions|hydronephrosis|hydrothorax",
                   "water|watery fluid|liquid|fluid build up|fluid buildup|build up of fluid|buildup of fluid|"
                   "water build up|water buildup|water retention"),
    "calcification": _term("calcification|calcifications",
                           "calcium|calcium deposit|calcium deposits|calcium build up|calcium buildup|calcified|"
                           "calcium spots|chalky deposits|hardening|hardened|hardening of|calcs|calc"),
    # radiologists' shorthand typed into search: "right hydro" (reports spell it out, so it stays query-only)
    "hydro": _term("hydronephrosis", "hydro", names=True),
    # a kidney that cannot drain swells with urine: the lay names of hydronephrosis ("swollen" alone is size)
    "blocked kidney": _term("hydronephrosis", "blocked kidney|blocked kidneys|kidney blockage|obstructed kidney|"
                            "obstructed kidneys|swollen kidney|swollen kidneys|kidney swelling", names=True),
    # shorthand for nodules in search boxes ("lung nods", "adrenal nod")
    "nods": _term("nodule|nodules", "nod|nods"),
    "stone": _term("stone|stones|calculus|calculi", "gravel|pebble|grit"),
    "thrombus": _term("thrombus|thrombosis", "clot|blood clot|clotted|clotting|blocked by a clot"),
    "fracture": _term("fracture|fractures", "broken|break|cracked|crack|crushed|crush|snapped"),
    "collapse": _term("collapse", "collapsed|collapsing|caved in|squashed|flattened"),
    "thickening": _term("thickening|thickened", "thick|thicker|thick wall|thick walls"),
    "fatty": _term("steatosis|fatty infiltration|fatty change",
                   "fat|fatty|fat deposits|fatty deposits|fat build up|fat buildup|fatty build up|fatty buildup"),
    "diverticula": _term("diverticula|diverticulum",
                         "pouch|pouches|pockets|little pouches|outpouching|outpouchings"),
    # an organ's infection is a synonym of one of its findings in the dictionary (pneumonia is a consolidation)
    "infection": _term("pneumonia|cholecystitis|cystitis", "infection|infected|inflamed"),
    "bullae": _term("bullae|bullous disease|emphysema", "holes|hole|air pockets|air pocket|air holes"),
    "emphysema": _term("emphysema", "smoker's lung|smoker lung|smokers' lung|smoker's lungs|smokers lungs|"
                       "lung damage from smoking|smoking damage to the lungs|smoking damaged lungs", names=True),
}
#: Lay organ names, read in queries only; an entry counts where the organ table knows the organ (TotalSegmentator
#: v1 has no larynx, so "voice box" names nothing until it does).
LAY_ORGANS: Dict[str, str] = {
    "windpipe": "trachea", "wind pipe": "trachea",
    "gullet": "esophagus", "food pipe": "esophagus", "foodpipe": "esophagus", "swallowing tube": "esophagus",
    "voice box": "larynx", "breastbone": "sternum", "breast bone": "sternum",
    # "fluid in the chest", "chest infection": as a report heading, "Chest:" already means the lungs
    "chest": "lung", "chest cavity": "lung",
    "heart arteries": "heart", "heart artery": "heart", "arteries of the heart": "heart", "heart vessels": "heart",
    "heart muscle": "heart_myocardium", "main artery": "aorta", "body's main artery": "aorta", "ao": "aorta",
    # (main) pancreatic duct in shorthand: "dilated PD", "MPD dilatation" (the pancreas, whose duct finding
    # "dilated" names there)
    "pd": "pancreas", "mpd": "pancreas",
    "backbone": "vertebrae", "back bone": "vertebrae", "spinal column": "vertebrae", "spinal bones": "vertebrae",
    "spine bones": "vertebrae", "vertebral column": "vertebrae",
    "tailbone": "sacrum", "tail bone": "sacrum", "collarbone": "clavicula", "collar bone": "clavicula",
    "shoulder blade": "scapula", "thighbone": "femur", "thigh bone": "femur", "hip bone": "hip", "hipbone": "hip",
    "ribcage": "ribs", "rib cage": "ribs", "large intestine": "colon", "small intestine": "small_bowel",
    "intestine": "bowel", "intestines": "bowel", "bowels": "bowel", "gut": "bowel", "guts": "bowel",
}


def _forms(word: str) -> List[str]:
    """A lay word as typed: "smoker's lung" also without its apostrophe (plurals come from the vocabulary)."""
    out = [word]
    if "'" in word:
        out.append(word.replace("'", ""))
    return out


def _words_of(term: LayTerm) -> Tuple[str, ...]:
    """The phrases of a lay idea: its words, comparatives with "than normal", lesion nouns after a size word."""
    out: Dict[str, None] = {}
    for w in term.words:
        for f in _forms(w):
            out[f] = None
            if f in _COMPARATIVES:
                for than in _THAN:
                    out[f"{f} {than}"] = None
            if term.sized:
                for size in _SIZES:
                    out[f"{size} {f}"] = None
    return tuple(out)


def _lay_entry(entry: FindingEntry) -> FindingEntry:
    """``entry`` with the lay words of the clinical terms it carries (the same entry when it carries none)."""
    named = {p.lower() for p in (entry.name, *entry.synonyms)}
    described = named | {p.lower() for p in entry.descriptors}
    hedged = {p.lower() for p in entry.hedged}
    syn: List[str] = []
    desc: List[str] = []
    hed: List[str] = []
    for term in LAY_TERMS.values():
        if term.names:
            if named & term.means:
                syn.extend(_words_of(term))
        elif described & term.means:
            desc.extend(_words_of(term))
        elif hedged & term.means:
            hed.extend(_words_of(term))
    if not (syn or desc or hed):
        return entry
    return replace(entry, synonyms=_merge(entry.synonyms, syn), descriptors=_merge(entry.descriptors, desc),
                   hedged=_merge(entry.hedged, hed))


def _merge(old: Tuple[str, ...], new: List[str]) -> Tuple[str, ...]:
    return tuple(dict.fromkeys((*old, *new)))


def lay_organs() -> Dict[str, str]:
    """The lay organ names whose organ the organ table knows, and the plurals of one-word organ names ("swollen
    livers"), where they name no organ already."""
    out = {p: o for p, o in LAY_ORGANS.items() if _organs.is_known(o) and p not in _organs.SYNONYMS}
    for p, o in list(_organs.SYNONYMS.items()) + list(out.items()):
        if p.isalpha() and not p.endswith("s"):
            out.setdefault(f"{p}s", o)
    return {p: o for p, o in out.items() if p not in _organs.SYNONYMS}


def lay_dictionary(dictionary: AbnormalityDictionary) -> AbnormalityDictionary:
    """The query-only copy of ``dictionary`` whose findings also carry lay words, with its own vocabulary.

    Same keys, organs and prompts as ``dictionary``; only the words that select findings differ. Built once per
    dictionary instance and cached on it (dictionaries are immutable).

    Example:
        >>> base = AbnormalityDictionary.default()
        >>> "swollen" in lay_dictionary(base)["splenomegaly"].descriptors, "swollen" in base["splenomegaly"].descriptors
        (True, False)
    """
    cached = dictionary._lay
    if cached is not None:
        return cached
    data: Mapping[str, object] = {
        "version": f"{dictionary.version}+lay", "description": dictionary.description,
        "findings": {e.key: _lay_entry(e) for e in dictionary.findings()},
        "organ_normals": dictionary.organ_normals, "prompt_templates": dictionary.prompt_templates,
        **{name: getattr(dictionary, name) for name in _TOP_LISTS},
    }
    lay = AbnormalityDictionary(data, source=dictionary.source)
    lay._vocab = Vocab(lay, extra_organs=lay_organs())
    lay._lay = lay  # a copy already reads lay words
    dictionary._lay = lay
    return lay
