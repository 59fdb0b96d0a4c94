"""Report understanding: organ-level findings from CT reports and the abnormality dictionary."""

from __future__ import annotations

from ctglip_sdk.reports.dictionary import AbnormalityDictionary, FindingEntry
from ctglip_sdk.reports.organ_text import labels, organ_texts
from ctglip_sdk.reports.parser import OrganFinding, SentenceResult, Status, analyse, parse_report
from ctglip_sdk.reports.text_file import decode_report_bytes, read_report_text

__all__ = ["parse_report", "organ_texts", "labels", "analyse", "OrganFinding", "SentenceResult", "Status",
           "AbnormalityDictionary", "FindingEntry", "read_report_text", "decode_report_bytes"]
