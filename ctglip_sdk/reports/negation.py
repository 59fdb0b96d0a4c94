"""NegEx-style cue scopes: which negation/uncertainty cues are in force at each matched phrase of a sentence."""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import Dict, List, Optional, Sequence, Set, Tuple

from ctglip_sdk.reports.cues import HIST_PRE
from ctglip_sdk.reports.types import ABSENT, PRESENT, UNCERTAIN, Status
from ctglip_sdk.reports.vocab import (NEG_BOTH, NEG_POST, NEG_PRE, NEG_SELF, PSEUDO, TERMINATE, UNC_BOTH, UNC_POST,
                                      UNC_PRE, WEAK_PRE, Info, phrase_key)

__all__ = ["cue_scopes", "clause_break", "clause_starts", "said_normal", "status_of"]

# "\d+" spelt "\d\d*": a leading character set lets the regex engine skip to digits fast
_MEASURE = re.compile(r"\d\d*(?:\.\d+)?\s*(?:x\s*\d+(?:\.\d+)?\s*)*(?:mm|cm)\b")

# A measurement that qualifies the negated noun ("no nodules over 4 mm or effusion") does not end the negation
# the way a measurement that starts a new description does ("no hydronephrosis, 4 mm stone").
_QUALIFIER_BEFORE = re.compile(
    r"(?:over|above|exceeding|greater than|larger than|bigger than|more than|in excess of|at least|up to|under|"
    r"below|less than|smaller than|[<>\u2264\u2265]=?)\s*$")
_QUALIFIER_AFTER = re.compile(r"\s*(?:or|and)\s+(?:more|larger|greater|above|bigger|over)\b")
# After a comma, a severity, size or count word starts a new, positive description ("no calculi, mild right
# hydronephrosis", "no effusion, small pneumothorax"); list items after a comma carry no such word ("no gallstones,
# hydronephrosis or renal cysts"). "small bowel" and "large bowel" are organs, not sizes.
_DESCRIBED = re.compile(
    r",\s*(?:(?:mild|moderate|severe|marked|minimal|small|large|trace|tiny|few|a\s+few|several|multiple|numerous|"
    r"innumerable|scattered|punctate|extensive|non-?obstructing|subcentimet(?:er|re)|two|three|four|five|new|"
    r"persistent)\b(?!\s+(?:bowel|intestine)\b)|(?:mild|moderate)-|"
    # a side that opens a described finding ("no hydronephrosis, left renal cyst"), not a list of sides
    r"(?:left|right|bilateral)\b(?!\s*(?:,|or\b|and\b|nor\b|-?sided\b|side\b|$)))")
# ... and so does a clause after the comma that ends saying its finding is there ("no pulmonary nodules, emphysema
# present") or still there ("no hydronephrosis, left renal cyst unchanged"), unless it lists or denies ("no
# effusion, nodules or masses seen"), as does a negated clause closed by its own verb before the comma ("no calculi
# identified, ...").
_STATED = re.compile(r"\b(?:present|noted|seen|identified|demonstrated|evident|unchanged|stable)\s*[.!]?\s*$")
_LISTS_OR_DENIES = re.compile(r"\b(?:no|not|none|nor|neither|without|or|and|absent)\b")
_CLOSED = re.compile(r"\s+(?:seen|identified|noted|demonstrated|detected)\s*,")
# A visibility cue whose scope is the comparison ("not seen on the prior study", "not present previously") says
# the finding is new, not that it is absent. ("Resolved"/"no longer seen" compared with the prior still negate.)
_PRIOR = re.compile(
    r"\s*(?:(?:on|in|at|from|during)\s+)?(?:the\s+|an?\s+|any\s+)?"
    r"(?:(?:ct|mri?|pet|us|ultrasound|exam|examination|study|scan|imaging)\s+(?:from|of|dated|on|in)\s+)?"
    r"(?:prior|previous|preceding|earlier|comparison|old|outside|baseline|last|initial|"
    r"\d{1,4}[/.\-]\d{1,2}(?:[/.\-]\d{2,4})?|(?:19|20)\d\d)\b"
    r"|\s*(?:previously|before|earlier|then|at that time|in the past)\b")
