"""Age phrases of a cohort question ("over 60", "> 70 yo", "between 50 and 70", "in their 60s") as a range."""

from __future__ import annotations

import re
from typing import Callable, List, Optional, Tuple

from .nlq_negation import complement_open, negation_before

__all__ = ["read_ages"]

AgeRange = Tuple[Optional[int], Optional[int]]
Span = Tuple[int, int]

# A number is an age only when no unit follows it: "kidney stone under 5 mm" and "renal cyst 2-3 cm" are sizes
# (no SQL filter holds lesion sizes, so they stay in the text for the encoder), and "2.5" is not an age of 5;
# nor are durations, counts and other measures ("over 6 months", "> 30 pack years", "more than 3 lesions").
_NOT_SIZE = (r"(?![\d.]*\s*(?:mm|cm|ml|cc|hu|%|millimet|centimet|x\b|×|months?\b|mos?\b|weeks?\b|wks?\b|days?\b|"
             r"hours?\b|pack|cigarettes?|lesions?\b|nodules?\b|cysts?\b|stones?\b|times\b|kg\b|lbs?\b|kilo|"
             r"pounds?\b|units?\b|studies\b|scans?\b|series\b|slices?\b|organs?\b|patients?\b|cases?\b))"
             # a count of lesions two words on ("more than 20 liver metastases"), but not across "with"/"and"
             r"(?![\d.]*\s+(?:(?!(?:with|and|or|in|who|having|without)\b)[a-z-]+\s+){1,2}"
             r"(?:metastas[ie]s|mets|masses|lesions|nodules|cysts|stones|polyps|foci|calculi)\b)")
# Not after a letter or a digit either: "T11-12" is a vertebra, "L2" a level.
_N = r"(?<![\w.])(\d{1,3})(?![\d.])"
_YEARS = r"(?:\s*-?\s*(?:years?|y/?o|yrs?|yo)(?:[\s-]+old)?(?:s)?)"
_OLD = r"\s*-?\s*(?:(?:years?|yrs?)[\s-]+old|yo|y/o|y\.o\.)s?(?!\w)"  # a single age needs "old" or "yo"
_AGE_WORD = r"(?:aged|age|ages|patients?|pts?)"
_OF_AGE = r"(?:\s+the\s+age\s+of|\s+age)?"
_OPEN_MIN = r"(?:over|older than|above|>=?|≥|at least|aged over|greater than or equal to|greater than|more than)"
_OPEN_MAX = r"(?:under|younger than|below|<=?|≤|at most|aged under|less than or equal to|less than|up to)"
# Words before a number that make it a grade, class, level, duration or measure, never an age ("grade 2-3",
# "Bosniak 2-3", "stable for 2 years", "BMI over 30").
_NOT_AGE_BEFORE = re.compile(
    r"(?:grade|grades|bosniak|class|stage|stages|level|levels|segment|segments|type|category|li-?rads|pi-?rads|"
    r"ti-?rads|lung-?rads|score|size|sizes|measuring|vertebrae?|ribs?|bmi|weight|density|for|last|past|within|"
    r"follow(?:ed)?[\s-]?up(?:\s+for)?|interval|duration|lasting|growing|grown|growth|every|each|diameter|"
    r"attenuation|agatston|cac|calcium|fraction|pdff|volume|stable|hu|ejection)\s*"
    r"(?:the\s+)?(?:last\s+|past\s+)?$")
_ADULT_MIN = 18  # a bare number ("women 40-60", "over 30") is an age only from here: "3-4 nodules" is a count
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
_ONES = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
_WORDS = re.compile(r"\b(" + "|".join(_TENS) + r")(?:[\s-](" + "|".join(_ONES) + r"))?\b")
_DECADE_WORDS = re.compile(r"\b(" + "|".join(t[:-1] for t in _TENS) + r")ies\b")  # "sixties" -> "60s"

AgeRule = Tuple["re.Pattern[str]", Callable[["re.Match[str]"], AgeRange], bool]
# Children's words: a bare number under 18 is then an age ("children under 10"), and a narrower range wins
# over the words' own 0-17.
_CHILD = re.compile(r"\b(?:children|child|paediatric|pediatric|kids|infants?|toddlers?)\b")
# ... but only after an age comparison ("children under 10"); counts stay counts ("children with 2-3
# appendicoliths", "3 or more stones", "more than 3 lymph nodes").
_CHILD_AGE = re.compile(r"\b(?:under|below|younger|older|over|above|aged?)\b")


