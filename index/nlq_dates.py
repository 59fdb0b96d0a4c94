"""Study-date phrases of a cohort question ("scans from 2021", "after March 2020", "2015 onwards") as a range."""

from __future__ import annotations

import calendar
import datetime as _dt
import re
from typing import Callable, List, Optional, Tuple

from .nlq_negation import negation_before

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
    # ISO, also without leading zeros ("2021-3-5" was read as the year 2021, "-3-5" left in the text)
    (re.compile(rf"(?<![:\w]){_Y}-(\d{{1,2}})-(\d{{1,2}})(?![\w-])"),
     lambda m: (int(m.group(1)), int(m.group(2)), int(m.group(3)))),
]
_TO_MONTH = [
    (re.compile(rf"\b{_MONTH},?\s+{_Y}\b"), lambda m: (int(m.group(2)), _MONTHS[m.group(1)])),
    (re.compile(rf"(?<![\d/])(\d{{1,2}})/{_Y}\b"), lambda m: (int(m.group(2)), int(m.group(1)))),
    (re.compile(rf"(?<![:\w]){_Y}-(0[1-9]|1[0-2])(?![\d-])"), lambda m: (int(m.group(1)), int(m.group(2)))),
]
# Quarters and halves of a year become one token too, @p:FIRST_LAST@, so that "before Q2 2021" or "between H1
# 2019 and H1 2020" read like any other date ("the first half of 2020", "2020 Q3", "the last quarter of 2019").
_NTH = r"(first|1st|second|2nd|third|3rd|fourth|4th|last|final|latter)"
_UNIT = r"(?!\s*(?:ml|cc|mm|cm|hu|mg|g|kg|units?|ms|mcg|mgy|mgy\*?cm|dlp)\b)"
_YB = r"((?:19|20)\d\d)(?![\w/.])" + _UNIT  # "q4 2000 ml" is a dose, not a quarter
_JOIN = r"\s*(?:and|&|-|–|to|through)\s*"
_TO_PERIOD = [
    # two parts of one year first ("Q1 and Q2 2020", "H1-H2 2019", "the first and second half of 2020"): the span
    # from the first to the last (read one at a time, the first was left in the text and the second applied)
    (re.compile(rf"\bq([1-4]){_JOIN}q([1-4])\s*(?:of\s+)?{_YB}"), lambda m: _parts(m.group(3), m.group(1), m.group(2), 4)),
    (re.compile(rf"\bh([12]){_JOIN}h([12])\s*(?:of\s+)?{_YB}"), lambda m: _parts(m.group(3), m.group(1), m.group(2), 2)),
    (re.compile(rf"\b(?:the\s+)?{_NTH}{_JOIN}{_NTH}\s+quarters?\s+(?:of\s+)?{_YB}"),
     lambda m: _parts(m.group(3), m.group(1), m.group(2), 4)),
    (re.compile(rf"\b(?:the\s+)?(first|1st|second|2nd){_JOIN}(second|2nd|last|latter)\s+(?:half|halves)\s+(?:of\s+)?{_YB}"),
     lambda m: _parts(m.group(3), m.group(1), m.group(2), 2)),
    (re.compile(rf"\bq([1-4])\s*(?:of\s+)?{_YB}"), lambda m: _part(m.group(2), m.group(1), 4)),
    (re.compile(rf"(?<![\w@:/.]){_YB}\s*q([1-4])\b"), lambda m: _part(m.group(1), m.group(2), 4)),
    (re.compile(rf"\b(?:the\s+)?{_NTH}\s+quarter\s+(?:of\s+)?{_YB}"), lambda m: _part(m.group(2), m.group(1), 4)),
    (re.compile(rf"\bh([12])\s*(?:of\s+)?{_YB}"), lambda m: _part(m.group(2), m.group(1), 2)),
    (re.compile(rf"\b(?:the\s+)?(first|1st|second|2nd|last|latter)\s+half\s+(?:of\s+)?{_YB}"),
     lambda m: _part(m.group(2), m.group(1), 2)),
]
# A bare year is not one when a unit follows ("liver volume over 2000 ml") or it is part of a numeric date
# ("2021/03/15", "15.01.2021": day and month order are ambiguous, so such dates are refused below).
_T = (r"(@d:\d{4}-\d\d-\d\d@|@m:\d{4}-\d\d@|@p:\d{4}-\d\d-\d\d_\d{4}-\d\d-\d\d@|(?<![\w@:/.])(?:19|20)\d\d(?!\w)(?![/.]\d)"
      r"(?!\s*(?:ml|cc|mm|cm|hu|mg|g|kg|units?|ms|mcg|mgy|mgy\*?cm|dlp)\b))")
