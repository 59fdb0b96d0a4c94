"""How `ctglip search` reads its TEXT: filters parsed from the question (--parse), or a hint that it holds some.

``ctglip_sdk.index.nlq.parse_query`` turns "fatty liver in women over 60" into text "fatty liver", organ liver and
filters sex=F, age>=60. Without ``--parse`` the whole question goes to the encoder and nothing is filtered, which
silently returns men aged 47; so the command then names the words it did not use and the --where to pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ctglip_sdk.index.nlq import unapplied_filters, where_exprs

__all__ = ["ReadQuery", "read_search_text", "where_exprs"]


@dataclass
class ReadQuery:
    """What search sends to the index, and the notes that say how TEXT was read."""

    text: str
    organ: Optional[List[str]]
    where: Optional[Dict[str, Any]]
    notes: List[str] = field(default_factory=list)  # how the text was read: with the hits' other notes
    hints: List[str] = field(default_factory=list)  # advice (filters not applied): always on stderr


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
    unused = unapplied_filters(text, where)
    if unused is not None:
        words, filters = unused
        exprs = where_exprs(filters)
        flags = " ".join(f'--where "{e}"' for e in exprs)
        out.hints.append(f"the words {words!r} look like filters ({', '.join(exprs)}) but search does not apply "
                         f"them; pass --parse to read filters from the text, or {flags}")
    return out
