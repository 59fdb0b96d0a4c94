"""Study-date phrases of a cohort question ("scans from 2021", "after March 2020", "2015 onwards") as a range."""

from __future__ import annotations

import calendar
import datetime as _dt
import re
from typing import Callable, List, Optional, Tuple

__all__ = ["read_dates"]

DateRange = Tuple[Optional[str], Optional[str]]

_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_name) if m}
_MONTHS.update({m.lower(): i for i, m in enumerate(calendar.month_abbr) if m})
_MONTHS["sept"] = 9
_MONTH = r"(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_Y = r"((?:19|20)\d\d)"
# Every date is first rewritten as one token: @d:YYYY-MM-DD@ (a day), @m:YYYY-MM@ (a month) or a bare year, so
# that the phrase rules below need one spelling of each.
_TO_DAY = [
    (re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH},?\s+{_Y}\b"),
     lambda m: (int(m.group(3)), _MONTHS[m.group(2)], int(m.group(1)))),
    (re.compile(rf"\b{_MONTH}\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+{_Y}\b"),
     lambda m: (int(m.group(3)), _MONTHS[m.group(1)], int(m.group(2)))),
    (re.compile(rf"(?<![:\w]){_Y}-(\d\d)-(\d\d)\b"), lambda m: (int(m.group(1)), int(m.group(2)), int(m.group(3)))),
]
_TO_MONTH = [
    (re.compile(rf"\b{_MONTH},?\s+{_Y}\b"), lambda m: (int(m.group(2)), _MONTHS[m.group(1)])),
    (re.compile(rf"(?<![\d/])(\d{{1,2}})/{_Y}\b"), lambda m: (int(m.group(2)), int(m.group(1)))),
    (re.compile(rf"(?<![:\w]){_Y}-(0[1-9]|1[0-2])(?![\d-])"), lambda m: (int(m.group(1)), int(m.group(2)))),
]
_T = r"(@d:\d{4}-\d\d-\d\d@|@m:\d{4}-\d\d@|(?<![\w@:])(?:19|20)\d\d(?!\w))"
_SCANS = r"(?:(?:scans?|studies|study|exams?|examinations?|imaging|cts?)\s+)?"
_DONE = r"(?:scanned|acquired|performed|done|dated|imaged)"
_AND = r"\s*(?:and|to|-|–|until|through|till)\s*"


def _span(token: str) -> Tuple[_dt.date, _dt.date]:
    """First and last day a date token covers."""
    if token.startswith("@d:"):
        day = _dt.date.fromisoformat(token[3:-1])
        return day, day
    if token.startswith("@m:"):
        y, m = (int(v) for v in token[3:-1].split("-"))
        return _dt.date(y, m, 1), _dt.date(y, m, calendar.monthrange(y, m)[1])
    y = int(token)
    return _dt.date(y, 1, 1), _dt.date(y, 12, 31)


def _first(t: str) -> str:
    return _span(t)[0].isoformat()


def _last(t: str) -> str:
    return _span(t)[1].isoformat()