# Words before a year that make it a guideline's edition or a birth year, never a study date.
_NOT_STUDY_YEAR = re.compile(r"(?:fleischner|bosniak|li-?rads|lung-?rads|pi-?rads|ti-?rads|o-?rads|c-?rads|acr|who|"
                             r"aha|tnm|version|edition|v\.?|criteria|guidelines?|classification)\s*$")
_BORN = re.compile(r"\bborn\s+(?:in\s+|before\s+|after\s+|since\s+|on\s+)?$")
# A year in a numeric day/month/year date ("01/15/2021", "15.01.2021") or with a fuzzy qualifier.
_NUMERIC_DATE = re.compile(r"\b\d{1,2}[/.]\d{1,2}[/.]((?:19|20)\d\d)\b|\b((?:19|20)\d\d)[/.]\d{1,2}[/.]\d{1,2}\b")
_FUZZY = re.compile(r"\b(early|late|mid|spring|summer|autumn|fall|winter|beginning of|end of)[\s-]+$")
_SCANS = r"(?:(?:scans?|studies|study|exams?|examinations?|imaging|cts?|scanned|imaged|acquired|performed)\s+)?"
_DONE = r"(?:scanned|acquired|performed|done|dated|imaged)"
_AND = r"\s*(?:and|to|-|–|until|through|till)\s*"


def _span(token: str) -> Tuple[_dt.date, _dt.date]:
    """First and last day a date token covers."""
    if token.startswith("@d:"):
        day = _dt.date.fromisoformat(token[3:-1])
        return day, day
    if token.startswith("@p:"):
        first, last = token[3:-1].split("_")
        return _dt.date.fromisoformat(first), _dt.date.fromisoformat(last)
    if token.startswith("@m:"):
        y, m = (int(v) for v in token[3:-1].split("-"))
        return _dt.date(y, m, 1), _dt.date(y, m, calendar.monthrange(y, m)[1])
    y = int(token)
    return _dt.date(y, 1, 1), _dt.date(y, 12, 31)


def _first(t: str) -> str:
    return _span(t)[0].isoformat()


def _last(t: str) -> str:
    return _span(t)[1].isoformat()


def _between(a: str, b: str) -> DateRange:
    """Both ends of two date tokens, in either order ("between 2022 and 2018" is 2018-2022)."""
    lo, hi = sorted((a, b), key=lambda t: _span(t)[0])
    return _first(lo), _last(hi)


def _after(t: str) -> DateRange:
    return (_span(t)[1] + _dt.timedelta(days=1)).isoformat(), None


def _before(t: str) -> DateRange:
    return None, (_span(t)[0] - _dt.timedelta(days=1)).isoformat()


_ORDINAL = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4}


def _parts(year: str, a: str, b: str, parts: int) -> str:
    """One period token from part ``a`` to part ``b`` of a year (either order)."""
    lo, hi = sorted((_part(year, a, parts), _part(year, b, parts)))
    return f"{lo.split('_')[0]}_{hi.split('_')[1]}"


def _part(year: str, which: str, parts: int) -> str:
    """A period token for part ``which`` (digit, ordinal word or last/final/latter) of ``parts`` equal parts of a
    year: "@p:2020-07-01_2020-12-31@" for the second half of 2020."""
    k = parts if which in ("last", "final", "latter") else int(_ORDINAL.get(which, which))
    y, months = int(year), 12 // parts
    end = k * months
    last = _dt.date(y, end, calendar.monthrange(y, end)[1])
    return f"@p:{_dt.date(y, end - months + 1, 1).isoformat()}_{last.isoformat()}@"


