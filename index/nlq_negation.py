"""A negation just before a filter phrase of a cohort question ("not older than 50", "excluding men", "no earlier
than 2020"): where it starts, so the reader can invert the filter or refuse it."""

from __future__ import annotations

import re
from typing import Optional, Tuple

__all__ = ["negation_before", "complement_open"]

# Read right to left from the filter phrase: the negating word, then at most a few words that carry no meaning of
# their own ("excluding patients over 80", "not in children", "excluding scans before 2015", "non-elderly").
_NEGATION = re.compile(
    r"(?:\b(?:not|no|excluding|exclude|excludes|except(?:\s+for)?|other\s+than|but\s+not|never)\s+"
    r"(?:(?:in|the|those|patients?|pts|subjects?|people|scans?|studies|study|exams?|who\s+are|aged?)\s+){0,3}"
    r"|\bnon-?\s*)$")

# A strict comparison ("over 50", "older than 50") was read with its bound included (docs/index.md); its
# complement keeps the bound too, as people mean it ("not older than 50" includes 50-year-olds).
_STRICT = re.compile(r"\b(?:over|older than|above|greater than|more than|under|younger than|below|less than|"
                     r"after|before|later than|earlier than|newer than)\b|(?<![<>=])[<>](?!=)")


def negation_before(text: str, start: int) -> Optional[int]:
    """Start of a negation that ends right where a filter phrase starts (at ``start``), else None."""
    m = _NEGATION.search(text[max(0, start - 60):start])
    return None if m is None else max(0, start - 60) + m.start()


def complement_open(bounds: Tuple[Optional[int], Optional[int]], said: str) -> Optional[Tuple[Optional[int],
                                                                                              Optional[int]]]:
    """The complement of a one-sided integer range read from ``said``: ``(lo, None)`` -> ``(None, lo - 1)`` or, for a
    strict comparison, ``(None, lo)``; a range closed on both sides has no one-range complement (None)."""
    lo, hi = bounds
    strict = bool(_STRICT.search(said))
    if lo is not None and hi is None:
        return None, lo if strict else lo - 1
    if hi is not None and lo is None:
        return hi if strict else hi + 1, None
    return None
