"""read_report_text on real files in the encodings hospital exports write."""

from __future__ import annotations

import logging

import pytest

from ctglip_sdk.reports import parse_report, read_report_text

TEXT = "FINDINGS:\r\nLiver: simple hepatic cyst in segment V. Läsion.\r\nKidneys: no stones.\r\n"


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_is_recognised(tmp_path, caplog, encoding):
    path = tmp_path / f"r_{encoding}.txt"
    path.write_bytes(TEXT.encode(encoding))
    with caplog.at_level(logging.WARNING):
        text = read_report_text(path)
    assert text == TEXT.replace("\r\n", "\n") and "\x00" not in text
    assert encoding in caplog.text and str(path) in caplog.text
    # Read as UTF-8 it carried a NUL between every letter and stated no finding at all.
    assert [f.finding for f in parse_report(text) if f.finding and str(f.status) == "present"] == ["liver_cyst"]


def test_text_with_an_odd_nul_is_not_taken_for_utf16(tmp_path):
    path = tmp_path / "nul.txt"
    path.write_bytes(b"Liver: normal.\x00 Spleen: normal.\n")
    assert read_report_text(path).startswith("Liver: normal.")
