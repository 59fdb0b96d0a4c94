"""The label table a segmentation NIfTI carries in its header (TotalSegmentator's CaretExtension), checked against
the label map a multi-label file is read through."""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Tuple

from ctglip_sdk.errors import InputError
from ctglip_sdk.organs import label_map as _label_map

__all__ = ["read_label_table", "reconcile_label_map"]

log = logging.getLogger(__name__)

# TotalSegmentator (nifti_ext_header.add_label_map_to_nifti, v1.5 and later) writes
# <Label Key="7" Red=".." ...><![CDATA[pancreas]]></Label> per class into an XML header extension. Not an XML
# parser: the header comes from the user's file, and no entity may be expanded from it. Nor one regular expression
# over the whole extension: a lazy CDATA match that never closes rescans to the end from every <Label, which a
# crafted 160 kB extension turned into seconds (review, 2026-12-07). The scan below splits on </Label> and reads
# each element from its last <Label, so every byte is looked at a bounded number of times.
_KEY = re.compile(rb'\bKey\s*=\s*"(\d+)"')
_OPEN = b"<Label"
_CLOSE = b"</Label>"
_CDATA = (b"<![CDATA[", b"]]>")
#: Larger extensions that hold a label table are refused (a 117-class table is ~12 kB; this allows ~80,000 classes).
_MAX_EXTENSION_BYTES = 1 << 20


def _is_word_byte(b: int) -> bool:
    return bytes([b]).isalnum() or b == 0x5F  # ASCII, as the regex's \b was: <LabelTable> is not a <Label>


def _label_elements(content: bytes) -> Iterator[Tuple[int, bytes]]:
    """``(key, name)`` of each ``<Label Key="n">name</Label>`` (name plain or in CDATA); malformed ones skipped."""
    for chunk in content.split(_CLOSE)[:-1]:  # the text before each </Label>
        start = chunk.rfind(_OPEN)
        while start >= 0 and start + len(_OPEN) < len(chunk) and _is_word_byte(chunk[start + len(_OPEN)]):
            start = chunk.rfind(_OPEN, 0, start)
        if start < 0:
            continue
        gt = chunk.find(b">", start)
        if gt < 0 or b"<" in chunk[start + 1:gt]:  # no "<" in a well-formed start tag
            continue
        key = _KEY.search(chunk, start + len(_OPEN), gt)
        body = chunk[gt + 1:].strip()
        if key is None:
            continue
        if body.startswith(_CDATA[0]) and body.endswith(_CDATA[1]):
            name = body[len(_CDATA[0]):-len(_CDATA[1])]
        elif b"<" in body:
            continue
        else:
            name = body
        yield int(key.group(1)), name


def read_label_table(img: Any, where: Optional[str] = None) -> Optional[Dict[int, str]]:
    """``{id: class name}`` from a NIfTI image's header extensions, or None when it carries no label table.

    Raises:
        InputError: an extension holding a label table is larger than 1 MiB (no real table is; it is not read,
            rather than the file being read through another map than its own).
    """
    extensions = getattr(getattr(img, "header", None), "extensions", None) or []
    for ext in extensions:
        try:
            content = ext.get_content()
        except Exception:  # noqa: BLE001 - an extension nibabel cannot decode holds no table we can read
            continue
        if not isinstance(content, (bytes, bytearray)) or b"<LabelTable" not in content:
            continue
        if len(content) > _MAX_EXTENSION_BYTES:
            raise InputError(f"the label table in the file's header is {len(content)} bytes, over the "
                             f"{_MAX_EXTENSION_BYTES} byte limit (a 117-class table is ~12 kB); it is not read",
                             path=where)
        table: Dict[int, str] = {}
        for key, raw in _label_elements(bytes(content)):
            name = raw.decode("utf-8", "replace").strip()
            if name:
                table[key] = name
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
