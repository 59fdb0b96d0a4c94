"""The one exception hierarchy of ctglip-sdk: every error the SDK raises on purpose derives from CTGlipError."""

from __future__ import annotations

import os
from typing import Optional, Union

__all__ = [
    "CTGlipError",
    "InputError",
    "GeometryError",
    "ConfigError",
    "CheckpointError",
    "IndexStateError",
    "QueryError",
]

PathLike = Union[str, "os.PathLike[str]"]


class CTGlipError(Exception):
    """Base class of every error ctglip-sdk raises on purpose.

    ``path`` (when given) names the file or folder the error is about; it is part of the message so that a
    batch job's log says which input to look at. Messages never carry patient identifiers.
    """

    def __init__(self, message: str, *, path: Optional[PathLike] = None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(CTGlipError, ValueError):
    """A file is unreadable, truncated, of an unsupported kind, or declares absurd sizes."""


class GeometryError(InputError):
    """A series' geometry cannot be trusted: missing or uneven slices, gantry tilt, mixed sizes/orientations."""


class ConfigError(CTGlipError, ValueError):
    """A configuration is invalid: unknown keys, wrong types, a missing local checkpoint folder."""


class CheckpointError(CTGlipError):
    """Model weights cannot be loaded: missing/unexpected keys, shape mismatch, wrong schema, not safetensors."""


class IndexStateError(CTGlipError):
    """An archive index is inconsistent or belongs to another model (named so as not to shadow IndexError)."""


class QueryError(CTGlipError, ValueError):
    """A query is malformed: unknown organ or filter column, bad range, empty text."""
