"""The label table a segmentation NIfTI carries in its header (TotalSegmentator's CaretExtension), checked against
the label map a multi-label file is read through."""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from ctglip_sdk.errors import InputError
from ctglip_sdk.organs import label_map as _label_map

__all__ = ["read_label_table", "reconcile_label_map"]

log = logging.getLogger(__name__)

# TotalSegmentator (nifti_ext_header.add_label_map_to_nifti, v1.5 and later) writes
# <Label Key="7" Red=".." ...><![CDATA[pancreas]]></Label> per class into an XML header extension. A regular
# expression, not an XML parser: the header comes from the user's file, and no entity may be expanded from it.
_LABEL = re.compile(rb'<Label\b[^>]*?\bKey\s*=\s*"(\d+)"[^>]*>\s*(?:<!\[CDATA\[(.*?)\]\]>|([^<]*))\s*</Label>', re.S)
#: Extensions larger than this are not searched (a 117-class table is ~12 kB).
_MAX_EXTENSION_BYTES = 1 << 20


def read_label_table(img: Any) -> Optional[Dict[int, str]]:
    """``{id: class name}`` from a NIfTI image's header extensions, or None when it carries no label table."""
    extensions = getattr(getattr(img, "header", None), "extensions", None) or []
    for ext in extensions:
        try:
            content = ext.get_content()
        except Exception:  # noqa: BLE001 - an extension nibabel cannot decode holds no table we can read
            continue
        if not isinstance(content, (bytes, bytearray)) or len(content) > _MAX_EXTENSION_BYTES \
                or b"<LabelTable" not in content:
            continue
        table: Dict[int, str] = {}
        for key, cdata, plain in _LABEL.findall(bytes(content)):
            name = (cdata if cdata else plain).decode("utf-8", "replace").strip()
            if name:
                table[int(key)] = name
        table.pop(0, None)  # background, when a writer lists it
        if table:
            return table
    return None


def _agrees(table: Mapping[int, str], labels: Mapping[int, str], ids: Iterable[int]) -> bool:
    return all(labels.get(i) == table[i] for i in ids)


def reconcile_label_map(table: Optional[Mapping[int, str]], present: Iterable[int], requested: Optional[Any],
                        resolved: Tuple[str, Dict[int, str]], where: str) -> Tuple[str, Dict[int, str]]:
    """The ``(map name, {id: name})`` to read a multi-label file through, given the table in its header.

    Why: TotalSegmentator 2 writes its own ids (117 classes) unless run with ``--v1_order``; ids up to 104 exist
    in both orders and name other organs for 98 of them, so a v2 file read as v1 loads without any error and
    with the wrong organ under every label. The header's table says which order the file is in.

    - No table: the requested map (default totalseg_v1), as before.
    - ``requested`` None (the default): a known map that names every present id as the table does, else the
      table itself (``"file"``); the table must name every present id.
    - An explicit map that names a present id otherwise than the table: InputError naming both.
    """
    ids = sorted(int(i) for i in present if int(i) != 0)
    if not table:
        return resolved
    missing = [i for i in ids if i not in table]
    if requested is None:
        if missing:
            raise InputError(f"the label table in the file's header does not name label ids {missing[:10]} "
                             f"that the image holds; pass label_map= the map the file was written with", path=where)
        for name in ("totalseg_v1", "totalseg_v2"):
            labels = _label_map(name)
            if _agrees(table, labels, ids):
                if name != resolved[0]:
                    log.info("%s: read as %s, as the label table in its header says", where, name)
                return name, labels
        log.info("%s: read through the label table in its header (%d classes)", where, len(table))
        return "file", dict(table)
    clash = [i for i in ids if i in table and resolved[1].get(i) != table[i]]
    if clash:
        i = clash[0]
        hint = next((f"; label_map={n!r} matches it" for n in ("totalseg_v1", "totalseg_v2")
                     if _agrees(table, _label_map(n), ids)), "")
        raise InputError(f"label map {resolved[0]!r} disagrees with the label table in the file's header for "
                         f"{len(clash)} of {len(ids)} label ids present (id {i}: {resolved[1].get(i)!r} in the map, "
                         f"{table[i]!r} in the file){hint}; leave label_map unset to follow the file", path=where)
    return resolved
