"""Pseudonymisation of patient identifiers with a keyed hash (HMAC-SHA256), and redaction helpers."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Optional, Union

__all__ = ["pseudonymize", "default_key", "IDENTIFIER_TAGS", "KEY_ENV", "redact_identifiers", "dicom_identifiers"]

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


def redact_identifiers(text: str, identifiers: "list[Optional[str]] | tuple[Optional[str], ...]") -> str:
    """``text`` with every given identifier (a patient ID, a name, an accession number) replaced by '<patient>'.

    Why: error messages name files, and real archives name folders after the patient ID ("images/12345678/...");
    a skipped study's reason is logged, printed and stored, so it must not carry that ID. Identifiers shorter
    than 3 characters are not replaced (they would match inside unrelated words and numbers).
    """
    for ident in sorted({str(i).strip() for i in identifiers if i}, key=len, reverse=True):
        if len(ident) >= 3:
            text = text.replace(ident, "<patient>")
    return text


def dicom_identifiers(image: Union[str, "os.PathLike[str]"]) -> "list[str]":
    """PatientID, PatientName, AccessionNumber and PatientBirthDate (as written and as YYYY-MM-DD) of one DICOM file
    of ``image`` (a file or a series folder), read from its header only; [] when it is no DICOM or cannot be read.
    Used to redact a failed study's reason."""
    from itertools import islice  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from ctglip_sdk.io.dicom import try_read_header  # noqa: PLC0415 - pydicom only when needed

    path = Path(image)
    ds = None
    try:
        # The first entries the walk meets, not a sorted listing: the folder may be a whole archive's root.
        files = [path] if path.is_file() else [p for p in islice(path.rglob("*"), 200) if p.is_file()]
    except OSError:
        return []
    tried = 0
    for f in files:  # the first few files that are not obviously something else: one of them may be the broken one
        if f.suffix.lower() in (".nii", ".gz", ".json", ".txt", ".csv", ".md"):
            continue
        tried += 1
        try:
            ds = try_read_header(f, specific_tags=["PatientID", "PatientName", "AccessionNumber", "PatientBirthDate"])
        except Exception:  # noqa: BLE001 - redaction must never turn one failure into another
            ds = None
        if ds is not None and (ds.get("PatientID") or ds.get("PatientName")) or tried >= 5:
            break
    if ds is None:
        return []
    out = [str(ds.get(k) or "") for k in ("PatientID", "AccessionNumber")]
    born = str(ds.get("PatientBirthDate") or "").strip()
    if len(born) == 8 and born.isdigit():  # a folder named by birth date, as written or as an ISO date
        out += [born, f"{born[:4]}-{born[4:6]}-{born[6:]}"]
    name = str(ds.get("PatientName") or "")
    return out + [name] + [part for part in name.replace("^", " ").split() if len(part) >= 3]