# ... and before it: "right lower lobe nodule, previously not seen" is a new nodule.
_PRIOR_BEFORE = re.compile(r"\b(?:previously|formerly|before|earlier)\s+$")
# A post-cue with its own subject after a comma ("hydronephrosis, cause not identified", "steatosis, source of
# pain not identified"): it denies that subject, a word the dictionary does not know, not the finding before
# the comma. Verbs and adverbs between the comma and the cue are not a subject ("..., is not seen").
_OWN_SUBJECT = re.compile(
    r",\s*(?!(?:is|are|was|were|has|have|had|been|being|now|currently|again|also|still|otherwise|and|or|but|"
    r"previously|however|though|which|if|as|so|then)\b)(?:the\s+|a\s+|an\s+|its\s+)?[a-z][a-z\-]+"
    r"(?:\s+(?:of|for|in)\s+(?:the\s+|a\s+|an\s+|his\s+|her\s+)?[a-z][a-z\-]+)?\s*$")
# "excluded"/"ruled out" after a denied or hedged "be" ("cannot be entirely excluded", "could not be ruled out",
# "is not definitively excluded") leaves the finding possible: uncertain, not absent.
_DENIED = re.compile(
    r"(?:cannot|can\s*not|can['\u2019]t|could\s+not|couldn['\u2019]t|may\s+not|might\s+not|not)\s+"
    r"(?:be\s+)?(?:[a-z]+ly\s+)?$")
# "and" that opens a clause with its own subject and verb ("no gallstones and the spleen is enlarged"): the
# negation of the first clause does not reach into it. "... and the spleen is seen" is the verb of the negated
# list itself, not a new clause.
_VERB_WORDS = r"is|are|was|were|has|have|had|appears?|remains?|measures?|demonstrates?|shows?|contains?|seems?|looks?"
_VERBS = "(?:" + _VERB_WORDS + ")"
_SUBJECT_VERB = (
    r"(?:the|a|an|this|these|there|its|his|her)\s+(?:(?!(?:or|nor)\b)[a-z0-9\-/]+\s+){0,5}?" + _VERBS +
    r"\b(?!\s+(?:seen|identified|noted|present|demonstrated|visuali[sz]ed|evident|appreciated|detected|observed)\b)")
_CLAUSE = re.compile(r"and\s+" + _SUBJECT_VERB)
# A comma before a clause with its own subject and verb ("no splenomegaly, the pancreas is atrophic", "no adrenal
# nodule, left kidney contains a small cyst"): a new statement, out of the negation's reach. (The terminators ", the"
# etc. of cues.py cannot match after a word: the matcher never starts a phrase right after a letter.) The subject
# runs up to the verb without a comma, "or", "and" or a denial, so "no gallstones, hydronephrosis or cysts are
# present" and "no hepatic, splenic or renal lesions" stay one negated list.
_COMMA_CLAUSE = re.compile(
    r",\s*(?:" + _SUBJECT_VERB + r"|(?:(?!(?:or|nor|and|no|not|without|with|none)\b)[a-z0-9\-/]+\s+){1,5}?" +
    _VERBS + r"\b(?!\s+(?:been\s+)?(?:seen|identified|noted|present|demonstrated|visuali[sz]ed|evident|"
    r"appreciated|detected|observed|visible|apparent|found)\b))")
# Where a clause with its own subject and verb starts after a comma or "and" ("..., the liver is fatty").
_CLAUSE_START = re.compile(r"(?:,\s*(?:and\s+)?|(?<![a-z])and\s+)" + _SUBJECT_VERB)
# What makes the text before such a comma or "and" a clause of its own, not the head of a list of subjects ("The
# liver, the spleen and the pancreas are normal" is one clause).
_LEFT = re.compile(r"\b(?:" + _VERB_WORDS + r"|no|not|without|normal|unremarkable|negative)\b")
_CONTRAST = frozenset(phrase_key(p) for p in (
    "but", "however", "although", "though", "whereas", "while", "yet", "except", "except for", "apart from",
    "aside from", "other than", "with the exception of"))
# Uncertainty cues that characterise a noun: after a negation they are part of what is negated ("no lesion
# suspicious for malignancy", "not suggestive of steatosis").
_CHARACTERISING = frozenset(phrase_key(p) for p in (
    "suspicious for", "suspicious of", "suggestive of", "concerning for", "worrisome for", "worrying for",
    "concern for", "suspicion of", "suspicion for", "suggesting", "suggests", "to suggest", "worrisome of",
    "suggestion of"))  # "no suggestion of splenomegaly" is a denial

# Terminators that name a cause: right after a hedge ("could be due to", "possibly secondary to") the hedge is on
# the cause that follows, which must not cut it off.
_CAUSE = frozenset(phrase_key(p) for p in ("due to", "secondary to"))

