"""The ``where=`` allowlist of index queries: parsing, SQL expressions (bound parameters) and in-memory masks."""

from __future__ import annotations

import datetime as _dt
import difflib
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from sqlalchemy import and_, func, literal, not_, or_, select
from sqlalchemy.sql.elements import ColumnElement

from ctglip_sdk.errors import QueryError

from .schema import Tables

__all__ = ["Condition", "FILTERS", "MIRRORED", "parse_where", "parse_where_expr", "to_sql", "needs_join",
           "to_date", "normalise_sex", "NO_CONTRAST", "text_list"]

#: key -> (kind, table, column). kind: "number" and "date" take a value or a (lo, hi) range with None for an
#: open end (both ends inclusive); "sex" takes M/F/O; "category" takes one string or several (case-insensitive);
#: "contrast" is a category that also accepts True/False; "text" matches exactly.
FILTERS: Dict[str, Tuple[str, str, str]] = {
    "age": ("number", "organs", "age"),
    "sex": ("sex", "organs", "sex"),
    "study_date": ("date", "organs", "study_date"),
    "contrast": ("contrast", "studies", "contrast"),
    "body_part": ("category", "studies", "body_part"),
    "split": ("category", "studies", "split"),
    "description": ("category", "studies", "description"),
    "volume_ml": ("number", "organs", "volume_ml"),
    "mean_hu": ("number", "organs", "mean_hu"),
    "study_uid": ("text", "studies", "study_uid"),
    "series_uid": ("text", "series", "series_uid"),
    "patient": ("text", "patients", "pseudonym"),
}
_ALIASES = {"date": "study_date", "gender": "sex", "bodypart": "body_part", "patient_id": "patient",
            "volume": "volume_ml", "hu": "mean_hu"}
#: Keys answered from the in-memory mirror without a SQL round trip (SQL answers the others).
MIRRORED = frozenset({"age", "sex", "study_date", "contrast", "body_part", "split"})
#: Contrast values that mean "no contrast" (``where={"contrast": False}``); anything else non-empty is contrast.
NO_CONTRAST = ("", "none", "no", "false", "0", "native", "non-contrast", "noncontrast", "unenhanced", "plain", "nc")
_SEX = {"m": "M", "male": "M", "f": "F", "female": "F", "o": "O", "other": "O"}


@dataclass(frozen=True)
class Condition:
    """One parsed filter. Ranges have ``lo``/``hi`` (None = open); sets have ``values`` (lower-cased)."""

    key: str
    kind: str
    lo: Any = None
    hi: Any = None
    values: Tuple[Any, ...] = ()
    flag: Optional[bool] = None  # contrast=True/False

    @property
    def mirrored(self) -> bool:
        return self.key in MIRRORED


def normalise_sex(value: Any) -> Optional[str]:
    """'M'/'F'/'O' from common spellings, None for empty; raises QueryError for anything else."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    out = _SEX.get(str(value).strip().lower())
    if out is None:
        raise QueryError(f"sex must be M, F or O (or male/female/other), got {value!r}")
    return out


def to_date(value: Any, key: str = "study_date") -> Optional[_dt.date]:
    """A date from ``date``/``datetime``/ISO ``YYYY-MM-DD``/DICOM ``YYYYMMDD``; None stays None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    text = str(value).strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d", "%Y/%m/%d"):
        try:
            return _dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise QueryError(f"{key}: cannot read {value!r} as a date (use YYYY-MM-DD)")


def _number(value: Any, key: str) -> Optional[float]:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        v = float(value)
    except (TypeError, ValueError):
        raise QueryError(f"{key}: expected a number, got {value!r}") from None
    if math.isnan(v):
        raise QueryError(f"{key}: expected a number, got NaN")
    return v


def _range(value: Any, key: str, conv: Any) -> Tuple[Any, Any]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise QueryError(f"{key}: a range is (lo, hi) with None for an open end, got {value!r}")
        lo, hi = conv(value[0], key), conv(value[1], key)
        if lo is None and hi is None:
            raise QueryError(f"{key}: a range needs at least one end, got {value!r}")
        if lo is not None and hi is not None and lo > hi:
            raise QueryError(f"{key}: empty range {value!r} (lo > hi)")
        return lo, hi
    v = conv(value, key)
    if v is None:
        raise QueryError(f"{key}: expected a value or a (lo, hi) range, got {value!r}")
    return v, v


