"""Parser vocabulary: one trie-compiled regex over organ names, dictionary terms and negation/uncertainty cues."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from ctglip_sdk import organs as _organs
from ctglip_sdk.reports.anatomy import (  # noqa: F401 - the tables are also importable from here, as before
    EXTRA_ORGANS, HEADING_ORGANS, MISSING, ORGAN_ABBREVIATIONS, OTHER_ANATOMY, PARTIAL_RESECTIONS, RESECTIONS,
    SIDE_ABBREVIATIONS, SIDE_WORDS, VESSEL_PHRASES, VESSEL_WORDS, WEAK_ORGANS, sided_finding_phrases)
from ctglip_sdk.reports.cues import (  # noqa: F401 - the cue kinds are also importable from here, as before
    NEG_BOTH, NEG_POST, NEG_PRE, NEG_SELF, NEUTRAL, PSEUDO, TERMINATE, TRIGGERS, UNC_BOTH, UNC_POST, UNC_PRE,
    WEAK_PRE)

__all__ = ["Info", "Vocab", "vocab_for", "phrase_key"]

#: Organ of anatomy outside the TotalSegmentator v1 classes ("ureter", "lymph node"): it owns the findings
#: next to it ("ureteric stone") but is never reported.
OTHER = "~other"

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
        # "arterial calcification": a vessel wall's, named as the dictionary's phrases that start with a vessel word
        # ("vascular calcification", "atherosclerotic calcification") name it, never a renal stone (anatomy.py)
        vessel_keys: set = set()
        for surface in self._phrases:
            first, _, rest = surface.partition(" ")
            if rest and first in VESSEL_WORDS:
                i = table[phrase_key(surface)]
                vessel_keys.update(i.syn + i.desc + i.hedged)
        for phrase in VESSEL_PHRASES:
            base = table.get(phrase_key(phrase.rsplit(" ", 1)[1]))
            keys = tuple(k for k in base.syn + base.desc + base.hedged if k in vessel_keys) if base else ()
            if keys:
                for i in info(phrase, plural=True):
                    i.desc = i.desc + tuple(k for k in keys if k not in i.desc)
        for phrase in TRIGGERS[NEG_SELF]:  # "stone-free": the finding of its first word, denied (cues.py)
            base = table.get(phrase_key(phrase.rsplit(" ", 1)[0]))
            if base is not None:
                for i in info(phrase):
                    i.syn, i.desc, i.hedged = base.syn, base.desc, base.hedged
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
            if i.keys and " " in surface and surface.split(" ", 1)[0] not in VESSEL_WORDS:
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
