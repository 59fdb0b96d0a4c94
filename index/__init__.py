"""ArchiveIndex: SQL metadata (the truth) plus FAISS vectors (derived) for a CT archive."""