Rule = Tuple["re.Pattern[str]", Callable[["re.Match[str]"], DateRange]]
_RULES: List[Rule] = [
    (re.compile(rf"\b{_SCANS}(?:between|from)\s+{_T}{_AND}{_T}"), lambda m: (_first(m.group(1)), _last(m.group(2)))),
    (re.compile(rf"{_T}\s*(?:-|–|to|until|through)\s*{_T}"), lambda m: (_first(m.group(1)), _last(m.group(2)))),
    # "in 2018 and 2019", "2018, 2019 or 2020": the years between are taken too (the note says so)
    (re.compile(rf"\b(?:{_SCANS}(?:in|during|from|of)\s+)?{_T}(?:\s*(?:,|and|or|&)\s*{_T})+"),
     lambda m: (_first(m.group(1)), _last(re.findall(_T, m.group(0))[-1]))),
    # "since 2020", "from 2020 onwards"; a plain "scans from 2021" is that year (below)
    (re.compile(rf"\b{_SCANS}since\s+{_T}(?:\s+(?:onwards?|on))?"), lambda m: (_first(m.group(1)), None)),
    (re.compile(rf"\b{_SCANS}from\s+{_T}\s+(?:onwards?|on)\b"), lambda m: (_first(m.group(1)), None)),
    (re.compile(rf"\b{_SCANS}from\s+(@d:\d{{4}}-\d\d-\d\d@)"), lambda m: (_first(m.group(1)), None)),
    (re.compile(rf"{_T}\s+(?:onwards?|or later|and later|or after|and after|or more recent)\b"),
     lambda m: (_first(m.group(1)), None)),
    (re.compile(rf"\b{_SCANS}after\s+{_T}"),
     lambda m: ((_span(m.group(1))[1] + _dt.timedelta(days=1)).isoformat(), None)),
    (re.compile(rf"\b{_SCANS}(?:before|prior to|earlier than)\s+{_T}"),
     lambda m: (None, (_span(m.group(1))[0] - _dt.timedelta(days=1)).isoformat())),
    (re.compile(rf"\b{_SCANS}(?:until|up to|through|by|till)\s+{_T}"), lambda m: (None, _last(m.group(1)))),
    (re.compile(rf"{_T}\s+(?:or earlier|and earlier|or before|and before)\b"), lambda m: (None, _last(m.group(1)))),
    (re.compile(rf"\b{_SCANS}(?:{_DONE}\s+)?(?:in|during|from|of|on|dated)\s+{_T}"),
     lambda m: (_first(m.group(1)), _last(m.group(1)))),
    (re.compile(rf"\b{_DONE}\s+{_T}"), lambda m: (_first(m.group(1)), _last(m.group(1)))),
    (re.compile(_T), lambda m: (_first(m.group(1)), _last(m.group(1)))),  # a bare year: that year
]


def _tokens(text: str) -> str:
    """``text`` with days and months written as date tokens (invalid dates are left as they were)."""
    def day(fn: Callable[["re.Match[str]"], Tuple[int, int, int]]) -> Callable[["re.Match[str]"], str]:
        def one(m: "re.Match[str]") -> str:
            try:
                return f"@d:{_dt.date(*fn(m)).isoformat()}@"
            except ValueError:
                return m.group(0)
        return one

    def month(fn: Callable[["re.Match[str]"], Tuple[int, int]]) -> Callable[["re.Match[str]"], str]:
        def one(m: "re.Match[str]") -> str:
            y, mo = fn(m)
            return f"@m:{y:04d}-{mo:02d}@" if 1 <= mo <= 12 else m.group(0)
        return one

    for pattern, fn in _TO_DAY:
        text = pattern.sub(day(fn), text)
    for pattern, fn2 in _TO_MONTH:
        text = pattern.sub(month(fn2), text)
    return text


def read_dates(text: str, notes: List[str]) -> Tuple[str, Optional[DateRange]]:
    """(``text`` without its study-date phrase, the ``(first, last)`` ISO range, open ends None).

    One phrase is read; a second date phrase is left in the text with a note, as is anything read loosely (years
    listed apart: "in 2018 and 2020" covers 2018 to 2020).
    """
    text = _tokens(text)
    for pattern, value in _RULES:
        m = pattern.search(text)
        if m is None:
            continue
        found = value(m)
        years = re.findall(_T, m.group(0))
        if len(years) > 2 or (len(years) == 2 and "between" not in m.group(0) and "-" not in m.group(0)
                              and abs(_span(years[1])[0].year - _span(years[0])[0].year) > 1):
            notes.append(f"dates {', '.join(_show(y) for y in years)} read as one range, {found[0]} to {found[1]}")
        rest = text[:m.start()] + " " + text[m.end():]
        if re.search(_T, rest):
            notes.append("a second date in the question was not applied: one study-date range is read")
        return _plain(rest), found
    return _plain(text), None


def _show(token: str) -> str:
    return token.strip("@")[2:] if token.startswith("@") else token


def _plain(text: str) -> str:
    """Date tokens back to their ISO spelling (left in the text only when they were not read)."""
    return re.sub(r"@[dm]:([\d-]+)@", r"\1", text)
