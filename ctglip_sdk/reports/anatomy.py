"""Anatomy words of the parser vocabulary: sides, organ phrases the organ table lacks, operations that remove an
organ, words that say an organ is missing, anatomy outside the 104 classes, and heading-only organ words."""

from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, Tuple

__all__ = ["SIDE_WORDS", "SIDE_ABBREVIATIONS", "EXTRA_ORGANS", "ORGAN_ABBREVIATIONS", "WEAK_ORGANS", "RESECTIONS",
           "PARTIAL_RESECTIONS", "MISSING", "OTHER_ANATOMY", "VESSEL_WORDS", "VESSEL_PHRASES", "HEADING_ORGANS",
           "sided_finding_phrases"]

SIDE_WORDS: Dict[str, str] = {
    "left": "left", "right": "right", "left sided": "left", "right sided": "right", "bilateral": "both",
    "bilaterally": "both", "both": "both", "bibasilar": "both", "bibasal": "both", "bilateral lower lobe": "both",
    # abbreviations that mean nothing else before an organ or finding in a CT report ("Lt renal calculus")
    "lt": "left", "rt": "right", "bilat": "both", "b/l": "both",
    # the lone letters are sides only before an organ or a finding (below), or paired ("R and L hydronephrosis")
    "r and l": "both", "l and r": "both", "r or l": "both", "l or r": "both", "r & l": "both", "l & r": "both",
    "r/l": "both", "l/r": "both",
}
# Organ phrases "left X"/"right X" are also matched as "lt X"/"rt X" and, where X is a word of four letters or
# more, "l X"/"r X" ("the L kidney", "R renal cyst"): a lone letter is read as a side only before an organ.
SIDE_ABBREVIATIONS: Dict[str, Tuple[str, ...]] = {"left": ("lt", "l"), "right": ("rt", "r")}

# Organ phrases that the shared organ table lacks and reports use for locations (kept inside this package).
EXTRA_ORGANS: Dict[str, str] = {
    "caudate lobe": "liver", "hepatic lobe": "liver", "hepatic dome": "liver", "liver dome": "liver",
    "intrahepatic": "liver", "hepatic parenchyma": "liver", "hepatic segment": "liver", "right lobe of the liver":
    "liver", "left lobe of the liver": "liver", "hepatic": "liver", "hepatically": "liver",
    "renal pelvis": "kidney", "renal pelves": "kidney", "collecting system": "kidney",
    "collecting systems": "kidney", "calyces": "kidney", "calyx": "kidney", "calyceal": "kidney",
    "perinephric": "kidney", "perirenal": "kidney", "renal sinus": "kidney", "renal cortex": "kidney",
    "renal parenchyma": "kidney", "pancreatic duct": "pancreas", "main pancreatic duct": "pancreas",
    "pancreatic head": "pancreas", "pancreatic body": "pancreas", "pancreatic tail": "pancreas",
    "uncinate process": "pancreas", "pancreatic parenchyma": "pancreas", "gallbladder fossa": "gallbladder",
    "gallbladder neck": "gallbladder", "gallbladder wall": "gallbladder", "gallbladder lumen": "gallbladder",
    "infrarenal aorta": "aorta", "thoracic aorta": "aorta", "aortic arch": "aorta", "aortic wall": "aorta",
    "aortoiliac": "aorta", "suprarenal aorta": "aorta", "descending aorta": "aorta", "ascending aorta": "aorta",
    "coronary": "heart", "coronary arteries": "heart", "coronary artery": "heart", "pericardium": "heart",
    "lung apices": "lung", "lung apex": "lung", "upper lobes": "lung", "lower lobes": "lung", "upper lobe": "lung",
    "lower lobe": "lung", "pleural space": "lung", "pleural spaces": "lung", "hemithorax": "lung",
    "haemithorax": "lung", "lung fields": "lung", "pulmonary parenchyma": "lung", "lingular": "lung_upper_lobe_left",
    "bibasilar": "lung", "bibasal": "lung", "lung bases": "lung", "bases": "lung", "apices": "lung",
    "sigmoid": "colon", "sigmoid colon": "colon", "caecum": "colon", "cecum": "colon", "rectosigmoid": "colon",
    "esophageal hiatus": "stomach", "oesophageal hiatus": "stomach",
    "adrenal limb": "adrenal_gland", "adrenal limbs": "adrenal_gland", "bladder wall": "urinary_bladder",
    "vertebral body": "vertebrae", "vertebral bodies": "vertebrae", "main portal vein": "portal_vein_and_splenic_vein",
    "portal veins": "portal_vein_and_splenic_vein", "spleen tip": "spleen",
    # Couinaud liver segments in Roman numerals are as good as naming the liver ("cyst in segment VII").
    **{f"segment {r}": "liver" for r in ("i", "ii", "iii", "iv", "iva", "ivb", "v", "vi", "vii", "viii")},
    **{f"segments {r}": "liver" for r in ("ii", "iii", "iv", "v", "vi", "vii", "viii")},
    "couinaud segment": "liver", "hepatic segments": "liver",
    # colon anatomy named after its neighbours: "hepatic flexure diverticulosis" is not about the liver
    "hepatic flexure": "colon", "splenic flexure": "colon",
}
# Organ names in short ("GB wall thickening"), only where they mean nothing else in a CT report.
ORGAN_ABBREVIATIONS: Dict[str, str] = {"gb": "gallbladder"}
# Couinaud segments in Arabic numerals ("lesion in segment 7") name the liver only when the sentence names no other
# organ, nor its heading: lung segments are numbered too.
WEAK_ORGANS: Dict[str, str] = {
    **{f"segment {n}": "liver" for n in ("1", "2", "3", "4", "4a", "4b", "5", "6", "7", "8")},
    **{f"segments {n}": "liver" for n in ("2", "3", "4", "5", "6", "7", "8")},
}