def text_list(value: Any, name: str) -> List[str]:
    """A list argument that also takes one string: None -> [], "x" -> ["x"], a list/tuple/set of non-empty
    strings as it is; anything else is a QueryError naming the argument.

    Why: ``cohort(all_of="renal_cyst")`` used to run over the letters of the string and return a wrong cohort.
    """
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple, set, frozenset)) or \
            not all(isinstance(v, str) and v.strip() for v in value):
        raise QueryError(f"{name}: expected a string or a list of non-empty strings, got {value!r}")
    return list(value)


def _strings(value: Any, key: str) -> Tuple[str, ...]:
    vals = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple, set, frozenset)) \
        else None
    if not vals or not all(isinstance(v, str) and v.strip() for v in vals):
        raise QueryError(f"{key}: expected a non-empty string or list of strings, got {value!r}")
    return tuple(sorted({v.strip() for v in vals}))


def parse_where(where: Optional[Mapping[str, Any]]) -> List[Condition]:
    """Validate a ``where`` dict against the allowlist; unknown keys and bad values raise QueryError.

    Example:
        >>> [c.key for c in parse_where({"age": (60, None), "sex": "F"})]
        ['age', 'sex']
    """
    if where is None:
        return []
    if not isinstance(where, Mapping):
        raise QueryError(f"where must be a dict of column -> value, got {type(where).__name__}")
    out: List[Condition] = []
    for raw_key, value in where.items():
        key = _ALIASES.get(str(raw_key).lower(), str(raw_key).lower())
        if key not in FILTERS:
            raise QueryError(f"unknown filter {raw_key!r}; allowed: {', '.join(sorted(FILTERS))}")
        kind = FILTERS[key][0]
        if kind == "number":
            lo, hi = _range(value, key, _number)
            out.append(Condition(key, kind, lo=lo, hi=hi))
        elif kind == "date":
            lo, hi = _range(value, key, to_date)
            out.append(Condition(key, kind, lo=lo, hi=hi))
        elif kind == "sex":
            vals = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple, set)) else []
            sexes = tuple(sorted({normalise_sex(v) for v in vals} - {None}))
            if not sexes:
                raise QueryError(f"sex: expected M, F or O (or a list), got {value!r}")
            out.append(Condition(key, kind, values=sexes))
        elif kind == "contrast" and isinstance(value, bool):
            out.append(Condition(key, kind, flag=value))
        elif kind == "contrast" and isinstance(value, str) and _contrast_flag(value) is not None:
            # "no"/"none"/"native"/"yes"/"true": a yes/no question, not a category that must be stored verbatim
            out.append(Condition(key, kind, flag=_contrast_flag(value)))
        elif kind in ("category", "contrast"):
            out.append(Condition(key, "category", values=tuple(v.lower() for v in _strings(value, key))))
        else:
            out.append(Condition(key, kind, values=_strings(value, key)))
    return out


PSEUDONYM_RE = re.compile(r"[0-9a-f]{20}")  # ArchiveIndex.pseudonym: what the patients table stores


def resolve_patients(index: Any, conditions: List[Condition]) -> List[Condition]:
    """``patient`` filter values as the index stores them: a value with a pseudonym's form as it is, any other (a
    raw PatientID or a manifest's patient_id) through ``index.find_patient``; one the index does not know matches
    nothing. The raw value never reaches SQL or a message (find_patient sends only its keyed pseudonyms).

    Why: ``where={"patient_id": "PAT-0001"}`` (or ``--where patient_id=...``) matched nothing without a word, while
    ``remove --patients-file`` took raw IDs.
    """
    out = []
    for c in conditions:
        if c.key == "patient":
            vals = {v if PSEUDONYM_RE.fullmatch(v) else (index.find_patient(v) or "") for v in c.values}
            c = replace(c, values=tuple(sorted(vals)))
        out.append(c)
    return out


def _contrast_flag(value: str) -> Optional[bool]:
    """True for "yes"/"true"/"contrast", False for a no-contrast word (:data:`NO_CONTRAST`), else None (a phase)."""
    v = value.strip().lower()
    if v in ("true", "yes", "1", "contrast", "enhanced"):
        return True
    if v and v in NO_CONTRAST:
        return False
    return None


_EXPR_RE = re.compile(r"^\s*([A-Za-z_]+)\s*(>=|<=|==|=|>|<|!=)?\s*(.*?)\s*$")


