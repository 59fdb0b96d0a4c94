"""CSV exports and cohort CSVs write a text cell that a spreadsheet would run as a formula with a leading ' (OWASP
"CSV injection"); escape_formulas=False / --raw-csv writes it as stored; Parquet and JSONL are unchanged."""

from __future__ import annotations

import csv
import json

from click.testing import CliRunner

from ctglip_sdk.cli.main import cli
from ctglip_sdk.index import ArchiveIndex
from ctglip_sdk.index.export import csv_safe
from test_index_common import make_archive, read_manifest, tiny_model, write_manifest

EVIL = "=HYPERLINK(\"http://x\",\"y\")"


def test_formula_cells_are_escaped_in_csv_only(tmp_path):
    root = make_archive(tmp_path / "arch", n=2)
    rows = read_manifest(root)
    rows[0]["contrast"] = EVIL  # a manifest or DICOM text field an attacker controls
    write_manifest(root, rows)
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    try:
        idx.ingest(root, progress=False)
        safe = list(csv.DictReader(open(idx.export(tmp_path / "organs.csv", what="organs"))))
        raw = list(csv.DictReader(open(idx.export(tmp_path / "raw.csv", what="organs", escape_formulas=False))))
        lines = [json.loads(x) for x in open(idx.export(tmp_path / "organs.jsonl", what="organs"))]
    finally:
        idx.close()
    evil = EVIL
    assert {r["contrast"] for r in safe} >= {"'" + evil} and evil not in {r["contrast"] for r in safe}
    assert evil in {r["contrast"] for r in raw}
    assert evil in {r["contrast"] for r in lines}  # JSON lines are for programs: as stored
    # numbers (negative ones included) and ordinary text are untouched
    assert [r["organ"] for r in safe] == [r["organ"] for r in raw] and csv_safe(-1.5) == -1.5

    res = CliRunner().invoke(cli, ["export", str(tmp_path / "cli.csv"), "--index", str(tmp_path / "idx"),
                                   "--what", "organs", "--raw-csv"])
    assert res.exit_code == 0, res.output
    assert evil in {r["contrast"] for r in csv.DictReader(open(tmp_path / "cli.csv"))}
