"""Report segmentation: sections, organ headings, list items, wrapped lines and sentences with character offsets."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

__all__ = ["Sentence", "segment"]


class Sentence(NamedTuple):
    """One sentence of a report: ``text[start:end]`` with the heading it sits under."""

    start: int
    end: int
    heading: Optional[str]
    heading_organs: Tuple[str, ...]
    section: Optional[str]


# Sections whose sentences describe the request, not the patient's findings ("Indication: ? renal stone").
SKIP_SECTIONS = {
    "indication", "indications", "history", "clinical history", "clinical information", "clinical indication",
    "clinical details", "clinical data", "clinical question", "clinical notes", "reason for exam",
    "reason for examination", "reason for study", "reason for referral", "reason", "technique", "protocol",
    "comparison", "comparisons", "procedure", "examination", "exam", "contrast", "dose", "dlp", "ctdi",
    "ctdivol", "radiation dose", "prior", "priors", "prior studies", "referring physician", "request",
    "question", "signed", "dictated by", "electronically signed", "scan parameters", "acquisition",
}
_SKIP_PREFIXES = ("clinical ", "reason for ", "history of ", "indication ")

_LIST_MARKER = re.compile(
    r"[ \t]*(?:[-*\u2022\u00b7\u2013>]+|\(?\d{1,2}[.)](?!\d)|\(?[a-hA-H]\)|[ivxIVX]{1,4}\))[ \t]+")
_HEADING = re.compile(r"[ \t]*([A-Za-z][A-Za-z0-9 /&,()'+\-]{0,60}?)[ \t]*:(?=\s|$)")
_BOUNDARY = re.compile(r"[.;]+(?=\s|$)")
_LEAD_CHARS = frozenset("-*\u2022\u00b7>(0123456789 \t\r\n")
_ONLY_NUMBER = re.compile(r"\s*\(?\d{1,2}[.)]?\s*$")
_ALNUM = re.compile(r"[A-Za-z0-9]")
_LEADING = re.compile(r"(?:\s*(?:[-*\u2022\u00b7>]+|\(?\d{1,2}[.)](?!\d))\s+)+|\s+")

# Words before a period that do not end a sentence: "approx. 3 cm", "e.g. cysts", "Dr. Smith", "cyst vs. mass".
ABBREVIATIONS = {
    "approx", "appr", "approximately", "e.g", "eg", "i.e", "ie", "dr", "drs", "vs", "cf", "fig", "figs", "seg",
    "segs", "incl", "ca", "mr", "mrs", "ms", "prof", "max", "diam", "est", "resp", "vol", "ref", "sp", "st",
    "ant", "lat", "prox", "pt", "pts", "img", "ser", "al", "et",
}


_SPLIT_CACHE: Dict[str, Tuple[Tuple[int, int], ...]] = {}


@lru_cache(maxsize=4096)
def _heading_kind(title: str) -> str:
    low = " ".join(title.lower().replace("_", " ").split())
    if low in SKIP_SECTIONS or low.startswith(_SKIP_PREFIXES):
        return "skip"
    return "heading"


def _split(text: str, start: int, end: int) -> List[Tuple[int, int]]:
    """Sentence offsets inside ``text[start:end]``; periods after abbreviations and list numbers do not split."""
    out: List[Tuple[int, int]] = []
    cur = start
    for m in _BOUNDARY.finditer(text, start, end):
        stop = m.end()
        j = m.start()
        if text[j] == ".":
            tail = text[max(cur, j - 12):j].rsplit(None, 1)  # abbreviations are short: 12 characters suffice
            word = tail[-1] if tail and not text[j - 1].isspace() else ""
            if word:
                word = word.lower().lstrip("([").rstrip(")]")
                if word in ABBREVIATIONS:
                    continue
                if len(word) >= 2 and word[-2] == "." and word[-1].isalpha():
                    continue  # "e.g." / "i.e." / "a.m." spelt out letter by letter
                if word[-1:].isdigit() and _ONLY_NUMBER.fullmatch(text, cur, j + 1):
                    continue  # "1." opening a numbered item
        out.append((cur, stop))
        cur = stop
    if cur < end:
        out.append((cur, end))
    trimmed = []
    for s, e in out:
        if text[s] in _LEAD_CHARS:
            lead = _LEADING.match(text, s, e)
            if lead:
                s = lead.end()
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s and _ALNUM.search(text, s, e):
            trimmed.append((s, e))
    return trimmed


def segment(text: str, heading_organs: Callable[[str, Tuple[str, ...]], Tuple[str, ...]]) -> List[Sentence]:
    """Split a report into sentences that remember their section and organ heading.

    A heading is a short title ending in a colon at the start of a line ("KIDNEYS:", "Liver and biliary tree:
    normal."), or a short upper-case line ("IMPRESSION"). Its organs apply to the sentences that follow until the
    next heading. Lines that wrap mid-sentence are joined; list markers ("1.", "-", "a)") are dropped.

    Example:
        >>> text = "SPLEEN: Normal. No focal lesion."
        >>> [(text[s.start:s.end], s.heading_organs) for s in segment(text, lambda title, current: ("spleen",))]
        [('Normal.', ('spleen',)), ('No focal lesion.', ('spleen',))]
    """
    out: List[Sentence] = []
    heading: Optional[str] = None
    organs: Tuple[str, ...] = ()
    section: Optional[str] = None
    block: Optional[List] = None  # [start, end, heading, organs, section, ends_open]

    def flush() -> None:
        nonlocal block
        if block is not None and block[4] != "skip":
            b0, b1 = block[0], block[1]
            piece = text[b0:b1]
            rel = _SPLIT_CACHE.get(piece)  # report lines repeat across an archive ("Spleen: Normal.")
            if rel is None:
                rel = tuple((s - b0, e - b0) for s, e in _split(text, b0, b1))
                if len(_SPLIT_CACHE) >= 50_000:
                    _SPLIT_CACHE.clear()
                _SPLIT_CACHE[piece] = rel
            for s, e in rel:
                out.append(Sentence(b0 + s, b0 + e, block[2], block[3], block[4]))
        block = None

    pos = 0
    n = len(text)
    while pos <= n:
        nl = text.find("\n", pos)
        line_end = n if nl < 0 else nl
        s = pos
        pos = line_end + 1
        while s < line_end and text[s] in " \t\r":
            s += 1
        e = line_end
        while e > s and text[e - 1] in " \t\r":
            e -= 1
        if s >= e:
            if nl < 0:
                break
            continue
        item = _LIST_MARKER.match(text, s, e)
        if item:
            s = item.end()
        hm = _HEADING.match(text, s, e)
        title = hm.group(1).strip() if hm else None
        if title is None and not item:
            raw = text[s:e].rstrip(":")
            if raw.isupper() and len(raw.split()) <= 5 and re.fullmatch(r"[A-Z][A-Z /&,()'\-]*", raw):
                title = raw.strip()
                hm = None
        if title is not None and len(title.split()) <= 6:
            flush()
            kind = _heading_kind(title)
            found = heading_organs(title, organs) if kind != "skip" else ()
            heading, organs = title, found
            if kind == "skip":
                section = "skip"
            elif found:
                section = None if section == "skip" else section
            else:
                section = title.lower()
            if hm is None:
                continue
            s = hm.end()
            while s < e and text[s] in " \t":
                s += 1
            if s >= e:
                continue
            block = [s, e, heading, organs, section, True]
            continue
        joinable = (block is not None and not item and block[5]
                    and (text[s].islower() or text[s].isdigit() or text[s] in "(,"))
        if joinable:
            block[1] = e
        else:
            flush()
            block = [s, e, heading, organs, section, True]
        block[5] = text[e - 1] not in ".;:!?"
        if nl < 0:
            break
    flush()
    return out
