"""The organ vocabulary: TotalSegmentator v1/v2 classes, display names, groups, synonyms and lookup."""

from __future__ import annotations

import difflib
import json
import re
from functools import lru_cache
from importlib import resources
from typing import Dict, Iterable, List, Mapping, Tuple

from ctglip_sdk.errors import ConfigError, QueryError

__all__ = [
    "ORGANS",
    "V1",
    "V2",
    "GROUPS",
    "SYNONYMS",
    "V2_TO_V1",
    "label_map",
    "display_name",
    "lookup",
    "expand",
    "is_known",
    "side_of",
]


def _load_maps() -> Tuple[Dict[int, str], Dict[int, str]]:
    text = resources.files("ctglip_sdk.data").joinpath("totalsegmentator_classes.json").read_text("utf-8")
    raw = json.loads(text)
    return (
        {int(k): v for k, v in raw["total_v1"].items()},
        {int(k): v for k, v in raw["total_v2"].items()},
    )


V1, V2 = _load_maps()
#: The 104 TotalSegmentator v1 class names, in label-id order: CT-GLIP's organ set.
ORGANS: Tuple[str, ...] = tuple(V1[i] for i in sorted(V1))

# v2 renamed nothing that v1 had, but merged the heart chambers and added classes. A v2 name maps to the v1
# name when both exist; v2-only classes keep their names (kidney cysts are part of the kidney in v1).
V2_TO_V1: Dict[str, str] = {n: n for n in V2.values() if n in set(ORGANS)}
V2_TO_V1.update({"kidney_cyst_left": "kidney_left", "kidney_cyst_right": "kidney_right"})


def label_map(name: str) -> Dict[int, str]:
    """Return a label map ``{id: class name}`` by name: ``totalseg_v1`` (104 classes) or ``totalseg_v2`` (117).

    Example:
        >>> label_map("totalseg_v1")[5]
        'liver'
    """
    key = name.lower().replace("-", "_")
    if key in ("totalseg_v1", "total_v1", "v1"):
        return dict(V1)
    if key in ("totalseg_v2", "total_v2", "v2"):
        return dict(V2)
    raise ConfigError(f"unknown label map {name!r}; expected 'totalseg_v1' or 'totalseg_v2'")


def _prefixed(prefix: str) -> Tuple[str, ...]:
    return tuple(o for o in ORGANS if o.startswith(prefix))


#: Groups a report or query may name instead of a single class. Values are v1 class names.
GROUPS: Dict[str, Tuple[str, ...]] = {
    "kidney": ("kidney_left", "kidney_right"),
    "adrenal_gland": ("adrenal_gland_left", "adrenal_gland_right"),
    "lung": _prefixed("lung_"),
    "lung_left": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
    "lung_right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "heart": ("heart_myocardium", "heart_atrium_left", "heart_ventricle_left", "heart_atrium_right",
              "heart_ventricle_right"),
    "vertebrae": _prefixed("vertebrae_"),
    "lumbar_spine": _prefixed("vertebrae_L"),
    "thoracic_spine": _prefixed("vertebrae_T"),
    "cervical_spine": _prefixed("vertebrae_C"),
    "ribs": _prefixed("rib_"),
    "ribs_left": _prefixed("rib_left_"),
    "ribs_right": _prefixed("rib_right_"),
    "iliac_artery": ("iliac_artery_left", "iliac_artery_right"),
    "iliac_vena": ("iliac_vena_left", "iliac_vena_right"),
    "bowel": ("small_bowel", "duodenum", "colon"),
    "gluteus": _prefixed("gluteus_"),
    "autochthon": ("autochthon_left", "autochthon_right"),
    "iliopsoas": ("iliopsoas_left", "iliopsoas_right"),
    "hip": ("hip_left", "hip_right"),
    "femur": ("femur_left", "femur_right"),
    "humerus": ("humerus_left", "humerus_right"),
    "scapula": ("scapula_left", "scapula_right"),
    "clavicula": ("clavicula_left", "clavicula_right"),
}

