"""Pseudonymisation of patient identifiers with a keyed hash (HMAC-SHA256), and redaction helpers."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Optional, Union

__all__ = ["pseudonymize", "default_key", "IDENTIFIER_TAGS", "KEY_ENV"]

#: Environment variable holding the site's pseudonymisation key (hex or text). Keep it secret and stable:
#: the same key gives the same pseudonym for the same patient across runs and machines.
KEY_ENV = "CTGLIP_PSEUDONYM_KEY"

#: DICOM keywords that identify a patient; never logged, raised or returned unless the user opts in.
IDENTIFIER_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs",
    "ReferringPhysicianName", "InstitutionName", "PatientAddress",
)

# A key baked into the library only makes pseudonyms stable, not secret; indexes generate their own key
# (stored inside the index folder) so that their pseudonyms cannot be recomputed from the public source.
_FALLBACK_KEY = b"ctglip-sdk-default-pseudonym-key-not-secret"


def default_key() -> bytes:
    """The key from ``$CTGLIP_PSEUDONYM_KEY`` or, when unset, the library's public fallback key."""
    env = os.environ.get(KEY_ENV)
    return env.encode("utf-8") if env else _FALLBACK_KEY


def pseudonymize(value: Optional[Union[str, bytes]], key: Optional[bytes] = None, length: int = 16) -> Optional[str]:
    """Keyed hash of an identifier: stable for one key, not reversible without it.

    Example:
        >>> p = pseudonymize("PAT-0001", key=b"site-secret")
        >>> len(p), p == pseudonymize("PAT-0001", key=b"site-secret")
        (16, True)
    """
    if value is None:
        return None
    raw = value if isinstance(value, bytes) else str(value).strip().encode("utf-8")
    if not raw:
        return None
    return hmac.new(key or default_key(), raw, hashlib.sha256).hexdigest()[:length]