Scope = Tuple[Optional[str], Optional[str]]
_NO_SCOPE: Scope = (None, None)
_PRE_SCOPE: Dict[str, Scope] = {k: (k, None) for k in ("neg", "unc", "weak", "hist")}  # shared: most scopes are these


def cue_scopes(toks: Sequence[Tuple[int, int, Info]], low: str, start: int, end: Optional[int] = None
               ) -> List[Scope]:
    """Per phrase: the (pre-cue, post-cue) kind in force: "neg", "unc", "weak" or None.

    A pre-cue ("no", "possible") reaches forward to the end of the sentence, a terminator ("but", "however",
    "which", ", the"), an "and" that opens a clause with its own subject and verb ("no gallstones and the spleen
    is enlarged"), another pre-cue, a measurement after a negation that does not qualify the negated noun ("no
    hydronephrosis, 4 mm stone", not "no nodules over 4 mm or effusion"), a comma before a severity, size or count
    word or before a stated finding ("no calculi, mild hydronephrosis", "no nodules, emphysema present"; not a
    list: "no gallstones, hydronephrosis or cysts") or a pseudo-negation ("stable", "partially resolved"). A
    post-cue ("cannot be excluded", "has resolved") reaches back to the previous terminator or clause, and past a
    comma only within a list ("X, Y and Z are not seen"). A visibility cue about the comparison exam ("not seen on
    the prior study") negates nothing; a characterising hedge after a negation ("no lesion suspicious for
    malignancy") keeps the negation; a hedge right before "due to" reaches the cause ("could be due to a mass").

    Example:
        >>> from ctglip_sdk.reports import AbnormalityDictionary
        >>> from ctglip_sdk.reports.vocab import vocab_for
        >>> toks = vocab_for(AbnormalityDictionary.default()).tokens("no cyst but a stone")
        >>> [sc[0] for sc in cue_scopes(toks, "no cyst but a stone", 0)]
        [None, 'neg', 'neg', None]
    """
    n = len(toks)
    if end is None:
        end = len(low)  # the look-ahead of the rules below stays inside the sentence: results depend on it alone
    scopes: List[Scope] = [_NO_SCOPE] * n
    both_seen: List[int] = []  # "resolved"/"absent" tokens with a finding or organ before them
    prior: List[int] = []  # post-cues about the comparison exam ("not seen on prior"): they negate nothing
    hedged: List[int] = []  # "excluded" after "cannot be (entirely)": an uncertainty post-cue
    backward = False  # whether any post-cue can apply; without one the backward pass leaves every phrase None
    cur: Optional[str] = None
    seen = False
    prev_end = start
    neg_at = start  # where the negation in force was said: a comma after it makes what follows a list
    for i, (a, b, info) in enumerate(toks):
        if cur is not None:
            # a measurement needs three characters at least ("4mm"): shorter gaps skip the regex
            if cur == "neg" and a - prev_end > 2 and _starts_description(low, prev_end, a, end):
                cur = None  # "no hydronephrosis, 4 mm stone": a measurement starts a positive description
            elif cur == "neg" and _ends_at_comma(low, neg_at, prev_end, a, end):
                cur = None  # "no calculi identified, mild right hydronephrosis noted"
            elif a - prev_end > 1 and low.find(",", prev_end, a) >= 0 and _comma_clause(low, prev_end, a, end):
                cur, seen = None, False  # "no splenomegaly, the pancreas is atrophic"
            elif a - prev_end > 6 and _new_clause(low, prev_end, a, end):
                cur, seen = None, False  # "no gallstones and the spleen is enlarged"
            else:
                scopes[i] = _PRE_SCOPE[cur]
        trig = info.trigger
        if trig is not None:
            if trig == TERMINATE:
                if not (cur == "unc" and i and toks[i - 1][2].trigger == UNC_PRE and not low[prev_end:a].strip() and
                        phrase_key(low[a:b]) in _CAUSE):
                    cur, seen = None, False  # else "which could be due to a small mass": the cause is hedged
            elif trig == NEG_PRE:
                if b - a != 3 or low[a:b] != "not" or _PRIOR.match(low, b, end) is None:
                    cur, neg_at = "neg", b  # but "new nodule not previously seen" is not negated
            elif trig == NEG_BOTH:
                if low[b - 6:b] == "absent" and _PRIOR.match(low, b, end) is not None:
                    prior.append(i)  # "effusion, absent on the prior study"
                elif seen:
                    both_seen.append(i)
                    backward = True
                else:
                    cur, neg_at = "neg", b
            elif trig == UNC_PRE:
                if cur != "neg" or phrase_key(low[a:b]) not in _CHARACTERISING or "," in low[prev_end:a]:
                    cur = "unc"  # else "no lesion suspicious for malignancy": the negation goes on
            elif trig == UNC_BOTH:
                cur = "unc"
                backward = True
            elif trig == WEAK_PRE:
                cur = "weak"
            elif trig == HIST_PRE:
                if cur != "neg":
                    cur = "hist"  # "history of cholelithiasis"; "no history of ..." stays a denial
            elif trig == PSEUDO:
                if cur == "neg":
                    cur = None  # "no hydronephrosis, stable renal cyst"
            elif trig == NEG_POST:
                if (low.startswith("not", a) or low[b - 6:b] == "absent") and (
                        _PRIOR.match(low, b, end) is not None or
                        _PRIOR_BEFORE.search(low, a - 12 if a - 12 > start else start, a) is not None):
                    prior.append(i)  # "new nodule, not seen on prior examination", "..., previously not seen"
                else:
                    backward = True
                    if (low.endswith("excluded", a, b) or low.endswith("ruled out", a, b)) and _DENIED.search(
                            low, a - 40 if a - 40 > start else start, a):
                        hedged.append(i)  # "cannot be entirely excluded"
            elif trig == UNC_POST:
                backward = True
            elif trig == NEG_SELF:
                scopes[i] = _PRE_SCOPE["neg"]  # "the kidneys are stone-free"
        if info.keys or info.organ:
            seen = True
        prev_end = b
    if not backward:
        return scopes
    cur = None
    covered = conj = False
    for i in range(n - 1, -1, -1):
        a, b, info = toks[i]
        if cur is not None and i + 1 < n:
            nxt = toks[i + 1][0]
            gap = low[b:nxt]
            conj = conj or " and " in gap or " or " in gap
            if covered and not conj and "," in gap:
                cur = None  # "wall thickening, neoplasm cannot be excluded": the cue covers its own clause
            elif "," in gap and _OWN_SUBJECT.search(gap) is not None:
                cur = None  # "hydronephrosis, cause not identified": the cue's subject is "cause"
            elif nxt - b > 6 and _two_clauses(low, start, b, nxt, end):
                cur = None  # "the spleen is enlarged and the gallstones are not seen"
        trig = info.trigger
        if trig == TERMINATE or (prior and i in prior):
            cur = None
        elif trig == NEG_POST or (trig == NEG_BOTH and i in both_seen) or trig == UNC_POST or trig == UNC_BOTH:
            cur = "unc" if trig in (UNC_POST, UNC_BOTH) or (hedged and i in hedged) else "neg"
            covered = conj = False
            scopes[i] = (scopes[i][0], cur)
            continue
        if cur is not None:
            scopes[i] = (scopes[i][0], cur)
            if info.keys:
                covered = True
    return scopes


