"""Report segmentation: sections, organ headings, list items, wrapped lines and sentences with character offsets."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

from ctglip_sdk.reports.framing import ANSWER_LINE, denial_title
from ctglip_sdk.reports.vocab import CHECKLIST as _CHECKLIST
from ctglip_sdk.reports.vocab import STATEMENT as _STATEMENT

__all__ = ["Sentence", "segment", "normalise_space"]


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
    "question", "signed", "dictated by", "electronically signed", "scan parameters", "acquisition", "hx",
    "clinical", "pmh", "presenting complaint", "symptoms", "referral",
}
_SKIP_PREFIXES = ("clinical ", "reason for ", "history of ", "indication ")
# Section titles that also open a section in the middle of a line, after a sentence ("COMPARISON: None. FINDINGS: The
# liver ..."; reports exported as one paragraph): the report's own sections only. A skipped name in the middle of a
# line ("... Small hepatic cyst. Comparison: the cyst is larger than in 2020. Small left renal stone.") would skip the
# findings after it; one at the start of the paragraph is skipped up to the findings' own title anyway. Organ titles
# are not in it either: "... normal. Kidneys: small cyst." reads the same as a sentence.
_INLINE_TITLES = frozenset({
    "findings", "finding", "impression", "impressions", "conclusion", "conclusions", "summary", "opinion",
    "result", "results", "report", "recommendation", "recommendations", "addendum", "comment", "comments",
    "diagnosis", "assessment", "interpretation"})
# A findings title further on, at a line's start or after a sentence: the text before it is not the findings.
_LATER_FINDINGS = re.compile(r"(?im)(?:^|[.;])[ \t]*(?:findings?|results?|report)[ \t]*(?::|$)")
_INLINE_HINT = re.compile(r"[.;][ \t]+[A-Za-z][A-Za-z /&]{0,38}:")  # a title may open inside a line (checked word by word)
# A title with one of these words is about the request or the exam, whatever else it says ("PATIENT HISTORY",
# "Relevant clinical history", "History and indication").
_SKIP_WORDS = frozenset({"history", "hx", "indication", "indications", "technique", "comparison", "comparisons"})
_WORDS = re.compile(r"[a-z]+")
_TITLE_PARTS = re.compile(r"\s*(?:/|&|,|\band\b|\+)\s*")

_LIST_MARKER = re.compile(
    r"[ \t]*(?:[-*\u2022\u00b7\u2013>]+|\(?\d{1,2}[.)](?!\d)|\(?[a-hA-H]\)|[ivxIVX]{1,4}\))[ \t]+")
_HEADING = re.compile(r"[ \t]*([A-Za-z][A-Za-z0-9 /&,()'+\-]{0,60}?)[ \t]*:(?=\s|$)")
_TITLE = re.compile(r"[A-Za-z][A-Za-z0-9 /&,()'+\-]{0,60}")
# "[.;]+" spelt "[.;][.;]*": a pattern that starts with a character set lets the regex engine skip ahead fast
# A period also ends a sentence when the next one follows without a space ("No hydronephrosis.Small cyst"): a
# lower-case letter before it and a capitalised word after it (decimals and "e.g." have neither).
_BOUNDARY = re.compile(r"[.;][.;]*(?:(?=\s|$)|(?<=[a-z]\.)(?=[A-Z][a-z]))")
_LEAD_CHARS = frozenset("-*\u2022\u00b7>(0123456789 \t\r\n")
_ONLY_NUMBER = re.compile(r"\s*\(?\d{1,2}[.)]?\s*$")
_LOWER_NEXT = re.compile(r"[ \t]+[a-z]")
_ALNUM = re.compile(r"[A-Za-z0-9]")
_LEADING = re.compile(r"(?:\s*(?:[-*\u2022\u00b7>]+|\(?\d{1,2}[.)](?!\d))\s+)+|\s+")

# Words before a period that do not end a sentence: "approx. 3 cm", "e.g. cysts", "Dr. Smith", "cyst vs. mass".
ABBREVIATIONS = {
    "approx", "appr", "approximately", "e.g", "eg", "i.e", "ie", "dr", "drs", "vs", "cf", "fig", "figs", "seg",
    "segs", "incl", "ca", "mr", "mrs", "ms", "prof", "max", "diam", "est", "resp", "vol", "ref", "sp", "st",
    "ant", "lat", "prox", "pt", "pts", "img", "ser", "al", "et", "bilat",
}
# Side abbreviations end a sentence ("stone on the rt. No hydronephrosis") unless a lower-case word follows
# ("Lt. renal cyst").
_SIDE_ABBREVIATIONS = {"lt", "rt"}


# A line that starts in lower case continues the previous one only where that line looks wrapped: long, or
# ending in a word or mark that cannot end a statement, or the new line starting with one that cannot start it.
# "Kidneys: no stones" + "mild left hydronephrosis" (a list without periods) are two statements.
_WRAP_WIDTH = 40
_OPEN_END = frozenset({"the", "a", "an", "of", "in", "on", "at", "to", "with", "and", "or", "by", "from", "for",
                       "is", "are", "was", "were", "which", "that", "as", "measuring", "without", "within", "into",
                       "than", "left", "right", "both", "no", "not", "nor", "but", "its", "their", "this", "these"})
_OPEN_START = frozenset({"and", "or", "nor", "with", "which", "that", "measuring", "in", "of", "at", "to", "than",
                         "without", "from", "within", "consistent", "compatible", "likely", "probably", "possibly",
                         "suggesting", "as", "on", "for", "by", "is", "are", "was", "were", "but", "extending",
                         "involving", "containing", "demonstrating", "unchanged", "stable", "since", "when",
                         "where", "while", "although", "however", "abutting", "adjacent", "along", "into"})
_FIRST_WORD = re.compile(r"[a-z]+")

_SPLIT_CACHE: Dict[str, Tuple[int, List[Tuple[int, int]]]] = {}  # block text -> (offset, sentences)
_SPLIT_CACHE_SIZE = 50_000
# First characters a list marker can start with: the regex runs only on lines that start like one (a marker
# that starts with a letter, "a)" or "iv)", has its parenthesis within five characters).
_MARKER_FIRST = frozenset("-*\u2022\u00b7\u2013>(0123456789")
_MARKER_LETTER = frozenset("abcdefghABCDEFGHivxIVX")
_UPPER_TITLE = re.compile(r"[A-Z][A-Z /&,()'\-]*")
_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ASCII_ALNUM = _ASCII_LETTERS | frozenset("0123456789")
_STRIP = " \t\r"
_new_sentence = tuple.__new__  # Sentence(...) without the Python-level __new__ of a NamedTuple
_TITLE_OK: Dict[str, bool] = {}  # text before a colon -> whether it is a heading's title
# What a period after a word means, by the word: 0 ends the sentence, 1 never does, 2 not after a lone list number,
# 3 not before a lower-case word.
_WORD_KIND: Dict[str, int] = {}


@lru_cache(maxsize=4096)
def _heading_kind(title: str) -> str:
    low = " ".join(title.lower().replace("_", " ").split())
    if low in SKIP_SECTIONS or low.startswith(_SKIP_PREFIXES) or not _SKIP_WORDS.isdisjoint(_WORDS.findall(low)):
        return "skip"
    # "INDICATION/HISTORY", "Technique and comparison": several section names joined
    parts = [p for p in _TITLE_PARTS.split(low) if p]
    if len(parts) > 1 and all(p in SKIP_SECTIONS or p.startswith(_SKIP_PREFIXES) for p in parts):
        return "skip"
    return "heading"


def _word_kind(word: str) -> int:
    """0, 1 or 2 for the word before a period (see ``_WORD_KIND``)."""
    kind = _WORD_KIND.get(word)
    if kind is None:
        w = word.lower().lstrip("([").rstrip(")]")
        if w in ABBREVIATIONS or (len(w) >= 2 and w[-2] == "." and w[-1].isalpha()):
            kind = 1  # "approx." / "e.g." / "a.m." spelt out letter by letter
        elif w in _SIDE_ABBREVIATIONS:
            kind = 3
        else:
            kind = 2 if w[-1:].isdigit() else 0
        if len(_WORD_KIND) >= 10_000:
            _WORD_KIND.clear()
        _WORD_KIND[word] = kind
    return kind


def _heading_at(text: str, s: int, e: int) -> Optional[Tuple[str, int]]:
    """(title, end of its colon) of a heading line, as ``_HEADING`` finds it, for titles of six words at most.

    ``s`` is the line's first character after spaces and list markers. A title cannot contain a colon, so only
    the line's first colon can close it; one ``str.find`` replaces the lazy regex's retries at every length.
    """
    c = text.find(":", s, e)
    if c < 0 or (c + 1 < e and not text[c + 1].isspace()):
        return None
    title = text[s:c].rstrip(" \t")
    ok = _TITLE_OK.get(title)
    if ok is None:
        # a title of more than six words is a sentence with a colon (and too long to be an upper-case heading)
        ok = _TITLE.fullmatch(title) is not None and len(title.split()) <= 6
        if len(_TITLE_OK) >= 10_000:
            _TITLE_OK.clear()
        _TITLE_OK[title] = ok
    return (title, c + 1) if ok else None


def _inline_cuts(line: str) -> List[int]:
    """Offsets of the spaces in ``line`` after which a section title opens ("... None. FINDINGS: ..."), in order."""
    cuts: List[int] = []
    c = line.find(":")
    while c >= 0:
        if c + 1 == len(line) or line[c + 1] in " \t":
            k = max(line.rfind(". ", 0, c), line.rfind("; ", 0, c))
            if k >= 0 and c - k <= 40 and " ".join(line[k + 1:c].lower().split()) in _INLINE_TITLES:
                cuts.append(k + 1)
        c = line.find(":", c + 1)
    return cuts


def _lines(text: str) -> List[str]:
    """The lines of ``text``, a line cut at the space before a section title that opens inside it. One character
    (the newline, or that space) separates each piece from the next, as after ``text.split("\\n")``."""
    out: List[str] = []
    for line in text.split("\n"):
        last = 0
        for cut in _inline_cuts(line) if ":" in line else ():
            out.append(line[last:cut])
            last = cut + 1
        out.append(line[last:] if last else line)
    return out


def _trimmed(text: str, s: int, e: int) -> Optional[Tuple[int, int]]:
    """``text[s:e]`` without list markers and spaces around it; None when no letter or digit is left."""
    c = text[s]
    if c in _LEAD_CHARS:
        nxt = text[s + 1] if s + 1 < e else " "
        if c == " " and nxt not in _LEAD_CHARS and not nxt.isspace():
            s += 1  # the space after the previous sentence: all that _LEADING would take
        else:
            lead = _LEADING.match(text, s, e)
            if lead:
                s = lead.end()
    while e > s and text[e - 1].isspace():
        e -= 1
    if e > s and (text[s] in _ASCII_ALNUM or _ALNUM.search(text, s, e)):
        return s, e
    return None


def _wrapped(text: str, prev_start: int, prev_end: int, s: int, e: int) -> bool:
    """Whether the line ``text[s:e]`` (starting in lower case) continues the line ``text[prev_start:prev_end]``."""
    if prev_end - prev_start >= _WRAP_WIDTH or text[prev_end - 1] in ",-(/&":
        return True
    last = text[prev_start:prev_end].rsplit(None, 1)[-1].lower()
    if last in _OPEN_END:
        return True
    first = _FIRST_WORD.match(text, s, e)
    return first is not None and first.group() in _OPEN_START


def _open_end(text: str, s: int, e: int) -> bool:
    """Whether the line ``text[s:e]`` ends in a mark or word that cannot end a statement ("... OF THE")."""
    return text[e - 1] in ",-(/&" or text[s:e].rsplit(None, 1)[-1].lower() in _OPEN_END


def _split(text: str, start: int, end: int) -> List[Tuple[int, int]]:
    """Sentence offsets inside ``text[start:end]``; periods after abbreviations and list numbers do not split."""
    out: List[Tuple[int, int]] = []
    cur = start
    for m in _BOUNDARY.finditer(text, start, end):
        j = m.start()
        if text[j] == "." and j > cur and not text[j - 1].isspace():
            # abbreviations are short: the last word of the 12 characters before the period suffices
            word = text[j - 12 if j - 12 > cur else cur:j].rsplit(None, 1)[-1]
            kind = _WORD_KIND.get(word)
            if kind is None:
                kind = _word_kind(word)
            if kind and (kind == 1 or (_ONLY_NUMBER.fullmatch(text, cur, j + 1) if kind == 2 else
                                       _LOWER_NEXT.match(text, j + 1, end) is not None)):
                continue  # "approx. 3 cm", "1." opening a numbered item, "Lt. renal cyst"
        stop = m.end()
        if text[cur] in _ASCII_LETTERS:  # _trimmed, inline: nothing to trim before, "." or ";" ends it
            out.append((cur, stop))
        else:
            piece = _trimmed(text, cur, stop)
            if piece is not None:
                out.append(piece)
        cur = stop
    if cur < end:
        piece = _trimmed(text, cur, end)
        if piece is not None:
            out.append(piece)
    return out


def _emit(out: List[Sentence], text: str, b0: int, b1: int, heading: Optional[str], organs: Tuple[str, ...],
          section: Optional[str]) -> None:
    """Append the sentences of the block ``text[b0:b1]``."""
    piece = text[b0:b1]
    hit = _SPLIT_CACHE.get(piece)  # report lines repeat across an archive ("Spleen: Normal.")
    if hit is None:
        spans = _split(text, b0, b1)
        if len(_SPLIT_CACHE) >= _SPLIT_CACHE_SIZE:
            _SPLIT_CACHE.clear()
        _SPLIT_CACHE[piece] = (b0, spans)
        for s, e in spans:
            out.append(_new_sentence(Sentence, (s, e, heading, organs, section)))
    else:
        d = b0 - hit[0]
        for s, e in hit[1]:
            out.append(_new_sentence(Sentence, (s + d, e + d, heading, organs, section)))


def segment(text: str, heading_organs: Callable[[str, Tuple[str, ...]], Tuple[str, ...]],
            title_says: Optional[Mapping[str, int]] = None) -> List[Sentence]:
    """Split a report into sentences that remember their section and organ heading.

    A heading is a short title ending in a colon at the start of a line ("KIDNEYS:", "Liver and biliary tree:
    normal."), or a short upper-case line ("IMPRESSION"). Its organs apply to the sentences that follow until the
    next heading. Lines that wrap mid-sentence are joined; list markers ("1.", "-", "a)") are dropped.

    ``title_says`` (``Vocab.title_memo``: title -> flags) tells what a title states: a title that names a finding
    before a colon with an answer after it is a checklist line, parsed whole ("Gallstones: none."); an upper-case
    line that states a finding or a normal organ is text ("CHOLELITHIASIS", "NO ACUTE ABNORMALITY"). Section
    titles ("FINDINGS", "Indication") are headings whatever they say.

    Example:
        >>> text = "SPLEEN: Normal. No focal lesion."
        >>> [(text[s.start:s.end], s.heading_organs) for s in segment(text, lambda title, current: ("spleen",))]
        [('Normal.', ('spleen',)), ('No focal lesion.', ('spleen',))]
    """
    out: List[Sentence] = []
    heading: Optional[str] = None
    organs: Tuple[str, ...] = ()
    section: Optional[str] = None
    # the open block of lines (one sentence group): its span, heading, organs, section, and whether it may go on
    b0 = b1 = -1
    b_heading: Optional[str] = None
    b_organs: Tuple[str, ...] = ()
    b_section: Optional[str] = None
    b_open = False
    b_statement = False  # the open block is one upper-case line that states a finding ("GALLSTONES")
    prev_start = 0  # where the last line of the open block starts
    # A skipped section ("Comparison:") or a denying title ("Negative:") says one paragraph: whether it has had text
    # yet, whether the current title is one, and for a denying title with its text on its own line, that the line
    # is all it denies (then the heading before it comes back).
    para_said = para_ends = line_only = False
    before: Tuple[Optional[str], Tuple[str, ...], Optional[str]] = (None, (), None)
    pos = 0
    # most reports have no title inside a line: one C-level search spares them the per-line look
    for line in text.split("\n") if _INLINE_HINT.search(text) is None else _lines(text):
        line_start = pos
        pos += len(line) + 1
        body = line.strip(_STRIP)
        if not body:
            if para_ends and para_said:
                if section != "skip":  # "Negative:" + its lines: what follows the blank line is not denied
                    heading, organs, section = before
                    para_ends = para_said = False
                elif _LATER_FINDINGS.search(text, pos) is None:
                    # A blank line ends what a skipped section says ("Comparison: prior CT." then the findings
                    # without a title of their own), unless the findings have a title further on: then a second
                    # paragraph is still the history ("CLINICAL HISTORY: ..." + "Known left renal cyst ...").
                    b0 = -1
                    heading, organs, section = None, (), None
                    para_ends = para_said = False
            continue
        if line_only:  # the line after "Negative: hydronephrosis." is under the heading before it
            heading, organs, section = before
            line_only = para_ends = False
        s = line_start + line.find(body[0])
        e = s + len(body)
        c = body[0]
        if c in _MARKER_FIRST or (c in _MARKER_LETTER and ")" in body[1:5]):
            item = _LIST_MARKER.match(text, s, e)
        else:
            item = None
        if item:
            s = item.end()
        hm = _heading_at(text, s, e) if ":" in body else None
        title = hm[0] if hm else None
        statement = False  # an upper-case line that states a finding: one statement, not wrapped text
        if title is not None and title_says is not None and title_says[title] & _CHECKLIST and hm[1] < e and (
                text[hm[1]:e].strip()) and _heading_kind(title) != "skip":
            title = hm = None  # "Gallstones: none.": the title is what the line is about, not a heading
        elif title is None and not item:
            raw = body.rstrip(":")
            if raw.isupper() and len(raw.split()) <= 5 and _UPPER_TITLE.fullmatch(raw):
                title = raw.strip()
                hm = None
                if title_says is not None and title_says[title] & _STATEMENT and _heading_kind(title) != "skip":
                    title, statement = None, True
        if title is not None:  # six words at most: _heading_at checks, an upper-case title has five at most
            if b0 >= 0 and b_section != "skip":
                _emit(out, text, b0, b1, b_heading, b_organs, b_section)
            b0 = -1
            kind = _heading_kind(title)
            found = heading_organs(title, organs) if kind != "skip" else ()
            denies = kind != "skip" and denial_title(title)
            if denies and not (para_ends and section != "skip"):  # a second denying title keeps the first's
                before = (heading, organs, section) if section != "skip" else (None, (), None)
            para_ends, para_said, line_only = kind == "skip" or denies, False, False
            heading, organs = title, found
            if kind == "skip":
                section = "skip"
            elif found:
                section = None if section == "skip" else section
            else:
                section = title.lower()
            if hm is None:
                continue
            s = hm[1]
            while s < e and text[s] in " \t":
                s += 1
            if s >= e:
                continue
            b0, b1, b_heading, b_organs, b_section, b_open = s, e, heading, organs, section, True
            prev_start = line_start
            para_said, line_only = para_ends, denies
            continue
        c = text[s]
        if para_ends:
            para_said = True
        if b0 >= 0 and not item and b_open and (c.islower() or c.isdigit() or c in "(,") and (
                c not in _ASCII_LETTERS or _wrapped(text, prev_start, b1, s, e)):
            b1 = e  # a line wrapped mid-sentence
        elif b0 >= 0 and b_statement and not item and ANSWER_LINE.fullmatch(text, s, e):
            b1 = e  # "GALLSTONES" + "None.": the line above asked, this one answers
            b_open = b_statement = False
            prev_start = line_start
            continue
        else:
            if b0 >= 0 and b_section != "skip":
                _emit(out, text, b0, b1, b_heading, b_organs, b_section)
            b0, b1, b_heading, b_organs, b_section = s, e, heading, organs, section
        # an upper-case statement line ends there ("CHOLELITHIASIS" + "2 CM CYST ...") unless its last word is open
        b_open = text[e - 1] not in ".;:!?" and (not statement or _open_end(text, s, e))
        b_statement = statement and b0 == s
        prev_start = line_start
    if b0 >= 0 and b_section != "skip":
        _emit(out, text, b0, b1, b_heading, b_organs, b_section)
    return out


def normalise_space(raw: str) -> str:
    """``" ".join(raw.split())``: the sentence as OrganFinding.sentence shows it (most need no change)."""
    # printable text has no whitespace but " " (tabs, newlines and Unicode spaces are not printable)
    if raw.isprintable() and "  " not in raw and raw[:1] != " " and raw[-1:] != " ":
        return raw
    return " ".join(raw.split())
