"""Parser vocabulary: one trie-compiled regex over organ names, dictionary terms and negation/uncertainty cues."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from ctglip_sdk import organs as _organs
from ctglip_sdk.reports.anatomy import sided_finding_phrases
from ctglip_sdk.reports.anatomy import (  # noqa: F401 - the tables are also importable from here, as before
    EXTRA_ORGANS, HEADING_ORGANS, MISSING, ORGAN_ABBREVIATIONS, OTHER_ANATOMY, PARTIAL_RESECTIONS, RESECTIONS,
    SIDE_ABBREVIATIONS, SIDE_WORDS, WEAK_ORGANS)

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

_NO_CHANGE = ("no change", "no significant change", "no interval change", "no significant interval change",
              "no substantial change", "no definite change", "no appreciable change", "no increase",
              "no significant increase", "no interval increase")

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
        # British and Australian dictation ("Nil pleural effusion.", "Nil evidence of hydronephrosis.")
        "nil", "nil evidence of", "nil significant", "nil focal", "nil other",
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
        # a stone that has passed is gone; "less likely" leans the other way from "likely"
        "has passed", "have passed", "has since passed", "has been passed", "is less likely", "are less likely",
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
        # "Hepatic steatosis is likely.": the pre-cue "likely" had nothing after it to reach
        "is likely", "are likely", "is probable", "are probable", "is favored", "is favoured",
    ),
    UNC_BOTH: ("versus", "vs", "vs."),
    WEAK_PRE: (
        "likely", "probable", "probably", "most likely", "more likely", "presumably", "presumed",
        "favored", "favoured", "favor", "favour", "most probably", "in all likelihood", "likely representing",
        "likely represents", "probably representing", "probably represents",
    ),
    PSEUDO: (
        "no change", "no changes", "no significant change", "no interval change", "no significant interval change",
        "no substantial change", "no definite change", "no appreciable change", "nil change", "nil significant change",
        "nil interval change", "not only", "no increase",
        "no significant increase", "no interval increase", "without change", "without significant change",
        "without interval change", "not changed", "not significantly changed",
        "unchanged", "stable", "not necessarily", "no further", "gram negative", "not well seen",
        "not clearly seen", "no longer than",
        *_PARTIAL_RESOLUTION, *_FOLLOW_UP,
        # a missing normal property is an abnormality, not a negated one ("lack of enhancement of the kidney")
        "lack of enhancement", "no enhancement", "absent enhancement", "lack of opacification", "no opacification",
        "lack of perfusion", "absent perfusion",
        # "Splenomegaly is likely due to portal hypertension": the cause is hedged, the finding stated
        *(f"{v} {h} {c}" for v in ("is", "are") for h in ("likely", "probably", "most likely", "possibly")
          for c in ("due to", "related to", "secondary to", "from", "caused by", "reactive", "postoperative",
                    "post-operative", "physiologic", "physiological", "chronic", "benign")),
        # "There is no significant change in the known renal cysts": the longer "there is no" would otherwise
        # win the match and negate what is only said to be unchanged
        *(f"{lead} {c}" for lead in ("there is", "there are", "there has been", "there have been", "there was",
                                     "there were") for c in _NO_CHANGE),
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
    whole: bool = False  # an organ mention that names the organ itself, not a part of it ("pancreatic tail")
    weak: bool = False  # an organ that counts only when nothing else names one ("segment 7"; not a ``mention``)
    resects: Optional[str] = None  # the organ an operation removes ("cholecystectomy" -> gallbladder)
    missing: Optional[str] = None  # "resected"/"unseen": the phrase says the organ next to it is not there
    flags: bool = False  # side, weak, resects or missing: one test per phrase tells the parser to look closer
    # organ -> the keys of this phrase the organ can carry (filled by the parser as organs come up)
    fits: Dict[str, Tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)


def phrase_key(text: str) -> str:
    """Lookup key of a matched phrase: lower case without spaces and hyphens ("Non-obstructing" = "nonobstructing")."""
    return _SQUASH.sub("", text.lower())


_SQUASH = re.compile(r"[\s\-]+")
_TITLE_PARTS = re.compile(r"\s*(?:/|&|,|\+|\band\b)\s*")
CHECKLIST, STATEMENT = 1, 2  # flags of Vocab.title_says


class _TitleMemo(dict):  # type: ignore[type-arg]
    """title -> flags, computed on first lookup (bounded: report text can hold endless titles)."""

    def __init__(self, compute: Callable[[str], int]) -> None:
        super().__init__()
        self.compute = compute

    def __missing__(self, title: str) -> int:
        if len(self) >= 10_000:
            self.clear()
        hit = self[title] = self.compute(title)
        return hit


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

    def __init__(self, dictionary, extra_organs: Optional[Mapping[str, str]] = None) -> None:  # noqa: ANN001
        """``dictionary`` is an AbnormalityDictionary (not imported: cycle). ``extra_organs`` adds whole-organ names
        for this vocabulary only (lay names that queries use, ctglip_sdk.reports.lay); reports never get them."""
        self.dictionary = dictionary
        table: Dict[str, Info] = {}

        def info(phrase: str, plural: bool = False) -> List[Info]:
            out = []
            for v in _variants(phrase, plural):
                out.append(table.setdefault(phrase_key(v), Info()))
                self._phrases.add(v)
            return out

        self._phrases: set = set()  # surface forms; several may share one key ("gall stones", "gallstones")
        # names of organs, not of parts or places in them
        whole = {**_organs.SYNONYMS, **ORGAN_ABBREVIATIONS, **(extra_organs or {})}
        for phrase, organ in list(whole.items()) + list(EXTRA_ORGANS.items()):
            for i in info(phrase):
                i.organ = i.organ or organ
                i.whole = i.whole or phrase in whole  # not "hepatic lobe", "pancreatic tail", "renal pelvis"
        for phrase, organ in list(_organs.SYNONYMS.items()) + list(EXTRA_ORGANS.items()):
            side, _, rest = phrase.partition(" ")
            if side in SIDE_ABBREVIATIONS and rest:
                for short in SIDE_ABBREVIATIONS[side]:
                    if len(short) > 1 or len(rest.split(" ", 1)[0]) >= 4:
                        for i in info(f"{short} {rest}"):
                            i.organ = i.organ or organ
                            i.whole = i.whole or phrase in _organs.SYNONYMS
        for phrase, organ in WEAK_ORGANS.items():
            for i in info(phrase):
                i.organ, i.weak = organ, True
        for phrase in OTHER_ANATOMY:
            for i in info(phrase):
                i.organ = OTHER
        for phrase, organ in RESECTIONS.items():
            # "post-cholecystectomy": a phrase never starts after a hyphen, so the prefix is part of the phrase
            for form in (phrase, f"post {phrase}", f"post{phrase}"):
                for i in info(form, plural=True):  # "bilateral nephrectomies"
                    i.resects = organ
        for phrase, targets in HEADING_ORGANS.items():
            for i in info(phrase):
                i.heading_organs = targets
        for entry in dictionary.findings():
            for kind, phrases in (("syn", entry.synonyms), ("desc", entry.descriptors), ("hedged", entry.hedged)):
                for phrase in phrases:
                    for i in info(phrase, plural=True):
                        if entry.key not in getattr(i, kind):
                            setattr(i, kind, getattr(i, kind) + (entry.key,))
        # "R hydronephrosis", "small left kidney": sides said inside a finding's own phrase (anatomy.py)
        for surface, side, key, letter in sided_finding_phrases(dictionary.findings(), _organs):
            if not letter or table.get(phrase_key(surface.rsplit(" ", 1)[0])) is None:  # "r renal" + "cyst"
                for i in info(surface, plural=True):
                    i.side, i.syn = side, i.syn + (key,) if key not in i.syn else i.syn
        for surface in list(self._phrases):  # "bibasilar atelectasis": a synonym that starts with a side word
            first = next((w for w in SIDE_WORDS if surface.startswith(w + " ")), None)
            i = table[phrase_key(surface)]
            if first is not None and (i.syn or i.desc):
                i.side = SIDE_WORDS[first]
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
        for phrase, kind in MISSING.items():
            for i in info(phrase):
                i.missing = kind
                if phrase == "surgically absent":
                    i.trigger = NEG_BOTH  # as "absent", which it contains
        for phrase in list(dictionary.ignore_terms) + list(PARTIAL_RESECTIONS):
            for i in info(phrase, plural=True):
                i.ignore = True
        entries = {e.key: e for e in dictionary.findings()}
        for i in table.values():
            i.keys = tuple(dict.fromkeys(i.syn + i.desc + i.hedged))
            i.key_organs = tuple((k, entries[k].organ) for k in i.keys)
            syn_organs = {entries[k].organ for k in i.syn}
            i.implied = syn_organs.pop() if len(syn_organs) == 1 else None
            i.mention = i.organ if i.organ and not i.keys and not i.weak else None
            i.flags = bool(i.side or i.weak or i.resects or i.missing)
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
        # title -> Vocab.title_says flags; segment() reads it as a mapping (a C-level lookup per heading line)
        self.title_memo = _TitleMemo(self._title_flags)
        self._title_toks: Dict[str, List[Tuple[int, int, Info]]] = {}
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
        self.title_memo.clear()
        self._title_toks.clear()
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

    def title_says(self, title: str) -> int:
        """What a line's title says, as flags: ``CHECKLIST`` (a title before a colon that names a finding, not an
        organ or section: "Gallstones: none.", "Renal calculi: 4 mm left") and ``STATEMENT`` (an upper-case line
        that states a finding or a normal organ: "CHOLELITHIASIS", "NO ACUTE ABNORMALITY").

        A title with a part that only names organs or a section ("Bones/fractures", "Lungs and pleural effusion")
        is a heading whatever else it says. Memoised in ``title_memo``.
        """
        return self.title_memo[title]

    def _title_tokens(self, low: str) -> List[Tuple[int, int, Info]]:
        """``tokens`` of a lower-cased title, memoised: heading_organs and title_says both read each title."""
        hit = self._title_toks.get(low)
        if hit is None:
            if len(self._title_toks) >= 10_000:
                self._title_toks.clear()
            hit = self._title_toks[low] = self.tokens(low)
        return hit

    def _title_flags(self, title: str) -> int:
        low = title.lower()
        toks = self._title_tokens(low)
        if not any(i.keys or i.normal for _, _, i in toks):
            return 0  # most titles: organs and section names only
        keys = normal = pure = False
        cuts = [m.start() for m in _TITLE_PARTS.finditer(low)] + [len(low)]
        k = 0
        for cut in cuts:  # the phrases of each part of "Bones/fractures"
            part = []
            while k < len(toks) and toks[k][0] < cut:
                part.append(toks[k][2])
                k += 1
            p_keys = any(i.keys for i in part)
            p_normal = any(i.normal for i in part)
            keys, normal = keys or p_keys, normal or p_normal
            pure = pure or (not p_keys and not p_normal and any(i.organ or i.heading_organs for i in part))
        return (CHECKLIST if keys and not pure else 0) | (STATEMENT if normal or (keys and not pure) else 0)

    def heading_organs(self, heading: str, current: Tuple[str, ...] = ()) -> Tuple[str, ...]:
        """Organs a section heading names ("Liver and biliary tree" -> liver, gallbladder).

        A heading that is only a side ("Right:" under "Adrenal glands:") puts the ``current`` organs on that side.
        """
        key = (heading, current)
        hit = self.heading_cache.get(key)
        if hit is None:
            found: Dict[str, None] = {}
            low = heading.lower()
            toks = self._title_tokens(low)
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