def _starts_description(low: str, a: int, b: int, end: int) -> bool:
    """Whether a measurement in ``low[a:b]`` starts a new (positive) description rather than qualifying a noun."""
    m = _MEASURE.search(low, a, b)
    if m is None:
        return False
    s = m.start()
    if _QUALIFIER_BEFORE.search(low, s - 20 if s - 20 > a else a, s) or _QUALIFIER_AFTER.match(low, m.end(), end):
        return False  # "no nodules over 4 mm", "no stone of 3 mm or more"
    return True


def _ends_at_comma(low: str, neg_at: int, a: int, b: int, end: int) -> bool:
    """Whether a comma in the gap ``low[a:b]`` ends the negation said at ``neg_at``: a severity, size or count word
    follows it, or the negated clause before it is closed by its own verb ("no calculi identified,"), or the clause
    after it (the first comma of the negation only: later ones continue a list) says its finding is there."""
    c = low.find(",", a, b)
    if c < 0:
        return False
    if _DESCRIBED.match(low, c) is not None or _CLOSED.match(low, a) is not None:
        return True
    if low.find(",", neg_at, a) >= 0:
        return False  # "no gallstones, hydronephrosis, renal cysts seen": a list
    e = low.find(",", b, end)
    clause = low[c + 1:e if e >= 0 else end]
    return _STATED.search(clause) is not None and _LISTS_OR_DENIES.search(clause) is None


def _and_at(low: str, a: int, b: int) -> int:
    """Offset of the word "and" in ``low[a:b]``, or -1."""
    k = low.find("and", a, b)
    while k >= 0 and not ((k == 0 or not low[k - 1].isalnum()) and (k + 3 >= len(low) or not low[k + 3].isalnum())):
        k = low.find("and", k + 1, b)
    return k


