"""Split a cohort question ("fatty liver in women over 60") into search text, organ and SQL filters."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ctglip_sdk import organs
from ctglip_sdk.errors import QueryError

__all__ = ["ParsedQuery", "parse_query"]

# Demographic words map to the `sex` filter; they are removed from the text sent to the encoder because the
# image embedding carries no reliable sex signal and the words only add noise to the text vector.
_SEX = {
    "F": r"women|woman|females?|female patients?|girls?|ladies",
    "M": r"men|man|males?|male patients?|boys?",
}
# A number is an age only when no unit follows it: "kidney stone under 5 mm" and "renal cyst 2-3 cm" are sizes
# (no SQL filter holds lesion sizes, so they stay in the text for the encoder), and "2.5" is not an age of 5.
_NOT_SIZE = r"(?![\d.]*\s*(?:mm|cm|ml|cc|hu|%|millimet|centimet|x\b|×))"
_N = r"(?<![\d.])(\d{1,3})(?![\d.])"
_YEARS = r"(?:\s*(?:years?|y/?o|yrs?))?\b"
_AGE_PATTERNS = [
    (re.compile(rf"\b(?:aged|age|ages)?\s*{_N}\s*(?:-|–|to)\s*{_N}{_NOT_SIZE}{_YEARS}"), "range"),
    (re.compile(rf"\b(?:over|older than|above|>=?|at least|aged over)\s*{_N}{_NOT_SIZE}{_YEARS}"), "min"),
    (re.compile(rf"\b(?:under|younger than|below|<=?|at most|aged under)\s*{_N}{_NOT_SIZE}{_YEARS}"), "max"),
    (re.compile(rf"{_N}\s*\+"), "min"),
]
_CONTRAST = [(re.compile(r"\b(non[- ]?contrast|unenhanced|without contrast)\b"), False),
             (re.compile(r"\b(contrast[- ]enhanced|with contrast|portal[- ]venous)\b"), True)]
_FILLER = re.compile(r"\b(in|of|with|among|for|patients?|subjects?|people|who are|who have|having|and|the)\b")


@dataclass
class ParsedQuery:
    """What :func:`parse_query` understood: ``text`` for the encoder, ``organ`` and ``where`` for filters."""

    text: str
    organ: Optional[List[str]] = None
    where: Dict[str, Any] = field(default_factory=dict)
    original: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return {"text": self.text, "organ": self.organ, "where": self.where, "original": self.original}


def _find_organ(text: str) -> Optional[List[str]]:
    """Longest synonym phrase in the text (so "right kidney" beats "kidney"), resolved to v1 classes; else the
    organ of the one finding the text asks for ("hepatomegaly" -> liver, "AAA" -> aorta)."""
    words = re.findall(r"[a-z]+", text.lower())
    best: Optional[str] = None
    for n in (3, 2, 1):
        for i in range(len(words) - n + 1):
            phrase = " ".join(words[i:i + n])
            if phrase in organs.SYNONYMS:
                best = phrase
                break
        if best:
            break
    if best:
        return organs.lookup(best)
    from ctglip_sdk.reports.query import read_query  # noqa: PLC0415 - the report vocabulary loads on first use

    found = read_query(text)
    return organs.lookup(found.organ) if found is not None else None


def parse_query(question: str, infer_organ: bool = True) -> ParsedQuery:
    """Turn a cohort question into search text, an organ filter and ``where`` filters.

    Understands sex words (women/men/female/male), ages ("over 60", "under 40", "40-60", "65+"), contrast
    ("non-contrast", "portal venous") and, with ``infer_organ``, the organ named in the text. Everything it
    does not understand stays in the text, which the model encodes.

    Example:
        >>> q = parse_query("fatty liver in women over 60")
        >>> q.text, q.organ, q.where
        ('fatty liver', ['liver'], {'sex': 'F', 'age': (60, None)})
    """
    if not isinstance(question, str) or not question.strip():
        raise QueryError("empty query text")
    text = " " + question.strip().lower() + " "
    where: Dict[str, Any] = {}
    for sex, pattern in _SEX.items():
        m = re.search(rf"\b({pattern})\b", text)
        if m:
            where["sex"] = sex
            text = text[:m.start()] + " " + text[m.end():]
            break
    for pattern, kind in _AGE_PATTERNS:
        m = pattern.search(text)
        if not m:
            continue
        if kind == "range":
            lo, hi = sorted((int(m.group(1)), int(m.group(2))))
            where["age"] = (lo, hi)
        elif kind == "min":
            where["age"] = (int(m.group(1)), None)
        else:
            where["age"] = (None, int(m.group(1)))
        text = text[:m.start()] + " " + text[m.end():]
        break
    for pattern, value in _CONTRAST:
        m = pattern.search(text)
        if m:
            where["contrast"] = value
            text = text[:m.start()] + " " + text[m.end():]
            break
    if where:
        # Only strip connective words when a filter phrase was removed ("liver cyst in women" -> "liver cyst").
        text = _FILLER.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip(" ,.;")
    if not text:
        raise QueryError(f"query {question!r} has no finding or organ words left to search for")
    return ParsedQuery(text=text, organ=_find_organ(text) if infer_organ else None, where=where, original=question)