def parse_where_expr(exprs: Sequence[str]) -> Dict[str, Any]:
    """CLI filters (``age>=60``, ``sex=F``, ``study_date>=2020-01-01``, ``contrast=portal_venous,arterial``,
    ``contrast=no``) -> where dict.

    ``>``/``<`` are treated as inclusive bounds on numbers and dates (ages are whole years in most archives).

    Example:
        >>> parse_where_expr(["age>=60", "age<=80", "sex=F"])
        {'age': (60.0, 80.0), 'sex': 'F'}
    """
    out: Dict[str, Any] = {}
    for expr in exprs:
        m = _EXPR_RE.match(expr)
        if not m or not m.group(2) or not m.group(3):
            raise QueryError(f"cannot read filter {expr!r}; write KEY=VALUE, KEY>=VALUE or KEY<=VALUE")
        key, op, value = m.group(1).lower(), m.group(2), m.group(3)
        key = _ALIASES.get(key, key)
        if key not in FILTERS:  # before the operator check, which told "foo>=3" that foo only takes '='
            close = difflib.get_close_matches(key, sorted(FILTERS) + sorted(_ALIASES), n=1, cutoff=0.75)
            hint = f"did you mean {_ALIASES.get(close[0], close[0])}?" if close else \
                f"allowed: {', '.join(sorted(FILTERS))}"
            raise QueryError(f"unknown filter {m.group(1)!r}; {hint}")
        kind = FILTERS[key][0]
        if kind not in ("number", "date") and op not in ("=", "=="):
            raise QueryError(f"filter {expr!r}: {key} only takes '='")
        if op == "!=":  # "age!=60" used to read as age = 60: a range filter has no "not equal"
            raise QueryError(f"filter {expr!r}: '!=' is not supported; give a range (>=, <=) instead")
        if kind in ("number", "date"):
            conv = (lambda v: _number(v, key)) if kind == "number" else (lambda v: to_date(v, key).isoformat())
            lo, hi = out.get(key, (None, None))
            if op in (">=", ">"):
                lo = conv(value)
            elif op in ("<=", "<"):
                hi = conv(value)
            else:
                lo = hi = conv(value)
            out[key] = (lo, hi)
        elif kind == "contrast" and _contrast_flag(value) is not None:
            out[key] = _contrast_flag(value)
        else:
            parts = [p for p in value.split(",") if p]
            out[key] = parts[0] if len(parts) == 1 else parts
    return out


def to_sql(conditions: Sequence[Condition], t: Tables) -> List[ColumnElement]:
    """SQLAlchemy expressions for conditions over ``organs`` joined to studies, series and patients."""
    tables = {"organs": t.organs, "studies": t.studies, "series": t.series, "patients": t.patients}
    out: List[ColumnElement] = []
    for c in conditions:
        _, table, column = FILTERS[c.key]
        col = tables[table].c[column]
        if c.kind in ("number", "date"):
            parts = []
            if c.lo is not None:
                parts.append(col >= c.lo)
            if c.hi is not None:
                parts.append(col <= c.hi)
            out.append(and_(*parts))
        elif c.flag is not None:
            none = func.lower(func.coalesce(col, "")).in_(NO_CONTRAST)
            out.append(not_(none) if c.flag else none)
        elif c.kind == "category":
            out.append(func.lower(col).in_(c.values))
        elif c.key in ("series_uid", "study_uid"):
            out.append(_uid_match(c, col, t))
        else:
            out.append(col.in_(c.values))
    return out


def _uid_match(c: Condition, col: Any, t: Tables) -> ColumnElement:
    """A series or study UID as stored, or as output shows a redacted path key (``path:...#<series id>``)."""
    from .export import shown_key_series_id, shown_path_with_id  # noqa: PLC0415 - export imports nothing of filters

    parts = [col.in_(c.values)]  # a stored key, which may itself end in "#<digits>" (a DICOM folder "CT#1")
    shown = [v for v in c.values if shown_key_series_id(v) is not None]
    if shown:  # a shown key names its series only when the whole key is that series' shown key
        if c.key == "series_uid":
            parts.append((literal("path:") + shown_path_with_id(t.series)).in_(shown))
        else:  # an alias: the subquery must not correlate with a series table the query joins
            se = t.series.alias()
            parts.append(col.in_(select(literal("series:") + se.c.series_uid).where(
                (literal("series:path:") + shown_path_with_id(se)).in_(shown))))
    return or_(*parts)


def needs_join(conditions: Sequence[Condition]) -> Tuple[bool, bool, bool]:
    """Which of studies/series/patients a SQL filter must join."""
    tables = {FILTERS[c.key][1] for c in conditions}
    return "studies" in tables, "series" in tables, "patients" in tables
