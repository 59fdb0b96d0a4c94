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