def _new_clause(low: str, a: int, b: int, end: int) -> bool:
    """Whether an "and" in the gap ``low[a:b]`` opens a clause with its own subject and verb."""
    k = _and_at(low, a, b)
    return k >= 0 and _CLAUSE.match(low, k, end) is not None


def _comma_clause(low: str, a: int, b: int, end: int) -> bool:
    """Whether a comma in the gap ``low[a:b]`` opens a clause with its own subject and verb."""
    return _COMMA_CLAUSE.match(low, low.rfind(",", a, b), end) is not None  # the caller saw a comma


def _two_clauses(low: str, start: int, a: int, b: int, end: int) -> bool:
    """Whether an "and" in the gap ``low[a:b]`` joins two clauses that each have a verb (then a post-cue of the
    second does not reach into the first; "X and the Y are not seen" is one clause with a list)."""
    k = _and_at(low, a, b)
    return k >= 0 and clause_break(low, start, k, end)


def clause_break(low: str, start: int, k: int, end: int) -> bool:
    """Whether the comma or "and" at ``low[k]`` (after spaces) ends a clause of ``low[start:end]`` and starts another
    with its own subject and verb.

    The text before it (from the previous comma or ``start``) must be a clause too: it has a verb, a negation or
    a normal term ("The pancreas is normal and the gallbladder is distended"; not "The liver, the spleen and the
    pancreas are normal").
    """
    while k < end and low[k] == " ":
        k += 1
    if _CLAUSE_START.match(low, k, end) is None:
        return False
    c = low.rfind(",", start, k - 2 if low[k] != "," and k - 2 > start else k)
    return _LEFT.search(low, c + 1 if c >= start else start, k) is not None


def clause_starts(toks: Sequence[Tuple[int, int, Info]], low: str, start: int, end: int) -> List[int]:
    """Sorted offsets in ``low[start:end]`` where a new clause starts (a contrast word, or a comma or "and" before
    a subject and its verb): "The spleen is unremarkable, but the liver is cirrhotic" has two clauses."""
    out = [a for a, b, info in toks if info.trigger == TERMINATE and phrase_key(low[a:b]) in _CONTRAST]
    if low.find(",", start, end) >= 0 or low.find("and ", start, end) >= 0:
        for m in _CLAUSE_START.finditer(low, start, end):
            if clause_break(low, start, m.start(), end):
                out.append(m.start())
        out.sort()
    return out


def said_normal(toks: Sequence[Tuple[int, int, Info]], low: str, start: int, end: int,
                targets: Sequence[Tuple[str, Optional[Tuple[int, int]], int]], normal_at: Sequence[int]
                ) -> Optional[Set[str]]:
    """Organs named in a clause of ``low[start:end]`` with a normal term (``normal_at``: where the terms that are
    not negated start); None when the sentence is one clause. ``targets`` are ``(organ, span or None, token)``."""
    cuts = clause_starts(toks, low, start, end)
    if not cuts:
        return None
    clauses = {bisect_right(cuts, a) for a in normal_at}
    return {organ for organ, span, _ti in targets if span is None or bisect_right(cuts, span[0]) in clauses}


def status_of(scope: Scope, question: bool) -> Tuple[Status, bool]:
    """Status of a phrase from its scope; the flag marks uncertainty that comes only from "likely"/"probable".

    Uncertainty beats negation ("no definite ..., cannot exclude"), negation beats "likely", and a question
    mark in the sentence makes the rest uncertain.
    """
    return (STATUS_Q if question else STATUS)[scope]


def _status(pre: Optional[str], post: Optional[str], question: bool) -> Tuple[Status, bool]:
    if pre == "unc" or post == "unc":
        return UNCERTAIN, False
    if pre == "neg" or post == "neg":
        return ABSENT, False
    if pre == "hist":  # a finding of the past says nothing certain about this scan
        return UNCERTAIN, False
    if pre == "weak" or post == "weak":
        return UNCERTAIN, True
    if question:
        return UNCERTAIN, False
    return PRESENT, False


# status_of as two lookup tables (without and with a question mark): the parser asks once per phrase.
_KINDS = (None, "neg", "unc", "weak", "hist")
STATUS: Dict[Scope, Tuple[Status, bool]] = {(p, q): _status(p, q, False) for p in _KINDS for q in _KINDS}
STATUS_Q: Dict[Scope, Tuple[Status, bool]] = {(p, q): _status(p, q, True) for p in _KINDS for q in _KINDS}