def _g(m: "re.Match[str]", i: int) -> int:
    return int(m.group(i))


# (pattern, range, bare): a bare rule has no age word or unit of its own, so it needs an adult number and no
# measure word before it.
_RULES: List[AgeRule] = [
    # "between 50 and 70 (years)", "aged 40 to 65", "40-65 years", "ages 40-65"
    (re.compile(rf"\b(?:(?:{_AGE_WORD}\s+)?between)\s+{_N}\s*(?:and|-|–|to)\s*{_N}{_NOT_SIZE}{_YEARS}?\b"),
     lambda m: (_g(m, 1), _g(m, 2)), True),
    (re.compile(rf"\b{_AGE_WORD}\s*{_N}-?\s*(?:-|–|to|through|thru)\s*{_N}{_NOT_SIZE}{_YEARS}?\b"), lambda m: (_g(m, 1), _g(m, 2)),
     False),
    (re.compile(rf"{_N}-?\s*(?:-|–|to|through|thru)\s*{_N}{_NOT_SIZE}{_YEARS}(?!\w)"), lambda m: (_g(m, 1), _g(m, 2)), False),
    (re.compile(rf"{_N}-?\s*(?:-|–|to|through|thru)\s*{_N}{_NOT_SIZE}(?!\w)"), lambda m: (_g(m, 1), _g(m, 2)), True),
    # "70 years or older", "60 yrs and above", "65 or over", "65+", "60 plus"
    # ... but not "older than 65 and younger than 80" (a bound on each side, read by the open rules below)
    (re.compile(rf"{_N}{_NOT_SIZE}{_YEARS}?\s*(?:or|and)\s+(?:older|above|over|more|up|greater)\b(?!\s*\d)"
                r"(?!\s+than\b)"), lambda m: (_g(m, 1), None), True),
    (re.compile(rf"{_N}{_NOT_SIZE}{_YEARS}?\s*(?:or|and)\s+(?:younger|below|under|less)\b(?!\s*\d)(?!\s+than\b)"),
     lambda m: (None, _g(m, 1)), True),
    (re.compile(rf"{_N}{_YEARS}?\s*(?:\+|plus\b)"), lambda m: (_g(m, 1), None), True),
    # "over-65s", "over 50s", "the under-40s"
    (re.compile(rf"\b(?:over|above)[\s-]*{_N}'?s\b"), lambda m: (_g(m, 1), None), False),
    (re.compile(rf"\b(?:under|below)[\s-]*{_N}'?s\b"), lambda m: (None, _g(m, 1) - 1), False),
    # "in their 60s", "women 40s", "M 60s" (a decade; "1990s" is no age: a digit before it)
    (re.compile(r"(?:\bin\s+(?:their|his|her)\s+)?(?:(?:early|mid|late)[\s-]+)?(?<![\w.])([1-9])0'?s\b"),
     lambda m: (_g(m, 1) * 10, _g(m, 1) * 10 + 9), False),
    # "over 60", "aged >60", "> 70 yo", "≥ 65", "at least 50", "under the age of 40"
    (re.compile(rf"(?:\b{_AGE_WORD}\s*)?(?:\b|(?=[<>≥≤])){_OPEN_MIN}{_OF_AGE}\s*{_N}{_NOT_SIZE}{_YEARS}?"),
     lambda m: (_g(m, 1), None), True),
    (re.compile(rf"(?:\b{_AGE_WORD}\s*)?(?:\b|(?=[<>≥≤])){_OPEN_MAX}{_OF_AGE}\s*{_N}{_NOT_SIZE}{_YEARS}?"),
     lambda m: (None, _g(m, 1)), True),
    # one age: "45-year-old", "aged 55", "55 yo", "women who are 45"
    (re.compile(rf"\baged?\s+{_N}{_NOT_SIZE}{_YEARS}?\b"), lambda m: (_g(m, 1), _g(m, 1)), False),
    (re.compile(rf"{_N}{_NOT_SIZE}{_OLD}"), lambda m: (_g(m, 1), _g(m, 1)), False),
    (re.compile(rf"\bwho\s+(?:are|is|were|was)\s+{_N}{_NOT_SIZE}{_YEARS}?\b"), lambda m: (_g(m, 1), _g(m, 1)), True),
    # words
    (re.compile(r"\b(?:elderly|older adults|geriatric)\b"), lambda m: (65, None), False),
    (_CHILD, lambda m: (None, 17), False),
]


