"""manifest.csv rows: UTF-8 CSV read once, with errors that name the file (index ingest and training share it)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Tuple

from ctglip_sdk.errors import InputError

__all__ = ["manifest_rows"]


def manifest_rows(manifest: Path, required: Tuple[str, ...] = ()) -> List[Dict[str, str]]:
    """The rows of a manifest.csv (UTF-8, a byte-order mark allowed), column names stripped and lower-cased; a
    file that is not UTF-8 text, not CSV or lacks a ``required`` column is an InputError naming it (they were a
    raw UnicodeDecodeError or csv.Error)."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            names = [f.strip().lower() for f in reader.fieldnames or []]
            missing = [c for c in required if c not in names]
            if missing:
                raise InputError(f"manifest.csv lacks column(s) {', '.join(missing)} (docs/data.md)", path=manifest)
            # column names as written by hand or by Excel (" Split", "AGE") read as the documented ones
            return [{k.strip().lower(): v for k, v in row.items() if k} for row in reader]
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save "
                         "manifest.csv as UTF-8 (Excel: 'CSV UTF-8')", path=manifest) from None
    except csv.Error as exc:
        raise InputError(f"not a readable CSV file ({exc})", path=manifest) from None
