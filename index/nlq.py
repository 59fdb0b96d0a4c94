"""Split a cohort question ("fatty liver in women over 60") into search text, organ and SQL filters."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ctglip_sdk import organs
from ctglip_sdk.errors import QueryError
from ctglip_sdk.organs_v2_words import v2_named_in

from .nlq_ages import read_ages
from .nlq_dates import read_dates
from .nlq_negation import negation_before

__all__ = ["ParsedQuery", "parse_query", "unapplied_filters", "where_exprs"]

# Demographic words map to the `sex` filter; they are removed from the text sent to the encoder because the
# image embedding carries no reliable sex signal and the words only add noise to the text vector.
_SEX = {
    "F": r"women|woman|females?|female patients?|girls?|ladies|lady",
    "M": r"men|man|males?|male patients?|boys?|gentlemen",
}
# Both sexes named together: no sex filter at all ("splenomegaly in men and women over 40").
_BOTH_SEXES = re.compile(r"\b(?:(?:men|males?|boys?)\s+(?:and|or|&|/)\s+(?:women|females?|girls?)|"
                         r"(?:women|females?|girls?)\s+(?:and|or|&|/)\s+(?:men|males?|boys?)|"
                         r"both sexes|either sex|all sexes|m\s*/\s*f|f\s*/\s*m)\b")
# A lone capital F or M in the question ("pleural effusion, F, 50-70") is a sex; read on the original case only.
# Not one half of "F/U" (follow-up) or another letter pair joined by "/".
_SEX_LETTER = re.compile(r"(?<![\w'])(?<![A-Za-z]/)([FM])(?![\w'])(?!/[A-Za-z])")
_OTHER = {"F": "M", "M": "F"}

_CONTRAST = [(re.compile(r"\b(non[- ]?contrast|unenhanced|without contrast)\b"), False),
             (re.compile(r"\b(contrast[- ]enhanced|with contrast|portal[- ]venous)\b"), True)]
# ("and" is kept: it joins two findings, "gallstones and fatty liver"; a dangling one is dropped below)
_FILLER = re.compile(r"(?<!\btype )\b(in(?! situ\b)|of|with|among|for|patients?|pts|subjects?|people|who are|"
                     r"who have|having|the|(?<!type )a|an|on|from|scans?|studies|exams?|yo|y/o)\b")
# Brackets and commas left empty once their filters were read ("renal cyst (F, 60+)").
_EMPTY_BRACKETS = re.compile(r"[(\[]\s*(?:[,;]\s*)*[)\]]")
# "72M", "65F": an age and a sex in one token, as reports and worklists write them.
_AGE_SEX = re.compile(r"(?<![\w.])(\d{1,3})\s?([MF])(?![\w'])")
# Whole words only: "gland" and "tumor" end in "and" and "or", "organ" starts with "or".
_DANGLING = re.compile(r"^(?:(?:\b(?:and|or)\b|,)\s*)+|(?:\s*(?:\b(?:and|or)\b|,))+$")


@dataclass
class ParsedQuery:
    """What :func:`parse_query` understood: ``text`` for the encoder, ``organ`` and ``where`` for filters, and
    ``notes`` on words it read but could not turn into one filter."""

    text: str
    organ: Optional[List[str]] = None
    where: Dict[str, Any] = field(default_factory=dict)
    original: str = ""
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {"text": self.text, "organ": self.organ, "where": self.where, "original": self.original,
                "notes": list(self.notes)}


def _find_organ(text: str) -> Optional[List[str]]:
    """Longest synonym phrase in the text (so "right kidney" beats "kidney"), resolved to v1 classes; else the
    organ of the one finding the text asks for ("hepatomegaly" -> liver, "AAA" -> aorta). A text that names
    several findings ("gallstones and fatty liver") gets the organs of all of them, as search reads it."""
    from ctglip_sdk.reports.query import explain_query  # noqa: PLC0415 - the report vocabulary loads on first use

    v2, rest = v2_named_in(text)
    reading = explain_query(text)
    if v2 and reading.finding is None and reading.negated is None:
        # A TotalSegmentator 2 class ("thyroid", "SVC") when no finding is read (search reads it the same way):
        # the words around it ("nodule") name no organ of it. With a finding, the finding's organs win ("liver
        # metastases from thyroid cancer").
        also = (_find_organ(rest) or []) if rest.strip() else []
        return list(dict.fromkeys((*v2, *also)))
    if reading.finding is None and (reading.several or reading.negated is None) and len(reading.organs) > 1:
        return list(dict.fromkeys(c for o in reading.organs for c in organs.lookup(o)))
    # v2 words left out: "superior vena cava" must not fall back to v1's "vena cava"
    words = re.findall(r"[a-z]+", rest.lower())
    best: Optional[str] = None
    for n in (3, 2, 1):
        for i in range(len(words) - n + 1):
            phrase = " ".join(words[i:i + n])
            if phrase in organs.SYNONYMS:
                best = phrase
                break
        if best:
            break
    found = reading.finding
    finding_organs = organs.lookup(found.organ) if found is not None else None
    if best:
        named = organs.lookup(best)
        # "left lung lower lobe": the side from one phrase, the lobe from another; only for a single lobe word and
        # no exclusion ("upper and lower lobes", "not in the lower lobe", "lower lobe spared" keep every lobe)
        low = text.lower()
        parts = set(re.findall(r"\b(upper|middle|lower)\b", low))
        if (len(named) > 1 and len(parts) == 1 and re.search(r"\blobes?\b", low)
                and not re.search(r"\b(?:not|no|spared|sparing|except|excluding|without|other than)\b", low)):
            part = parts.pop()
            named = [n for n in named if n.startswith(f"lung_{part}_lobe")] or named
        # "splenomegaly without liver cirrhosis" asks about spleens: a word naming another organ is incidental.
        # A word naming a part of the finding's organ ("right upper lobe nodule") is the more specific filter.
        if finding_organs is None or set(named) <= set(finding_organs):
            return named
    return finding_organs


def _cut(text: str, span: Tuple[int, int]) -> str:
    return text[:span[0]] + " " + text[span[1]:]


# Misspelt sex words ("femle", "womn", "wemen", "mles") are read as the word one edit away. Only against words of
# five letters or more, from a word of four or more with the same first letter: "men"/"man"/"male" are one edit
# from too many words ("mean", "mass", "mole"); the stoplist holds the English words one edit from the targets.
_SEX_WORDS = ("women", "woman", "female", "females", "males", "ladies", "gentlemen")
_NOT_TYPOS = frozenset({"moles", "mates", "mules", "mares", "malts", "mailes", "woken", "woven", "ladles", "lanies"})


_ANY_SEX = "|".join(_SEX.values())
MAX_QUERY_CHARS = 10_000  # search and cohort questions: a whole report fits, a pasted document does not
_YOUNG = re.compile(r"\b(?:boys?|girls?)\b")
# "excluding boys", "not girls": an excluded sex says nothing of the age of those asked for
_YOUNG_NEGATED = re.compile(r"\b(?:not|no|excluding|except|without|other than)\s+(?:the\s+)?(?:boys?|girls?)\b")


def _one_edit(a: str, b: str) -> bool:
    """Whether ``a`` becomes ``b`` by one insertion, deletion, substitution or swap of neighbouring letters."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = next((k for k, (x, y) in enumerate(zip(short, long_)) if x != y), len(short))
    return short[i:] == long_[i + 1:]


