"""`ctglip parse-report`: structured organ findings from a free-text report file."""

from __future__ import annotations

import sys
from typing import Optional

import click

from ctglip_sdk.cli.output import echo_json, print_table


def _read(path: str) -> str:
    # The library's reader: UTF-8/16/32 or cp1252 with a warning, and a binary file refused, not parsed as "no
    # findings" (errors="replace" used to turn a DICOM slice into an empty report, exit 0).
    from ctglip_sdk.reports.text_file import read_report_text  # noqa: PLC0415

    return read_report_text(path)


@click.command("parse-report")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for pipelines.")
@click.option("--dictionary", "dictionary_path", type=click.Path(dir_okay=False),
              help="Your dictionary JSON, merged over the default one.")
def parse_report_command(file: str, as_json: bool, dictionary_path: Optional[str]) -> None:
    """Extract organ-level findings (present/absent/uncertain) from a report FILE ('-' reads stdin).

    Example: ctglip parse-report report.txt --json
    """
    from ctglip_sdk.reports import AbnormalityDictionary, parse_report
    from ctglip_sdk.reports.text_file import decode_report_bytes

    # stdin through the same checks as a file: a binary stream refused, cp1252 read as such (sys.stdin's own
    # decoding passed a DICOM slice as an empty report and put lone surrogates into the JSON)
    text = decode_report_bytes(sys.stdin.buffer.read()) if file == "-" else _read(file)
    dictionary = AbnormalityDictionary.default()
    if dictionary_path:
        dictionary = dictionary.merge(AbnormalityDictionary.load(dictionary_path))
    findings = parse_report(text, dictionary)
    if as_json:
        echo_json({"file": file, "dictionary_version": dictionary.version,
                   "findings": [f.to_dict() for f in findings]})
        return
    rows = [{"organ": f.organ, "finding": f.finding or "(organ)", "status": f.status.value,
             "evidence": text[f.span[0]:f.span[1]].replace("\n", " ")} for f in findings]
    print_table(rows, columns=["organ", "finding", "status", "evidence"])
