"""How `ctglip search` reads its TEXT: filters parsed from the question (--parse), or a hint that it holds some.

``ctglip_sdk.index.nlq.parse_query`` turns "fatty liver in women over 60" into text "fatty liver", organ liver and
filters sex=F, age>=60. Without ``--parse`` the whole question goes to the encoder and nothing is filtered, which
silently returns men aged 47; so the command then names the words it did not use and the --where to pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ctglip_sdk.errors import QueryError

__all__ = ["ReadQuery", "read_search_text", "where_exprs"]

# Connective words parse_query drops with a filter phrase; they are no filter, so the hint does not name them.
_CONNECTIVES = {"in", "of", "with", "among", "for", "and", "the", "who", "are", "have", "having", "patient",
                "patients", "subject", "subjects", "people"}


@dataclass
class ReadQuery:
    """What search sends to the index, and the notes that say how TEXT was read."""

    text: str
    organ: Optional[List[str]]
    where: Optional[Dict[str, Any]]
    notes: List[str] = field(default_factory=list)  # how the text was read: with the hits' other notes
    hints: List[str] = field(default_factory=list)  # advice (filters not applied): always on stderr


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


def read_search_text(text: str, organs: Sequence[str], where: Optional[Dict[str, Any]],
                     parse: bool) -> ReadQuery:
    """Search text, organ and where for ``ctglip search``; explicit --organ/--where win over parsed ones.

    Raises:
        QueryError: with ``parse``, when nothing but filter words is left to search for.
    """
    from ctglip_sdk.index.nlq import parse_query  # noqa: PLC0415 - loads the organ vocabulary

    explicit_organ = list(organs) or None
    if parse:
        parsed = parse_query(text)
        organ = explicit_organ or parsed.organ
        merged = {**parsed.where, **(where or {})}  # per key, an explicit --where replaces the parsed filter
        read = [f"text {parsed.text!r}"]
        if organ and not explicit_organ:
            read.append(f"organ {','.join(organ)}")
        if merged:
            read.append(f"filters {', '.join(where_exprs(merged))}")
        return ReadQuery(parsed.text, organ, merged or None, notes=[f"parsed as {'; '.join(read)}", *parsed.notes])
    out = ReadQuery(text, explicit_organ, where)
    try:
        # infer_organ=False: only the filters matter for the hint, and the organ lookup loads report vocabulary.
        parsed = parse_query(text, infer_organ=False)
    except QueryError:  # only filter words ("women over 60"): the encoder gets them all, as before
        return out
    unused = {k: v for k, v in parsed.where.items() if k not in (where or {})}
    if unused:
        exprs = where_exprs(unused)
        words = _filter_words(text, parsed.text) or text
        flags = " ".join(f'--where "{e}"' for e in exprs)
        out.hints.append(f"the words {words!r} look like filters ({', '.join(exprs)}) but search does not apply "
                         f"them; pass --parse to read filters from the text, or {flags}")
    return out
