"""Result types of report parsing: Status, OrganFinding and SentenceResult."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, Optional, Tuple

__all__ = ["Status", "OrganFinding", "SentenceResult"]


class Status(str, Enum):
    """How a report states a finding."""

    PRESENT = "present"
    ABSENT = "absent"
    UNCERTAIN = "uncertain"

    def __str__(self) -> str:
        return self.value


_RANK = {Status.ABSENT: 0, Status.UNCERTAIN: 1, Status.PRESENT: 2}


@dataclass(frozen=True, slots=True)
class OrganFinding:
    """One statement of a report about an organ.

    ``finding`` is a dictionary key, or None for a statement about the organ as a whole: with status
    ``absent`` the organ is reported normal ("The spleen is unremarkable."), with ``present``/``uncertain`` the
    report describes it in words the dictionary does not cover. ``span`` is ``(start, end)`` of the evidence
    phrase in the report text; ``sentence`` is the whole sentence.
    """

    organ: str
    finding: Optional[str]
    status: Status
    sentence: str
    span: Tuple[int, int]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dictionary."""
        return {"organ": self.organ, "finding": self.finding, "status": self.status.value,
                "sentence": self.sentence, "span": list(self.span)}


@dataclass(frozen=True, slots=True)
class SentenceResult:
    """A sentence, where it is, the heading it sits under and what it says (used by organ_texts)."""

    text: str
    span: Tuple[int, int]
    heading: Optional[str]
    organ_from_heading: bool
    findings: Tuple[OrganFinding, ...]
    organs: Tuple[str, ...] = ()  # organs the sentence is about (named, from the heading, or of its findings)


# The parser builds tens of these per report. A frozen dataclass sets each field through object.__setattr__, and
# an Enum member costs a class-attribute lookup; plain slot setters and module constants make the same objects.
PRESENT, ABSENT, UNCERTAIN = Status.PRESENT, Status.ABSENT, Status.UNCERTAIN
_new = object.__new__
_f_organ, _f_finding, _f_status, _f_sentence, _f_span = (
    OrganFinding.__dict__[n].__set__ for n in ("organ", "finding", "status", "sentence", "span"))
_s_text, _s_span, _s_heading, _s_from_heading, _s_findings, _s_organs = (
    SentenceResult.__dict__[n].__set__ for n in ("text", "span", "heading", "organ_from_heading", "findings", "organs"))


def new_finding(organ: str, finding: Optional[str], status: Status, sentence: str,
                span: Tuple[int, int]) -> OrganFinding:
    """``OrganFinding(organ, finding, status, sentence, span)``, built faster."""
    f = _new(OrganFinding)
    _f_organ(f, organ)
    _f_finding(f, finding)
    _f_status(f, status)
    _f_sentence(f, sentence)
    _f_span(f, span)
    return f


def new_sentence(text: str, span: Tuple[int, int], heading: Optional[str], organ_from_heading: bool,
                 findings: Tuple[OrganFinding, ...], organs: Tuple[str, ...]) -> SentenceResult:
    """``SentenceResult(text, span, heading, organ_from_heading, findings, organs)``, built faster."""
    s = _new(SentenceResult)
    _s_text(s, text)
    _s_span(s, span)
    _s_heading(s, heading)
    _s_from_heading(s, organ_from_heading)
    _s_findings(s, findings)
    _s_organs(s, organs)
    return s