# Free-text phrases -> canonical class or group names. Keys are lower-case, space separated. Adjectives
# ("hepatic", "renal") are here because reports and queries use them as often as the nouns.
_BASE_SYNONYMS: Dict[str, str] = {
    "liver": "liver", "hepatic": "liver", "hepato": "liver", "hepatobiliary": "liver",
    "spleen": "spleen", "splenic": "spleen",
    "kidney": "kidney", "kidneys": "kidney", "renal": "kidney", "nephro": "kidney",
    "gallbladder": "gallbladder", "gall bladder": "gallbladder", "cholecyst": "gallbladder",
    "cholecystic": "gallbladder", "gallstone": "gallbladder", "gallstones": "gallbladder",
    "biliary": "gallbladder",
    "pancreas": "pancreas", "pancreatic": "pancreas",
    "stomach": "stomach", "gastric": "stomach",
    "aorta": "aorta", "aortic": "aorta", "abdominal aorta": "aorta",
    "inferior vena cava": "inferior_vena_cava", "ivc": "inferior_vena_cava", "vena cava": "inferior_vena_cava",
    "portal vein": "portal_vein_and_splenic_vein", "splenic vein": "portal_vein_and_splenic_vein",
    "portal venous system": "portal_vein_and_splenic_vein",
    "adrenal": "adrenal_gland", "adrenals": "adrenal_gland", "adrenal gland": "adrenal_gland",
    "adrenal glands": "adrenal_gland", "suprarenal": "adrenal_gland",
    "lung": "lung", "lungs": "lung", "pulmonary": "lung", "pleural": "lung", "pleura": "lung",
    "lung bases": "lung", "lung base": "lung",
    "right upper lobe": "lung_upper_lobe_right", "rul": "lung_upper_lobe_right",
    "right middle lobe": "lung_middle_lobe_right", "rml": "lung_middle_lobe_right", "middle lobe": "lung_middle_lobe_right",
    "right lower lobe": "lung_lower_lobe_right", "rll": "lung_lower_lobe_right",
    "left upper lobe": "lung_upper_lobe_left", "lul": "lung_upper_lobe_left", "lingula": "lung_upper_lobe_left",
    "left lower lobe": "lung_lower_lobe_left", "lll": "lung_lower_lobe_left",
    "heart": "heart", "cardiac": "heart", "myocardium": "heart_myocardium", "pericardial": "heart",
    "left atrium": "heart_atrium_left", "right atrium": "heart_atrium_right",
    "left ventricle": "heart_ventricle_left", "right ventricle": "heart_ventricle_right",
    "pulmonary artery": "pulmonary_artery", "pulmonary trunk": "pulmonary_artery",
    "esophagus": "esophagus", "oesophagus": "esophagus", "esophageal": "esophagus", "oesophageal": "esophagus",
    "trachea": "trachea", "tracheal": "trachea",
    "brain": "brain",
    "small bowel": "small_bowel", "small intestine": "small_bowel", "jejunum": "small_bowel", "ileum": "small_bowel",
    "bowel": "bowel", "bowel loops": "bowel",
    "duodenum": "duodenum", "duodenal": "duodenum",
    "colon": "colon", "colonic": "colon", "large bowel": "colon", "large intestine": "colon",
    "urinary bladder": "urinary_bladder", "bladder": "urinary_bladder", "vesical": "urinary_bladder",
    "spine": "vertebrae", "vertebrae": "vertebrae", "vertebral": "vertebrae", "vertebra": "vertebrae",
    "lumbar spine": "lumbar_spine", "thoracic spine": "thoracic_spine", "cervical spine": "cervical_spine",
    "ribs": "ribs", "rib": "ribs", "costal": "ribs",
    "sacrum": "sacrum", "sacral": "sacrum", "face": "face",
    "iliac artery": "iliac_artery", "iliac arteries": "iliac_artery",
    "iliac vein": "iliac_vena", "iliac veins": "iliac_vena",
    "femur": "femur", "humerus": "humerus", "scapula": "scapula", "clavicle": "clavicula", "clavicula": "clavicula",
    "hip": "hip", "iliopsoas": "iliopsoas", "psoas": "iliopsoas", "gluteus": "gluteus", "gluteal": "gluteus",
    "paraspinal muscles": "autochthon", "autochthon": "autochthon", "erector spinae": "autochthon",
}

# Words that put a sided group on one side. "right renal" and "renal ... right" both say kidney_right.
_SIDE_WORDS = {"left": "left", "lt": "left", "right": "right", "rt": "right"}


def _sided(group: str, side: str) -> str:
    members = GROUPS.get(group, ())
    sided = [m for m in members if m.endswith("_" + side) or ("_" + side + "_") in m or m.startswith(f"{group}_{side}")]
    if f"{group}_{side}" in GROUPS:
        return f"{group}_{side}"
    if len(sided) == 1:
        return sided[0]
    return group


def _build_synonyms() -> Dict[str, str]:
    syn = dict(_BASE_SYNONYMS)
    for organ in ORGANS:
        syn.setdefault(organ.replace("_", " "), organ)
        syn.setdefault(display_name(organ).lower(), organ)
    for group in GROUPS:
        syn.setdefault(group.replace("_", " "), group)
    # "left kidney", "left renal", "right adrenal", "left lung" ... for every sided group.
    for phrase, target in list(syn.items()):
        if target in GROUPS and " " not in phrase:
            for side in ("left", "right"):
                sided = _sided(target, side)
                if sided != target:
                    syn.setdefault(f"{side} {phrase}", sided)
    for n in range(1, 13):
        for side in ("left", "right"):
            syn.setdefault(f"{side} rib {n}", f"rib_{side}_{n}")
    for v in [o for o in ORGANS if o.startswith("vertebrae_")]:
        level = v.split("_")[1]
        syn.setdefault(level.lower(), v)
        syn.setdefault(f"{level.lower()} vertebra", v)
    return syn


