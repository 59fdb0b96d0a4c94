"""Volume metadata from DICOM headers: pseudonymised patient, age, sex, dates; never raw identifiers."""

from __future__ import annotations

import datetime as _dt
import logging
import re
from typing import Any, Dict, Optional

from ctglip_sdk.io.dicom_redact import redact_pydicom_values
from ctglip_sdk.privacy import pseudonymize

__all__ = ["META_KEYS", "empty_meta", "dicom_meta", "parse_age", "iso_date"]

log = logging.getLogger(__name__)

#: Keys every Volume.meta produced by ctglip_sdk.io carries (None when unknown).
META_KEYS = (
    "study_uid", "series_uid", "patient", "age", "sex", "study_date", "body_part", "contrast", "contrast_agent",
    "kvp", "manufacturer", "modality", "series_description", "source_path", "format", "unreadable",
)

_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12.0, "Y": 365.25}


def empty_meta(source_path: str, fmt: str) -> Dict[str, Any]:
    """A meta dict with every key of META_KEYS, all unknown except the source path and format."""
    meta: Dict[str, Any] = {key: None for key in META_KEYS}
    meta.update(source_path=source_path, format=fmt, unreadable=[])
    return meta


def parse_age(value: Any) -> Optional[float]:
    """DICOM Age String (``nnnD|W|M|Y``) -> years; whole years stay integral.

    Example:
        >>> parse_age("043Y"), parse_age("006M")
        (43, 0.5)
    """
    if value is None:
        return None
    match = _AGE_RE.match(str(value))
    if not match:
        return None
    number, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    if unit == "Y":
        return number
    return round(number * _DAYS_PER[unit] / 365.25, 2)


def _date(value: Any) -> Optional[_dt.date]:
    text = str(value or "").strip()
    if not text:
        return None
    try:
        return _dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def iso_date(value: Any) -> Optional[str]:
    """DICOM DA (``YYYYMMDD``) -> ISO ``YYYY-MM-DD``; None when absent or malformed."""
    date = _date(value)
    return date.isoformat() if date else None


def _age_from_dates(birth: Any, study: Any) -> Optional[int]:
    # Completed years at the study date; only the result is kept, never the birth date itself.
    b, s = _date(birth), _date(study)
    if b is None or s is None or s < b:
        return None
    return s.year - b.year - ((s.month, s.day) < (b.month, b.day))


def _text(ds: Any, keyword: str) -> Optional[str]:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed element must not break loading of metadata we do not need
        return None
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _number(ds: Any, keyword: str) -> Optional[float]:
    text = _text(ds, keyword)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def dicom_meta(ds: Any, source_path: str, include_identifiers: bool = False) -> Dict[str, Any]:
    """Build Volume.meta from one header of a series.

    ``patient`` is the keyed pseudonym of PatientID (ctglip_sdk.privacy.pseudonymize). The raw PatientName,
    PatientID, PatientBirthDate and AccessionNumber are copied only into ``meta["identifiers"]`` and only when
    ``include_identifiers`` is True.
    """
    redact_pydicom_values()  # a header handed in by the caller: its values are checked as they are read here
    meta = empty_meta(source_path, "dicom")
    raw_age, birth, study = _text(ds, "PatientAge"), _text(ds, "PatientBirthDate"), _text(ds, "StudyDate")
    age = parse_age(raw_age)
    if age is None:
        age = _age_from_dates(birth, study or _text(ds, "SeriesDate"))
    # Values present but malformed are named (never echoed: a birth date is an identifier), so that ingest can
    # say why a column was stored empty instead of dropping it silently.
    if age is None and raw_age is not None:
        meta["unreadable"].append(("age", "PatientAge is not a DICOM age string (nnnD/W/M/Y)"))
    if age is None and birth is not None and _date(birth) is None:
        meta["unreadable"].append(("age", "PatientBirthDate is not a date"))
    if study is not None and _date(study) is None:
        meta["unreadable"].append(("study_date", "StudyDate is not a date"))
    sex = _text(ds, "PatientSex")
    agent = _text(ds, "ContrastBolusAgent")
    meta.update(
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        patient=pseudonymize(_text(ds, "PatientID")),
        age=age,
        sex=sex.upper() if sex else None,
        study_date=iso_date(_text(ds, "StudyDate")),
        body_part=_text(ds, "BodyPartExamined"),
        # ContrastBolusAgent is the standard's only reliable flag; "NONE"/"NO" are written by some scanners.
        contrast=bool(agent) and agent.upper() not in ("NONE", "NO", "N", "0"),
        contrast_agent=agent if agent and agent.upper() not in ("NONE", "NO", "N", "0") else None,
        kvp=_number(ds, "KVP"),
        manufacturer=_text(ds, "Manufacturer"),
        modality=_text(ds, "Modality"),
        series_description=_text(ds, "SeriesDescription"),
    )
    if include_identifiers:
        meta["identifiers"] = {
            key: _text(ds, key) for key in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")
        }
    return meta