def _sex_typos(text: str, notes: List[str]) -> str:
    def fix(m: "re.Match[str]") -> str:
        word = m.group(0)
        if len(word) < 4 or word in _NOT_TYPOS or re.fullmatch(_ANY_SEX, word):
            return word
        for target in _SEX_WORDS:
            if word[0] == target[0] and _one_edit(word, target):
                notes.append(f"read {word!r} as {target!r}")
                return target
        return word
    return re.sub(r"[a-z]+", fix, text)


def _sex(question: str, text: str, notes: List[str]) -> Tuple[str, Optional[str]]:
    text = _sex_typos(text, notes)
    both = _BOTH_SEXES.search(text)
    if both:
        notes.append("both sexes named: no sex filter applied")
        return _cut(text, (both.start(), both.end())), None
    hits = {sex: re.search(rf"\b({pattern})\b", text) for sex, pattern in _SEX.items()}
    named = [sex for sex, m in hits.items() if m]
    letters = sorted({m.group(1) for m in _SEX_LETTER.finditer(question)})
    if len(letters) > 1 and not named:  # "M and F", "M/F", "F+M": both
        for letter_ in letters:
            text = re.sub(rf"(?<![\w']){letter_.lower()}(?![\w'])", " ", text)
        notes.append("both sexes named: no sex filter applied")
        return text, None
    if letters and not named:
        low_at = re.search(rf"(?<![\w'/]){letters[0].lower()}(?![\w'])(?!/[a-z])", text)
        if low_at:
            return _cut(text, (low_at.start(), low_at.end())), letters[0]
    if len(named) == 2:
        negated = [sex for sex in named if negation_before(text, hits[sex].start()) is not None]  # type: ignore[union-attr]
        m_neg = hits[negated[0]] if len(negated) == 1 else None
        # "women, not men", "women but not men", "excluding men, women": one sex asked. Not when more follows the
        # excluded sex ("excluding men over 80" excludes a group, not a sex)
        if m_neg is not None and re.match(r"\s*(?:[,.;)]|$|and\b|but\b|in\b|with\b)", text[m_neg.end():]):
            cut = _cut(text, (negation_before(text, m_neg.start()), m_neg.end()))  # type: ignore[arg-type,union-attr]
            kept = next(sex for sex in named if sex not in negated)
            m_kept = re.search(rf"\b({_SEX[kept]})\b", cut)
            if m_kept:
                notes.append(f"read as sex {kept}: the other sex is excluded")
                return _cut(cut, (m_kept.start(), m_kept.end())), kept
    if len(named) > 1:
        text = re.sub(rf"\b(?:{'|'.join(_SEX.values())})\b", " ", text)
        notes.append("both sexes named: no sex filter applied; search each group on its own")
        return text, None
    if named:
        m = hits[named[0]]
        start = m.start()  # type: ignore[union-attr]
        neg = negation_before(text, start)
        if neg is not None:  # "excluding men", "not in women": the other sex (patients of unknown sex drop out)
            phrase = " ".join(text[neg:m.end()].split())  # type: ignore[union-attr]
            notes.append(f"read {phrase!r} as sex {_OTHER[named[0]]} (patients whose sex is not recorded are "
                         "left out too)")
            return _cut(text, (neg, m.end())), _OTHER[named[0]]  # type: ignore[union-attr]
        return _cut(text, (start, m.end())), named[0]  # type: ignore[union-attr]
    return text, None


