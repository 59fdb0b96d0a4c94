"""Shared output helpers for CLI commands: aligned tables and JSON."""

from __future__ import annotations

import json
from typing import Any, Iterable, List, Mapping, Optional, Sequence

import click


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_fmt(v) for v in value)
    return "" if value is None else str(value)


def print_table(rows: Iterable[Any], columns: Optional[Sequence[str]] = None) -> None:
    """Print rows (mappings, or plain values) as an aligned text table.

    Without ``columns``, the columns are the union of every row's keys in first-seen order: rows may differ (a
    cohort member holds evidence only for the conditions it met), and no row's values may go unshown.
    """
    rows = list(rows)
    if not rows:
        click.echo("(no rows)")
        return
    if not isinstance(rows[0], Mapping):
        for r in rows:
            click.echo(_fmt(r))
        return
    cols: List[str] = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


#: Set once a command has printed its JSON result: an error after that (a montage that cannot be written once the
#: hits are out) must not add a second document to stdout.
PRINTED = {"json": False}


def echo_json(obj: Any) -> None:
    """Print an object as JSON (numpy scalars and paths become plain values)."""
    click.echo(json.dumps(obj, indent=2, default=_default))
    PRINTED["json"] = True


def _default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)