Rule = Tuple["re.Pattern[str]", Callable[["re.Match[str]"], DateRange]]
# "now", "present", "today": an open end ("from 2020 until now" was the year 2020, "until now" left in the text).
_NOW = r"(?:now|(?:the\s+)?present(?:\s+day)?|(?:to\s+)?date|today)\b"
_RULES: List[Rule] = [
    (re.compile(rf"(?:\b{_SCANS}(?:between|from|since)\s+)?{_T}\s*(?:-|–|to|until|till|through|up\s+to)\s*{_NOW}"),
     lambda m: (_first(m.group(1)), None)),
    # "on or after 2021", "in or before 2019": the year itself is in ("after"/"before" alone leave it out)
    (re.compile(rf"\b{_SCANS}(?:on|in|at)\s+or\s+(?:after|later\s+than)\s+{_T}"), lambda m: (_first(m.group(1)), None)),
    (re.compile(rf"\b{_SCANS}(?:on|in|at)\s+or\s+(?:before|earlier\s+than)\s+{_T}"), lambda m: (None, _last(m.group(1)))),
    (re.compile(rf"\b{_SCANS}(?:between|from)\s+{_T}{_AND}{_T}"), lambda m: _between(m.group(1), m.group(2))),
    (re.compile(rf"{_T}\s*(?:-|–|to|until|through)\s*{_T}"), lambda m: _between(m.group(1), m.group(2))),
    # comparison words and operators: "pre-2020", "post 2020", "> 2020", "<= 2019", "2020+", "later than 2020"
    (re.compile(rf"\b(?:pre)[\s-]*{_T}"), lambda m: _before(m.group(1))),
    (re.compile(rf"\b(?:post)[\s-]*{_T}"), lambda m: _after(m.group(1))),
    (re.compile(rf"(?:>=|≥)\s*{_T}"), lambda m: (_first(m.group(1)), None)),
    (re.compile(rf"(?:<=|≤)\s*{_T}"), lambda m: (None, _last(m.group(1)))),
    (re.compile(rf"(?<![<>=])>\s*{_T}"), lambda m: _after(m.group(1))),
    (re.compile(rf"(?<![<>=])<\s*{_T}"), lambda m: _before(m.group(1))),
    (re.compile(rf"{_T}\s*\+"), lambda m: (_first(m.group(1)), None)),
    (re.compile(rf"\b{_SCANS}(?:later than|newer than|more recent than)\s+{_T}"), lambda m: _after(m.group(1))),
    (re.compile(rf"\b{_SCANS}older than\s+{_T}"), lambda m: _before(m.group(1))),
    (re.compile(rf"\b{_SCANS}(?:until|up to|through|by|till)\s+(?:the\s+)?end\s+of\s+{_T}"),
     lambda m: (None, _last(m.group(1)))),
    # "in 2018 and 2019", "2018, 2019 or 2020": the years between are taken too (the note says so)
    (re.compile(rf"(?:\b{_SCANS}(?:in|during|from|of)\s+)?{_T}(?:\s*(?:,|and|or|&)\s*{_T})+"),
     lambda m: (_first(m.group(1)), _last(re.findall(_T, m.group(0))[-1]))),
    # "since 2020", "from 2020 onwards"; a plain "scans from 2021" is that year (below)
    (re.compile(rf"\b{_SCANS}since\s+{_T}(?:\s+(?:onwards?|on))?"), lambda m: (_first(m.group(1)), None)),
    (re.compile(rf"\b{_SCANS}from\s+{_T}\s+(?:onwards?|on)\b"), lambda m: (_first(m.group(1)), None)),
    (re.compile(rf"\b{_SCANS}from\s+(@d:\d{{4}}-\d\d-\d\d@)"), lambda m: (_first(m.group(1)), None)),
    (re.compile(rf"{_T}\s+(?:onwards?|or later|and later|or after|and after|or more recent)\b"),
     lambda m: (_first(m.group(1)), None)),
    (re.compile(rf"\b{_SCANS}after\s+{_T}"), lambda m: _after(m.group(1))),
    (re.compile(rf"\b{_SCANS}(?:before|prior to|earlier than)\s+{_T}"), lambda m: _before(m.group(1))),
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
    for pattern, fn3 in _TO_PERIOD:
        text = pattern.sub(fn3, text)
    return text


def _refused(text: str, notes: List[str]) -> str:
    """Numeric day/month dates refused with a note (their order is ambiguous), and the year's token blanked."""
    def one(m: "re.Match[str]") -> str:
        notes.append(f"date {m.group(0)!r} not applied: day and month order are ambiguous; write it as YYYY-MM-DD")
        return " "
    return _NUMERIC_DATE.sub(one, text)


def _first_match(text: str, notes: List[str]) -> Optional[Tuple["re.Match[str]", DateRange]]:
    """The first rule's first acceptable match: not a guideline's edition ("Fleischner 2017") nor a birth year."""
    born_said = False
    for pattern, value in _RULES:
        for m in pattern.finditer(text):
            before = text[:m.start()]
            if _NOT_STUDY_YEAR.search(before):
                continue
            if _BORN.search(before):
                if not born_said:
                    notes.append(f"birth year {_plain(m.group(0)).strip()!r} not applied: filter by age instead")
                    born_said = True
                continue
            return m, value(m)
    return None


def _complement(found: DateRange) -> Optional[DateRange]:
    lo, hi = found
    if lo is not None and hi is None:
        return None, (_dt.date.fromisoformat(lo) - _dt.timedelta(days=1)).isoformat()
    if hi is not None and lo is None:
        return (_dt.date.fromisoformat(hi) + _dt.timedelta(days=1)).isoformat(), None
    return None


def read_dates(text: str, notes: List[str]) -> Tuple[str, Optional[DateRange]]:
    """(``text`` without its study-date phrase, the ``(first, last)`` ISO range, open ends None).

    One phrase is read, or two open ones that close a range ("after 2019 and before 2022"); another date phrase
    is left in the text with a note, as is anything read loosely (years listed apart: "in 2018 and 2020" covers
    2018 to 2020). A negated phrase ("not before 2020", "excluding scans before 2015") is read as its complement;
    numeric day/month dates and birth years are not applied, with a note.
    """
    text = _refused(_tokens(text), notes)
    hit = _first_match(text, notes)
    if hit is None:
        return _plain(text), None
    m, found = hit
    start = m.start()
    neg = negation_before(text, start)
    if neg is not None:
        phrase = " ".join(_plain(text[neg:m.end()]).split())
        comp = _complement(found)
        if comp is None:
            notes.append(f"{phrase!r} is negated and has no one-range complement: no date filter applied")
            return _plain(text[:neg] + " " + text[m.end():]), None
        notes.append(f"read {phrase!r} as study dates {comp[0] or '...'} to {comp[1] or '...'}")
        found, start = comp, neg
    years = re.findall(_T, m.group(0))
    said = re.sub(r"@[^@]*@", " ", m.group(0))  # the phrase's words, not the hyphens inside date tokens
    if len(years) > 2 or (len(years) == 2 and "between" not in said and "-" not in said
                          and abs(_span(years[1])[0].year - _span(years[0])[0].year) > 1):
        notes.append(f"dates {', '.join(_show(y) for y in years)} read as one range, {found[0]} to {found[1]}")
    fuzzy = _FUZZY.search(text[:m.start()])
    if fuzzy and len(years) == 1 and not years[0].startswith("@") and neg is None:
        notes.append(f"{fuzzy.group(1)!r} {years[0]} read as the whole year {years[0]}")
        start = fuzzy.start()
    rest = text[:start] + " " + text[m.end():]
    if (found[0] is None) != (found[1] is None):  # one open end: a second phrase may close it
        second = _first_match(rest, [])
        if second is not None and negation_before(rest, second[0].start()) is None:
            lo = found[0] if found[0] is not None else second[1][0]
            hi = found[1] if found[1] is not None else second[1][1]
            if (second[1][0] is None) != (second[1][1] is None) and lo is not None and hi is not None and lo <= hi:
                found = (lo, hi)
                rest = rest[:second[0].start()] + " " + rest[second[0].end():]
    if re.search(_T, rest):
        notes.append("a second date in the question was not applied: one study-date range is read")
    return _plain(rest), found


def _show(token: str) -> str:
    return token.strip("@")[2:].replace("_", " to ") if token.startswith("@") else token


def _plain(text: str) -> str:
    """Date tokens back to their ISO spelling (left in the text only when they were not read)."""
    return re.sub(r"@[dmp]:([\d-]+)(?:_([\d-]+))?@", lambda m: m.group(1) + (f" to {m.group(2)}" if m.group(2) else ""),
                  text)