def parse_query(question: str, infer_organ: bool = True) -> ParsedQuery:
    """Turn a cohort question into search text, an organ filter and ``where`` filters.

    Understands sex words (women/men/female/male, a lone "F"/"M"; "men and women" is no filter), ages ("over
    60", "> 70 yo", "≥ 65", "under 40", "40-60 years", "aged 40-65", "between 50 and 70", "65+", "70 years or
    older", "over-65s", "in their 60s", "45-year-old", "elderly"; bounds inclusive), study dates ("in 2021",
    "scans from 2019", "after 2020", "before 2019", "since 2018", "between 2018 and 2020", "2019-2021", ISO
    dates), contrast ("non-contrast", "portal venous") and, with ``infer_organ``, the organ named in the text (the
    organs of every finding when it names several). A number range is an age only with an age word or a unit
    of years, or from 18 up, never after "grade", "Bosniak", "segment" and the like ("grade 2-3 hydronephrosis"
    filters nothing). Everything it does not understand stays in the text, which the model encodes; ``notes``
    say what it read and did not apply (two sexes or two age groups in one question).

    Example:
        >>> q = parse_query("fatty liver in women over 60")
        >>> q.text, q.organ, q.where
        ('fatty liver', ['liver'], {'sex': 'F', 'age': (60, None)})
        >>> parse_query("liver cysts on scans from 2021").where
        {'study_date': ('2021-01-01', '2021-12-31')}
    """
    if not isinstance(question, str) or not question.strip():
        raise QueryError("empty query text")
    if len(question) > MAX_QUERY_CHARS:  # before any reading: a pasted document took seconds to be refused
        raise QueryError(f"query text of {len(question):,} characters: at most {MAX_QUERY_CHARS:,} (a question of a "
                         "few words or sentences)")
    question = _AGE_SEX.sub(lambda m: f"{m.group(1)} yo {m.group(2)}" if 18 <= int(m.group(1)) <= 120
                            else m.group(0), question)
    text = " " + question.strip().lower() + " "
    where: Dict[str, Any] = {}
    notes: List[str] = []
    text, dates = read_dates(text, notes)  # years first: "2021" is never an age
    # "boys"/"girls" are a sex and an age: read by the age reader as a children's word that a stated age refines
    young = _YOUNG.search(text) is not None and not _YOUNG_NEGATED.search(text)
    text, sex = _sex(" " + question.strip() + " ", text, notes)
    text, age = read_ages(text, notes, young=young)
    if sex:
        where["sex"] = sex
    if age:
        where["age"] = age
    if dates:
        where["study_date"] = dates
    for pattern, value in _CONTRAST:
        m = pattern.search(text)
        if m:
            where["contrast"] = value
            text = _cut(text, (m.start(), m.end()))
            break
    if where or notes:
        # Only strip connective words when a filter phrase was removed ("liver cyst in women" -> "liver cyst").
        text = _FILLER.sub(" ", text)
    text = re.sub(r"\s+", " ", _EMPTY_BRACKETS.sub(" ", text)).strip(" ,.;")
    text = re.sub(r"\s+", " ", _DANGLING.sub("", re.sub(r"(?:\band\s+)+(?=and\b)", "", text))).strip(" ,.;")
    if not text:
        raise QueryError(f"query {question!r} has no finding or organ words left to search for")
    return ParsedQuery(text=text, organ=_find_organ(text) if infer_organ else None, where=where, original=question,
                       notes=notes)