# Operations that remove an organ whole ("status post cholecystectomy", "post left nephrectomy"): the organ is
# not there, so no statement of the report makes it a normal organ. Partial operations leave the organ and are
# matched only so that the word inside them does not count.
RESECTIONS: Dict[str, str] = {
    "cholecystectomy": "gallbladder", "splenectomy": "spleen", "nephrectomy": "kidney",
    "nephroureterectomy": "kidney", "adrenalectomy": "adrenal_gland", "pneumonectomy": "lung",
    "radical cystectomy": "urinary_bladder", "cystoprostatectomy": "urinary_bladder", "total colectomy": "colon",
    "proctocolectomy": "colon", "total gastrectomy": "stomach", "total pancreatectomy": "pancreas",
    # shorthand and traces of a cholecystectomy ("S/p lap chole.", "Post-chole.", "clips in the gallbladder fossa")
    "chole": "gallbladder", "lap chole": "gallbladder", "lap cholecystectomy": "gallbladder",
    **{f"{s}clips in the {bed}": "gallbladder" for s in ("", "surgical ", "cholecystectomy ")
       for bed in ("gallbladder fossa", "gallbladder bed", "gb fossa")},
}
PARTIAL_RESECTIONS = ("partial nephrectomy", "partial adrenalectomy", "partial splenectomy", "partial cystectomy",
                      "partial pneumonectomy", "partial colectomy", "partial gastrectomy", "partial pancreatectomy")
# Words that say the organ next to them is not there: removed ("the gallbladder is surgically absent", "has been
# removed", "absent spleen") or not seen on this study ("the right kidney is not visualized").
MISSING: Dict[str, str] = {
    "surgically absent": "resected", "absent": "resected", "removed": "resected", "surgically removed": "resected",
    # "The gallbladder is absent": the longer negation cue "is absent" would otherwise make it a normal organ
    "is absent": "resected", "are absent": "resected",
    "resected": "resected", "surgically resected": "resected", "excised": "resected",
    "not visualized": "unseen", "not visualised": "unseen", "not seen": "unseen", "not identified": "unseen",
    "not demonstrated": "unseen", "not visible": "unseen", "not present": "unseen",
}

