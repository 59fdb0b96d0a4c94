"""Reading a report file whatever encoding the hospital's system wrote it in.

Report exports are often not UTF-8: Windows RIS/PACS exports write cp1252 (Latin-1 with curly quotes and the
euro sign), some tools write UTF-8 with a byte-order mark, and a few write UTF-16 with one. Decoding them as
UTF-8 alone stopped a whole training run on the first "Läsion" (0xe4). One reader serves every stage, so a
report reads the same text (and gives the same labels) in training, calibration and evaluation.
"""

from __future__ import annotations

import codecs
import logging
import os
import threading
from pathlib import Path
from typing import Optional, Set, Tuple, Union

from ctglip_sdk.errors import InputError

__all__ = ["read_report_text", "decode_report_bytes"]

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]

# A BOM names the encoding outright. UTF-32 LE's BOM begins with UTF-16 LE's, so UTF-32 is tested first.
_BOMS: Tuple[Tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)
# Files already warned about (one warning per file per process, not one per stage that reads it).
_warned: Set[Tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_once(path: PathLike, message: str, *args: object) -> None:
    key = (os.fspath(path), message)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning("%s: " + message, os.fspath(path), *args)


def read_report_text(path: PathLike) -> str:
    """The text of a report file: UTF-8 (a BOM is dropped), UTF-16/32 when a BOM says so, else cp1252.

    Bytes that are not valid UTF-8 are read as cp1252 (the Windows superset of Latin-1 that hospital
    exports use), or as Latin-1 when they use one of the five bytes cp1252 leaves undefined; either way one
    warning per file names the file and the encoding used. Line ends are normalised to ``\\n`` as text-mode
    ``open`` does, so a CRLF report parses like its LF copy.

    Args:
        path: the report file.

    Returns:
        The decoded text (empty for an empty file).

    Raises:
        InputError: the file cannot be read (missing, a folder, no permission), or it starts with a UTF-16/32
            byte-order mark but is not valid in that encoding; the message names the file.

    Example:
        >>> from ctglip_sdk.reports import read_report_text
        >>> read_report_text("reports/case00001.txt")[:9]  # doctest: +SKIP
        'FINDINGS:'
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the report: {exc.strerror or type(exc).__name__}", path=path) from None
    return decode_report_bytes(raw, path)


def decode_report_bytes(raw: bytes, source: PathLike = "<stdin>") -> str:
    """A report's bytes read as ``read_report_text`` reads a file (``source`` names it in warnings and errors):
    for text that does not come from a file, e.g. ``ctglip parse-report -`` on stdin."""
    text = _decode(source, raw)
    # Text mode's universal newlines, which Path.read_text applied before this reader existed.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode(path: PathLike, raw: bytes) -> str:
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(codec)  # the codec reads and drops the BOM itself
            except UnicodeDecodeError as exc:
                raise InputError(f"the report starts with a {codec.upper()} byte-order mark but is not valid "
                                 f"{codec.upper()} ({exc.reason} at byte {exc.start})", path=path) from None
    body = raw[len(codecs.BOM_UTF8):] if raw.startswith(codecs.BOM_UTF8) else raw
    guessed = _utf16_without_bom(body)
    if guessed is not None:
        _warn_once(path, "the report has no byte-order mark but reads as %s (every other byte is NUL)", guessed)
        return body.decode(guessed)
    head = body[:65536]
    if head.count(0) >= max(8, len(head) // 100):  # a stray NUL in a text is read; a binary file is full of them
        # A DICOM slice or an image given as the report: no text holds NUL bytes, and cp1252 would "read" it as
        # a report without findings, a silent label of "normal" in training and an empty answer in parse-report.
        raise InputError("not a text report: the file is full of NUL bytes (a binary file, e.g. an image?)",
                         path=path)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        first = f"byte 0x{body[exc.start]:02x} at offset {exc.start}"
    try:
        text, codec = body.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d: undefined in cp1252, defined in Latin-1
        text, codec = body.decode("latin-1"), "latin-1"
    _warn_once(path, "the report is not UTF-8 (%s); read as %s", first, codec)
    return text


def _utf16_without_bom(raw: bytes) -> Optional[str]:
    """"utf-16-le" / "utf-16-be" when ``raw`` is UTF-16 text written without a byte-order mark, else None.

    Report text is mostly ASCII, which UTF-16 writes as the character and a NUL; UTF-8 and cp1252 text never holds
    NULs. So when most odd (or even) bytes are NUL and the other half are not, it is UTF-16; read as UTF-8 it
    would carry a NUL between every letter, parse as nothing, and look like a report with no finding.
    """
    if len(raw) < 4 or len(raw) % 2 or b"\x00" not in raw:
        return None
    even, odd = raw[0::2], raw[1::2]
    for zeros, other, codec in ((odd, even, "utf-16-le"), (even, odd, "utf-16-be")):
        if zeros.count(0) >= 0.9 * len(zeros) and other.count(0) <= 0.1 * len(other):
            try:
                raw.decode(codec)
            except UnicodeDecodeError:
                return None
            return codec
    return None
