"""Parser vocabulary: one trie-compiled regex over organ names, dictionary terms and negation/uncertainty cues."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from ctglip_sdk import organs as _organs

__all__ = ["Info", "Vocab", "vocab_for", "phrase_key"]

# Trigger kinds. PRE triggers act on what follows, POST on what precedes, BOTH on whichever side has findings.
NEG_PRE, NEG_POST, NEG_BOTH = "neg_pre", "neg_post", "neg_both"
UNC_PRE, UNC_POST, UNC_BOTH, WEAK_PRE = "unc_pre", "unc_post", "unc_both", "weak_pre"
PSEUDO, TERMINATE, NEUTRAL = "pseudo", "terminate", "neutral"
#: Organ of anatomy outside the TotalSegmentator v1 classes ("ureter", "lymph node"): it owns the findings
#: next to it ("ureteric stone") but is never reported.
OTHER = "~other"

# Partial or awaited resolution: the finding is still there ("partially resolved effusion" is an effusion).
_PARTIAL_RESOLUTION = (
    "partially resolved", "partially resolving", "partial resolution", "partial resolution of", "resolving",
    "incompletely resolved", "not completely resolved", "not fully resolved", "not entirely resolved",
    "not yet resolved", "not resolved", "has not resolved", "have not resolved", "nearly resolved",
    "almost resolved", "almost completely resolved", "nearly completely resolved", "largely resolved",
    "mostly resolved", "near complete resolution", "near complete resolution of", "nearly complete resolution of",
    "almost complete resolution of", "incomplete resolution of", "interval partial resolution of",
    "ensure resolution", "ensure resolution of", "confirm resolution", "confirm resolution of",
    "document resolution", "document resolution of", "assess resolution of", "assess for resolution of",
    "evaluate for resolution of", "evaluate resolution of", "until resolution of", "to resolution",
)
# Follow-up of a stated finding ("to evaluate for stability of the nodule") is not a search for it.
_FOLLOW_UP = tuple(f"{to}{verb} {what}" for to in ("", "to ") for verb in ("evaluate for", "assess for")
                   for what in ("stability", "interval change", "change", "growth", "progression", "resolution",
                                "resolution of"))

# NegEx/pyConText-style cue lists (Chapman et al. 2001; radiology additions). Language rules, not vocabulary,
# so they live in code; organ and finding vocabulary lives in the dictionary file.
TRIGGERS: Dict[str, Tuple[str, ...]] = {
    NEG_PRE: (
        "no", "not", "without", "no evidence of", "no evidence for", "no sign of", "no signs of",
        "no definite", "no definitive", "no suspicious", "no significant", "no new", "no other", "no residual",
        "no obvious", "no visible", "no demonstrable", "no discrete", "no focal", "no ct evidence of",
        "no radiographic evidence of", "no findings of", "no findings to suggest", "negative for", "free of",
        "absence of", "there is no", "there are no", "nor", "neither", "never", "no longer", "resolution of",
        "without evidence of", "without signs of", "without any", "no appreciable", "no measurable",
        "interval resolution of", "rules out", "ruling out", "w/o", "lack of", "lack of evidence of",
        "nothing to suggest", "nothing to indicate", "nothing suspicious for", "no features of",
        "no features to suggest", "no imaging evidence of", "no convincing", "no convincing evidence of",
    ),
    NEG_POST: (
        "not seen", "not identified", "not demonstrated", "not visualized", "not visualised", "not present",
        "not detected", "not appreciated", "not evident", "not noted", "not found", "not observed",
        "is absent", "are absent", "has resolved", "have resolved", "ruled out", "excluded", "is excluded",
        "are excluded", "unlikely", "is unlikely", "no longer seen", "no longer visualized",
        "no longer visualised", "no longer present", "no longer identified", "not apparent",
        # visibility said in other words, and "no longer <seen>" after the finding ("... is no longer visible")
        "not visible", "not clearly visible", "no longer visible", "no longer demonstrated", "no longer appreciated",
        "no longer evident", "no longer apparent", "no longer noted", "no longer detected", "not clearly identified",
        "not clearly demonstrated", "not clearly visualized", "not clearly visualised", "not definitely seen",
        "not definitely identified", "not convincingly seen", "not convincingly identified",
        "not convincingly demonstrated",
    ),
    NEG_BOTH: ("resolved", "absent"),
    UNC_PRE: (
        "possible", "possibly", "questionable", "question of", "suspicious for", "suspicious of",
        "concerning for", "worrisome for", "worrying for", "suggestive of", "suggesting", "suggests",
        "may represent", "may be", "might be", "might represent", "could represent", "could be",
        "can not exclude", "cannot exclude", "can't exclude", "cannot rule out", "can not rule out",
        "can't rule out", "difficult to exclude", "rule out", "to rule out", "r/o", "ddx",
        "differential includes", "differential diagnosis includes", "differential diagnosis",
        "differential considerations include", "equivocal", "borderline", "suspected",
        "suspect", "consider", "raises the possibility of", "possibility of",
        "uncertain", "query", "may reflect", "could reflect",
        "may relate to", "not excluding", "limiting assessment for", "limiting evaluation for",
        "limited assessment for", "limited evaluation for", "limited assessment of", "limited evaluation of",
        "difficult to assess for", "cannot be assessed for", "concern for", "raise concern for",
        "raises concern for", "suspicion of", "suspicion for", "suspicious of", "worrisome of",
        # recommendations name what is to be looked for, not what was found ("MRI to evaluate for HCC")
        "evaluate for", "to evaluate for", "assess for", "to assess for", "evaluation for", "to exclude",
        # "could not / unable to / cannot entirely exclude": the verb says what is not settled (a "not" before it
        # gives way to it, negation/cue_scopes); "excluded" after a denied "be" is hedged there too
        "exclude",
    ),
    UNC_POST: (
        "cannot be excluded", "can not be excluded", "can't be excluded", "cannot be ruled out",
        "can not be ruled out", "not excluded", "is not excluded", "not entirely excluded",
        "not completely excluded", "not ruled out", "too small to characterize", "too small to characterise",
        "too small to accurately characterize", "too small to accurately characterise",
        "too small to further characterize", "too small to further characterise", "of uncertain significance",
        "not well characterized", "not well characterised",
        "is suspected", "are suspected", "is possible", "are possible", "is questionable", "questioned",
    ),
    UNC_BOTH: ("versus", "vs", "vs."),
    WEAK_PRE: (
        "likely", "probable", "probably", "most likely", "more likely", "presumably", "presumed",
        "favored", "favoured", "favor", "favour", "most probably", "in all likelihood", "likely representing",
        "likely represents", "probably representing", "probably represents",
    ),
    PSEUDO: (
        "no change", "no changes", "no significant change", "no interval change", "no significant interval change",
        "no substantial change", "no definite change", "no appreciable change", "not only", "no increase",
        "no significant increase", "no interval increase", "without change", "without significant change",
        "without interval change", "not changed", "not significantly changed",
        "unchanged", "stable", "not necessarily", "no further", "gram negative", "not well seen",
        "not clearly seen", "no longer than",
        *_PARTIAL_RESOLUTION, *_FOLLOW_UP,
        # a missing normal property is an abnormality, not a negated one ("lack of enhancement of the kidney")
        "lack of enhancement", "no enhancement", "absent enhancement", "lack of opacification", "no opacification",
        "lack of perfusion", "absent perfusion",
    ),
    TERMINATE: (
        "but", "however", "although", "though", "which", "whereas", "while", "except", "except for",
        "apart from", "aside from", "other than", "with the exception of", "yet", "there is", "there are",
        "there is a", "there is an", "there are several", "with", "which is", "which are", "that is",
        "secondary to", "due to", ", the", ", a", ", an", ", there", ", this", ", it", "otherwise",
        "additionally", "also", "in addition", "incidentally", "incidental",
    ),
    # Consume phrases whose words would otherwise read as cues ("with" inside "consistent with").
    NEUTRAL: ("consistent with", "compatible with", "in keeping with", "associated with", "with or without",
              "correlate with", "correlation with", "filled with", "not to be confused with"),
}

SIDE_WORDS: Dict[str, str] = {
    "left": "left", "right": "right", "left sided": "left", "right sided": "right", "bilateral": "both",
    "bilaterally": "both", "both": "both", "bibasilar": "both", "bibasal": "both", "bilateral lower lobe": "both",
}

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
    "adrenal limb": "adrenal_gland", "adrenal limbs": "adrenal_gland", "bladder wall": "urinary_bladder",
    "vertebral body": "vertebrae", "vertebral bodies": "vertebrae", "main portal vein": "portal_vein_and_splenic_vein",
    "portal veins": "portal_vein_and_splenic_vein", "spleen tip": "spleen",
    # Couinaud liver segments in Roman numerals are as good as naming the liver ("cyst in segment VII").
    **{f"segment {r}": "liver" for r in ("i", "ii", "iii", "iv", "iva", "ivb", "v", "vi", "vii", "viii")},
    **{f"segments {r}": "liver" for r in ("ii", "iii", "iv", "v", "vi", "vii", "viii")},
    "couinaud segment": "liver", "hepatic segments": "liver",
}

OTHER_ANATOMY = (
    "ureter", "ureters", "ureteral", "ureteric", "ureterovesical junction", "uvj", "pelviureteric junction", "puj",
    "bile duct", "bile ducts", "common bile duct", "cbd", "common duct", "lymph node", "lymph nodes", "nodal",
    "ovary", "ovaries", "ovarian", "adnexa", "adnexal", "uterus", "uterine", "endometrium", "endometrial",
    "prostate", "prostatic", "seminal vesicles", "thyroid", "appendix", "appendiceal", "mesentery", "mesenteric",
    "peritoneum", "peritoneal", "retroperitoneum", "retroperitoneal", "omentum", "omental", "chest wall",
    "abdominal wall", "subcutaneous", "skin", "breast", "breasts", "testis", "testes", "scrotal", "thymus",
    "axilla", "axillary", "soft tissues", "soft tissue", "renal artery", "renal arteries", "renal vein",
    "splenic artery", "hepatic artery", "hepatic veins", "hepatic vein", "superior mesenteric artery",
    "mesenteric artery", "celiac axis", "coeliac axis", "urethra", "vagina", "rectum", "anal canal",
)

# Heading words that name organs only as section titles ("Vascular:", "Lower chest:").
HEADING_ORGANS: Dict[str, Tuple[str, ...]] = {
    "vascular": ("aorta",), "vasculature": ("aorta",), "vessels": ("aorta",), "vascular structures": ("aorta",),
    "chest": ("lung",), "lower chest": ("lung",), "thorax": ("lung",), "lower thorax": ("lung",),
    "hepatobiliary": ("liver", "gallbladder"), "biliary": ("gallbladder",),
    "urinary tract": ("kidney", "urinary_bladder"),
    "genitourinary": ("kidney", "urinary_bladder"), "bones": ("vertebrae",), "osseous structures": ("vertebrae",),
    "skeleton": ("vertebrae",), "musculoskeletal": ("vertebrae",), "gastrointestinal": ("bowel",),
    "gi tract": ("bowel",), "bowel": ("bowel",), "mediastinum": ("heart",), "cardiovascular": ("heart", "aorta"),
}

_BRIT_AMER = (("oesophag", "esophag"), ("haem", "hem"), ("tumour", "tumor"), ("oedem", "edem"),
              ("characteris", "characteriz"), ("calibre", "caliber"), ("centimetre", "centimeter"),
              ("visualis", "visualiz"), ("favour", "favor"), ("paraoesophag", "paraesophag"), ("ischaem", "ischem"))


@dataclass
class Info:
    """Everything a matched phrase can mean (a phrase may be, e.g., a finding term and a trigger at once)."""

    organ: Optional[str] = None
    heading_organs: Tuple[str, ...] = ()
    syn: Tuple[str, ...] = ()
    desc: Tuple[str, ...] = ()
    hedged: Tuple[str, ...] = ()
    trigger: Optional[str] = None
    normal: bool = False
    generic: bool = False
    side: Optional[str] = None
    ignore: bool = False
    keys: Tuple[str, ...] = field(default=())  # syn + desc + hedged
    head: Optional["Info"] = None  # the last word of a multi-word phrase ("calcified stone" -> "stone")
    key_organs: Tuple[Tuple[str, str], ...] = ()  # (key, dictionary organ) for every key
    implied: Optional[str] = None  # the organ a synonym names by itself ("nephrolithiasis" -> kidney)
    mention: Optional[str] = None  # organ, when the phrase is an organ mention and not a finding
    # organ -> the keys of this phrase the organ can carry (filled by the parser as organs come up)
    fits: Dict[str, Tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)


def phrase_key(text: str) -> str:
    """Lookup key of a matched phrase: lower case without spaces and hyphens ("Non-obstructing" = "nonobstructing")."""
    return _SQUASH.sub("", text.lower())


_SQUASH = re.compile(r"[\s\-]+")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")  # what the matcher's "(?![a-z0-9])" looks for


def _variants(phrase: str, plural: bool) -> List[str]:
    p = " ".join(phrase.lower().split())
    out = {p}
    if "'" in p:
        out.add(p.replace("'", "\u2019"))  # word processors type "can’t" with a right single quotation mark
    for brit, amer in _BRIT_AMER:
        for a, b in ((brit, amer), (amer, brit)):
            for q in list(out):
                if re.search(rf"(?<![a-z]){a}", q):
                    out.add(re.sub(rf"(?<![a-z]){a}", b, q))
    if plural:
        for q in list(out):
            last = q.rsplit(" ", 1)[-1]
            if last.endswith("us"):
                out.add(q[:-2] + "i")
            elif last.endswith("sis"):
                out.add(q[:-3] + "ses")
            elif last.endswith("y") and len(last) > 3:
                out.add(q[:-1] + "ies")
            elif last.endswith("oma"):
                out.update((q + "s", q + "ta"))  # granulomas, granulomata
            elif not last.endswith("s") and last[-1:].isalpha():
                out.add(q + "s")
    return sorted(out)


def _trie_regex(phrases: Iterable[str]) -> str:
    """Regex for a set of phrases as a character trie, so a scan costs one branch per character."""
    trie: Dict[str, dict] = {}
    for p in phrases:
        node = trie
        for ch in p:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: Dict[str, dict]) -> str:
        end = "" in node
        alts = []
        for ch in sorted(k for k in node if k):
            if ch == " ":
                head = r"[\s\-]+"
            elif ch == "-":
                head = r"[\s\-]?"
            else:
                head = re.escape(ch)
            alts.append(head + emit(node[ch]))
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        if end:
            return "(?:" + body + ")?"
        return body

    return emit(trie)


class Vocab:
    """The compiled matcher and phrase table for one dictionary (build once, reuse for every report)."""

    def __init__(self, dictionary) -> None:  # noqa: ANN001 - AbnormalityDictionary (import cycle)
        self.dictionary = dictionary
        table: Dict[str, Info] = {}

        def info(phrase: str, plural: bool = False) -> List[Info]:
            out = []
            for v in _variants(phrase, plural):
                out.append(table.setdefault(phrase_key(v), Info()))
                self._phrases.add(v)
            return out

        self._phrases: set = set()  # surface forms; several may share one key ("gall stones", "gallstones")
        for phrase, organ in list(_organs.SYNONYMS.items()) + list(EXTRA_ORGANS.items()):
            for i in info(phrase):
                i.organ = i.organ or organ
        for phrase in OTHER_ANATOMY:
            for i in info(phrase):
                i.organ = OTHER
        for phrase, targets in HEADING_ORGANS.items():
            for i in info(phrase):
                i.heading_organs = targets
        for entry in dictionary.findings():
            for kind, phrases in (("syn", entry.synonyms), ("desc", entry.descriptors), ("hedged", entry.hedged)):
                for phrase in phrases:
                    for i in info(phrase, plural=True):
                        if entry.key not in getattr(i, kind):
                            setattr(i, kind, getattr(i, kind) + (entry.key,))
        for phrase in dictionary.normal_terms:
            for i in info(phrase):
                i.normal = True
                if phrase.lower().startswith(("no ", "without ")):
                    i.trigger = NEG_PRE  # "no abnormality or hydronephrosis" still negates what follows
        for phrase in dictionary.generic_terms:
            for i in info(phrase, plural=True):
                i.generic = True
        for kind, phrases in TRIGGERS.items():
            for phrase in phrases:
                for i in info(phrase):
                    i.trigger = i.trigger or kind
        for phrase, side in SIDE_WORDS.items():
            for i in info(phrase):
                i.side = side
        for phrase in dictionary.ignore_terms:
            for i in info(phrase, plural=True):
                i.ignore = True
        entries = {e.key: e for e in dictionary.findings()}
        for i in table.values():
            i.keys = tuple(dict.fromkeys(i.syn + i.desc + i.hedged))
            i.key_organs = tuple((k, entries[k].organ) for k in i.keys)
            syn_organs = {entries[k].organ for k in i.syn}
            i.implied = syn_organs.pop() if len(syn_organs) == 1 else None
            i.mention = i.organ if i.organ and not i.keys else None
        # The head noun of a phrase ("calcified stone" -> "stone", "renal cysts" -> "cysts") resolves it when the
        # whole phrase does not fit the organ, and serves coordinated organs ("hepatic and renal cysts").
        for surface in self._phrases:
            i = table[phrase_key(surface)]
            if i.keys and " " in surface:
                head = table.get(phrase_key(surface.rsplit(" ", 1)[1]))
                if head is not None and head.keys and head is not i:
                    i.head = head
        self.table = table
        body = _trie_regex(self._phrases)
        # A phrase never starts inside a hyphenated word: "non-enhancing lesion" is not an "enhancing lesion".
        self.regex = re.compile(r"(?<![a-z0-9\-])(?:" + body + r")(?![a-z0-9])")
        self.entries = {e.key: e for e in dictionary.findings()}
        self._compat: Dict[Tuple[str, str], bool] = {}
        self.heading_cache: Dict[Tuple[str, Tuple[str, ...]], Tuple[str, ...]] = {}
        self.parser = None  # the parser built on this vocabulary (ctglip_sdk.reports.parser)
        self._surface: Dict[str, Optional[Info]] = {}  # matched text -> Info, skips re-normalising
        # Characters no phrase can run through ("." ends "vs.", ":" and ";" are in none): a scan that starts after
        # one, or stops at one, finds the same phrases there as a scan of the whole text (sentence_tokens).
        inner = {c for p in self._phrases for c in p[:-1]}
        self.barriers = frozenset(c for c in map(chr, range(33, 127)) if c not in inner and c != "-")

    def tokens(self, lowered: str, start: int = 0, end: Optional[int] = None) -> List[Tuple[int, int, Info]]:
        """Matched phrases of an already lower-cased text as ``(start, end, Info)``, left to right."""
        cache = self._surface
        out = []
        for m in self.regex.finditer(lowered, start, len(lowered) if end is None else end):
            i = cache.get(m.group())
            if i is None:
                i = self._lookup(m.group())
            if i is not None and not i.ignore:
                out.append((m.start(), m.end(), i))
        return out

    def _lookup(self, surface: str) -> Optional[Info]:
        """The entry of a matched surface form, memoised (the cache is bounded: texts can hold endless forms)."""
        i = self.table.get(phrase_key(surface))
        if len(self._surface) < 100_000:
            self._surface[surface] = i
        return i

    def sentence_tokens(self, lowered: str, start: int, end: int) -> Optional[List[Tuple[int, int, Info]]]:
        """The phrases of ``tokens(lowered)`` inside ``lowered[start:end]``, scanning little more than that span.

        None when no barrier character lies shortly before ``start`` (then scan the whole text with ``tokens``).
        """
        if end <= start:
            return []
        barriers = self.barriers
        q = start - 1
        floor = start - 32 if start > 32 else 0
        while q >= floor and lowered[q] not in barriers:
            q -= 1
        if q < floor and floor > 0:
            return None
        # From a barrier on, the scan agrees with the whole-text scan. It may also stop at a barrier that ends the
        # span, when what follows cannot continue a word (a phrase's end is tested with "(?![a-z0-9])").
        n = len(lowered)
        stop = end if lowered[end - 1] in barriers and (end == n or lowered[end] not in _ALNUM) else n
        cache = self._surface
        out: List[Tuple[int, int, Info]] = []
        search = self.regex.scanner(lowered, q + 1, stop).search  # finditer without its iterator wrapper
        m = search()
        while m is not None:
            a, b = m.span()
            if a >= start:
                if b > end:
                    break  # nothing after a phrase that leaves the sentence lies inside it
                g = m.group()
                i = cache.get(g)
                if i is None:
                    i = self._lookup(g)
                if i is not None and not i.ignore:
                    out.append((a, b, i))
            m = search()
        return out

    def clear_memos(self) -> None:
        """Forget what was remembered per phrase, heading and organ pair (see ``parser.clear_caches``)."""
        self._surface.clear()
        self._compat.clear()
        self.heading_cache.clear()
        for info in self.table.values():
            info.fits.clear()

    def compatible(self, mention: str, finding_organ: str) -> bool:
        """True when an organ mention can carry a finding of ``finding_organ`` (kidney_left for kidney)."""
        k = (mention, finding_organ)
        hit = self._compat.get(k)
        if hit is None:
            try:
                hit = set(_organs.expand(mention)) <= set(_organs.expand(finding_organ))
            except Exception:  # noqa: BLE001 - unknown names are simply incompatible
                hit = False
            self._compat[k] = hit
        return hit

    def heading_organs(self, heading: str, current: Tuple[str, ...] = ()) -> Tuple[str, ...]:
        """Organs a section heading names ("Liver and biliary tree" -> liver, gallbladder).

        A heading that is only a side ("Right:" under "Adrenal glands:") puts the ``current`` organs on that side.
        """
        key = (heading, current)
        hit = self.heading_cache.get(key)
        if hit is None:
            found: Dict[str, None] = {}
            low = heading.lower()
            toks = self.tokens(low)
            for _, _, i in toks:
                for o in i.heading_organs or ((i.organ,) if i.organ and i.organ != OTHER else ()):
                    found.setdefault(o, None)
            sides = {i.side for _, _, i in toks if i.side}
            if not found and current and len(sides) == 1 and phrase_key(low) in {phrase_key(w) for w in SIDE_WORDS}:
                side = sides.pop()
                for o in current:
                    base = o.rsplit("_", 1)[0] if _organs.side_of(o) else o
                    o = base if base in _organs.GROUPS else o
                    for s in (("left", "right") if side == "both" else (side,)):
                        cand = f"{o}_{s}"
                        found.setdefault(cand if cand in _organs.GROUPS or cand in _organs.V1.values() else o, None)
            hit = tuple(found)
            self.heading_cache[key] = hit
        return hit


def vocab_for(dictionary) -> Vocab:  # noqa: ANN001
    """The cached vocabulary of a dictionary instance (built on first use)."""
    v = dictionary._vocab
    if v is None:
        v = Vocab(dictionary)
        dictionary._vocab = v
    return v