OTHER_ANATOMY = (
    "ureter", "ureters", "ureteral", "ureteric", "ureterovesical junction", "uvj", "pelviureteric junction", "puj",
    "bile duct", "bile ducts", "common bile duct", "cbd", "common duct",
    # bile ducts in a sentence ("biliary dilatation"); as headings these words still give the gallbladder, below
    "biliary", "biliary tree", "biliary ducts",
    "lymph node", "lymph nodes", "nodal",
    "ovary", "ovaries", "ovarian", "adnexa", "adnexal", "uterus", "uterine", "endometrium", "endometrial",
    "prostate", "prostatic", "seminal vesicles", "thyroid", "appendix", "appendiceal", "mesentery", "mesenteric",
    "peritoneum", "peritoneal", "retroperitoneum", "retroperitoneal", "omentum", "omental", "chest wall",
    "abdominal wall", "subcutaneous", "skin", "breast", "breasts", "testis", "testes", "scrotal", "thymus",
    "axilla", "axillary", "soft tissues", "soft tissue", "renal artery", "renal arteries", "renal vein",
    "splenic artery", "hepatic artery", "hepatic veins", "hepatic vein", "superior mesenteric artery",
    "mesenteric artery", "celiac axis", "coeliac axis", "urethra", "vagina", "rectum", "anal canal",
    # a TotalSegmentator 2 class, not v1's inferior vena cava, which "vena cava" alone names
    "superior vena cava", "svc",
    # the side word would otherwise make "left renal" the kidney ("Left renal vein is patent" is not a normal kidney)
    "renal arterial", "renal veins",
    *(f"{side} renal {vessel}" for side in ("left", "right", "lt", "rt", "l", "r")
      for vessel in ("vein", "veins", "artery", "arteries", "arterial")),
    # heart valves: "aortic valve calcification" is neither the aorta's nor the coronaries' calcification
    "aortic valve", "aortic valves", "aortic valvular", "mitral valve", "mitral annulus", "mitral annular",
    "aortic valve leaflets", "mitral valve leaflets",
)
# First words of a phrase that puts it in a vessel wall ("vascular calcification", "atherosclerotic calcification"):
# said under another organ's heading, it is not that organ's finding named by its last word (a renal stone).
VESSEL_WORDS = frozenset(("vascular", "arterial", "atherosclerotic", "atheromatous", "mural"))
# "Arterial calcification", "arterial (calcific) plaque": a vessel wall's, as "vascular calcification" is. Each
# phrase takes the vessel findings (those a dictionary phrase starting with a word above names: aortic, coronary
# calcification) among the findings of its last word, so "Kidneys: Arterial calcifications." is not a renal stone.
VESSEL_PHRASES = ("arterial calcification", "arterial calcified plaque", "arterial calcific plaque", "arterial plaque")

# Heading words that name organs only as section titles ("Vascular:", "Lower chest:").
HEADING_ORGANS: Dict[str, Tuple[str, ...]] = {
    "vascular": ("aorta",), "vasculature": ("aorta",), "vessels": ("aorta",), "vascular structures": ("aorta",),
    "chest": ("lung",), "lower chest": ("lung",), "thorax": ("lung",), "lower thorax": ("lung",),
    "hepatobiliary": ("liver", "gallbladder"), "biliary": ("gallbladder",), "biliary tree": ("gallbladder",),
    "biliary system": ("gallbladder",),
    "urinary tract": ("kidney", "urinary_bladder"),
    "genitourinary": ("kidney", "urinary_bladder"), "bones": ("vertebrae",), "osseous structures": ("vertebrae",),
    "skeleton": ("vertebrae",), "musculoskeletal": ("vertebrae",), "gastrointestinal": ("bowel",),
    "gi tract": ("bowel",), "bowel": ("bowel",), "mediastinum": ("heart",), "cardiovascular": ("heart", "aorta"),
}


def sided_finding_phrases(entries: Iterable[Any], organs: Any) -> Iterator[Tuple[str, str, str, bool]]:
    """``(phrase, side, finding key, letter)`` for the sided spellings of each synonym of a finding whose organ has
    two sides; ``letter`` marks a lone-letter form, which the caller drops when its first two words already
    are an organ phrase ("r renal" cyst).

    Why: "R hydronephrosis" names its side with a lone letter and its organ with the finding word alone, so the
    organ phrases above ("r kidney") never match it; as for organs, the letter is a side only before a word of
    four letters or more, and a synonym that starts with a side word is left alone. "Small left kidney" puts
    the side inside a synonym ("small kidney"), which would otherwise not match at all. Synonyms that start
    with a side word ("bibasilar atelectasis") carry it themselves (the caller sets it).
    """
    for entry in entries:
        members = organs.expand(entry.organ)
        if {organs.side_of(m) for m in members} < {"left", "right"}:
            continue
        for phrase in entry.synonyms:
            first = phrase.split(" ", 1)[0]
            if len(first) < 4 or first in SIDE_WORDS:
                continue
            head, _, last = phrase.rpartition(" ")
            for side, shorts in SIDE_ABBREVIATIONS.items():
                for short in shorts:
                    if len(short) == 1:
                        yield f"{short} {phrase}", side, entry.key, True
                if head and f"{side} {last}" in organs.SYNONYMS:  # "small kidney" -> "small left kidney"
                    for word in (side, *shorts[:1]):
                        yield f"{head} {word} {last}", side, entry.key, False