def _numbers(text: str) -> str:
    """Tens in words as digits ("over sixty" -> "over 60", "sixty-five" -> 65, "sixties" -> "60s")."""
    def one(m: "re.Match[str]") -> str:
        return str(_TENS[m.group(1)] + (_ONES[m.group(2)] if m.group(2) else 0))

    text = _DECADE_WORDS.sub(lambda m: f"{_TENS[m.group(1) + 'y']}s", text)
    return _WORDS.sub(one, text)


def read_ages(text: str, notes: List[str], young: bool = False) -> Tuple[str, Optional[AgeRange]]:
    """(``text`` without its age phrases, the inclusive ``(lo, hi)`` range, open ends None) — None when there is
    none. One lower and one upper bound make one range ("over 40 and under 60"); two different groups ("women
    over 50 and men over 70") make none, with a note. ``young``: the question said "boys"/"girls" (already cut
    from ``text``): a small number after an age comparison is then an age, as after "children", and with no age
    said the range is under 18; an age that is said wins ("girls over 18")."""
    text = _numbers(text)
    child = young or _CHILD.search(text) is not None
    found: List[Tuple[Span, AgeRange]] = []
    for pattern, value, bare in _RULES:
        for m in pattern.finditer(text):
            if any(m.start() < b and a < m.end() for (a, b), _ in found):
                continue  # inside a phrase an earlier (more specific) rule took
            lo, hi = value(m)
            if (lo is not None and lo > 120) or (hi is not None and hi > 120):
                continue
            said = m.group(0)
            if (any(c.isdigit() for c in said) and not re.match(_AGE_WORD, said)
                    and _NOT_AGE_BEFORE.search(text, 0, m.start())):
                continue  # "grade 2-3", "stable for 2 years", "BMI over 30" (an age word first overrides)
            explicit = re.search(rf"{_AGE_WORD}|{_YEARS}|old\b", said)
            kid_age = child and _CHILD_AGE.search(said) is not None and not re.search(r"\b(?:more|less)\b", said)
            if bare and not explicit and not kid_age and min(v for v in (lo, hi) if v is not None) < _ADULT_MIN:
                continue  # "3-4 nodules", "more than 3": a count, not an age
            rng: Optional[AgeRange] = ((min(lo, hi), max(lo, hi)) if lo is not None and hi is not None
                                       else (lo, hi))
            start = m.start()
            neg = negation_before(text, start)
            if neg is not None:  # "not older than 50", "excluding patients over 80", "non-elderly"
                comp = complement_open(rng, said)  # type: ignore[arg-type]
                phrase = " ".join(text[neg:m.end()].split())
                if comp is None:
                    notes.append(f"{phrase!r} is negated and has no one-range complement: no age filter applied")
                else:
                    notes.append(f"read {phrase!r} as age {_words(comp)}")
                rng, start = comp, neg
            found.append(((start, m.end()), rng))  # type: ignore[arg-type]
    if not found:
        return text, (None, _ADULT_MIN - 1) if young else None
    for span, _ in sorted(found, reverse=True):
        text = text[:span[0]] + " " + text[span[1]:]
    ranges = list(dict.fromkeys(r for _, r in found if r is not None))
    if not ranges:
        return text, None
    if child and (None, 17) in ranges and len(ranges) > 1 and all(
            r == (None, 17) or (r[1] is not None and r[1] <= 17) for r in ranges):
        ranges.remove((None, 17))  # "children under 10": the number says more than the word
    if len(ranges) == 2 and {r[0] is None for r in ranges} == {True, False} and all(
            (r[0] is None) != (r[1] is None) for r in ranges):
        lo = next(r[0] for r in ranges if r[0] is not None)
        hi = next(r[1] for r in ranges if r[1] is not None)
        if lo <= hi:  # "over 40 and under 60": one group between two bounds
            return text, (lo, hi)
    if len(ranges) > 1:
        notes.append(f"several age conditions ({', '.join(_words(r) for r in ranges)}): no age filter applied; "
                     "search each group on its own")
        return text, None
    return text, ranges[0]


def _words(r: AgeRange) -> str:
    lo, hi = r
    return f"{lo}-{hi}" if lo is not None and hi is not None else f">={lo}" if lo is not None else f"<={hi}"