# Connective words parse_query drops with a filter phrase; they are no filter, so a note does not name them.
_CONNECTIVES = {"in", "of", "with", "among", "for", "and", "the", "who", "are", "have", "having", "patient",
                "patients", "subject", "subjects", "people"}


def where_exprs(where: Mapping[str, Any]) -> List[str]:
    """A where dict as the --where expressions that give it ({"age": (60, None)} -> ["age>=60"])."""
    out: List[str] = []
    for key, value in where.items():
        if isinstance(value, tuple):
            lo, hi = value
            if lo is not None and lo == hi:
                out.append(f"{key}={lo}")
                continue
            if lo is not None:
                out.append(f"{key}>={lo}")
            if hi is not None:
                out.append(f"{key}<={hi}")
        elif isinstance(value, bool):
            out.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, (list, tuple)):
            out.append(f"{key}={','.join(str(v) for v in value)}")
        else:
            out.append(f"{key}={value}")
    return out


def _filter_words(question: str, kept_text: str) -> str:
    """The words of ``question`` that parse_query took out of the search text, connectives left aside."""
    kept = set(re.findall(r"[a-z0-9]+", kept_text.lower()))
    words = []
    for word in question.split():
        parts = re.findall(r"[a-z0-9]+", word.lower())
        if parts and not any(p in kept for p in parts) and word.lower().strip(",.;") not in _CONNECTIVES:
            words.append(word.strip(",.;"))
    return " ".join(words)


def unapplied_filters(text: str, where: Optional[Mapping[str, Any]] = None) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(the words, the filters) that ``parse_query`` would read from ``text`` and ``where`` does not already set,
    else None: ``search`` encodes its text whole, and "fatty liver in women over 60" silently returned men."""
    try:
        parsed = parse_query(text, infer_organ=False)  # no organ lookup: only the filters matter here
    except QueryError:  # only filter words ("women over 60"): the encoder gets them all
        return None
    unused = {k: v for k, v in parsed.where.items() if k not in (where or {})}
    if not unused:
        return None
    return _filter_words(text, parsed.text) or text, unused
