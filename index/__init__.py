"""ArchiveIndex: SQL metadata (the truth) plus FAISS vectors (derived) for a CT archive."""

from __future__ import annotations

from .archive import ArchiveIndex
from .embeddings import SeriesEmbeddings
from .filters import FILTERS, parse_where, parse_where_expr
from .ingest_read import ArchivePlan, plan_ingest
from .results import CohortResult, Hit, IngestReport, SearchResults

__all__ = ["ArchiveIndex", "SeriesEmbeddings", "IngestReport", "SearchResults", "Hit", "CohortResult", "FILTERS",
           "parse_where", "parse_where_expr", "ArchivePlan", "plan_ingest"]