_DISPLAY_OVERRIDES = {
    "portal_vein_and_splenic_vein": "portal and splenic vein",
    "inferior_vena_cava": "inferior vena cava",
    "iliac_vena_left": "left iliac vein",
    "iliac_vena_right": "right iliac vein",
    "clavicula_left": "left clavicle",
    "clavicula_right": "right clavicle",
    "autochthon_left": "left paraspinal muscles",
    "autochthon_right": "right paraspinal muscles",
}


def display_name(organ: str) -> str:
    """Human name of a class or group: ``kidney_left`` -> ``left kidney``, ``vertebrae_L1`` -> ``L1 vertebra``.

    Example:
        >>> display_name("lung_upper_lobe_right")
        'right upper lobe of the lung'
    """
    if organ in _DISPLAY_OVERRIDES:
        return _DISPLAY_OVERRIDES[organ]
    if organ.startswith("vertebrae_"):
        return f"{organ.split('_')[1]} vertebra"
    m = re.fullmatch(r"rib_(left|right)_(\d+)", organ)
    if m:
        return f"{m.group(1)} rib {m.group(2)}"
    m = re.fullmatch(r"lung_(upper|middle|lower)_lobe_(left|right)", organ)
    if m:
        return f"{m.group(2)} {m.group(1)} lobe of the lung"
    parts = organ.split("_")
    if parts[-1] in ("left", "right"):
        return " ".join([parts[-1]] + parts[:-1])
    return organ.replace("_", " ")


@lru_cache(maxsize=1)
def _synonyms() -> Dict[str, str]:
    return _build_synonyms()


class _SynonymView(Mapping[str, str]):
    """Read-only view so that callers cannot edit the shared table by accident."""

    def __getitem__(self, key: str) -> str:
        return _synonyms()[key]

    def __iter__(self):  # type: ignore[override]
        return iter(_synonyms())

    def __len__(self) -> int:
        return len(_synonyms())


#: Phrase (lower case) -> canonical class or group name.
SYNONYMS: Mapping[str, str] = _SynonymView()


def is_known(name: str) -> bool:
    """True when ``name`` is a v1 class, a v2-only class or a group."""
    return name in V1.values() or name in V2.values() or name in GROUPS


def expand(name: str) -> Tuple[str, ...]:
    """Canonical name or group -> the v1 classes it covers (a class gives itself).

    Example:
        >>> expand("kidney")
        ('kidney_left', 'kidney_right')
    """
    if name in GROUPS:
        return GROUPS[name]
    if is_known(name):
        return (name,)
    raise QueryError(f"unknown organ {name!r}; see ctglip_sdk.organs.ORGANS and GROUPS")


def _normalise(text: str) -> str:
    text = text.lower().strip()
    text = re.sub(r"^(the|a|an)\s+", "", text)
    return re.sub(r"[\s_\-]+", " ", text)


def lookup(text: str) -> List[str]:
    """Resolve a name, synonym or group as users write it to canonical v1 class names.

    Accepts canonical names (``kidney_left``), display names (``left kidney``), adjectives (``renal``) and
    groups (``lung`` -> every lobe). Raises ``QueryError`` with close matches for unknown text.

    Example:
        >>> lookup("right kidney")
        ['kidney_right']
        >>> lookup("renal")
        ['kidney_left', 'kidney_right']
    """
    if not isinstance(text, str) or not text.strip():
        raise QueryError(f"empty organ name {text!r}")
    if text in GROUPS or is_known(text):
        return list(expand(text))
    key = _normalise(text)
    syn = _synonyms()
    target = syn.get(key)
    if target is None:
        # "kidney left" / "renal, right": side words anywhere in the phrase.
        words = key.replace(",", " ").split()
        sides = {_SIDE_WORDS[w] for w in words if w in _SIDE_WORDS}
        rest = " ".join(w for w in words if w not in _SIDE_WORDS)
        base = syn.get(rest)
        if base is not None and len(sides) == 1:
            target = _sided(base, sides.pop()) if base in GROUPS else base
        else:
            target = base
    if target is None:
        close = difflib.get_close_matches(key, list(syn), n=3, cutoff=0.75)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise QueryError(f"unknown organ {text!r}{hint}")
    return list(expand(target))


def side_of(organ: str) -> str | None:
    """``'left'``/``'right'`` for a sided class, else None."""
    for side in ("left", "right"):
        if organ.endswith("_" + side) or f"_{side}_" in organ:
            return side
    return None


def canonical_set(names: Iterable[str]) -> Tuple[str, ...]:
    """Expand several names/groups into a sorted tuple of unique v1 classes."""
    out: set = set()
    for n in names:
        out.update(lookup(n))
    return tuple(sorted(out))
