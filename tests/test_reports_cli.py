"""`ctglip parse-report`: table and JSON output, custom dictionaries, errors as exit codes."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ctglip_sdk.cli.main import cli
from ctglip_sdk.cli.reports import parse_report_command

REPORT = "KIDNEYS:\n- Left renal cyst (2.3 cm).\n- No hydronephrosis.\nSpleen: Normal.\n"


def test_table_output(tmp_path):
    path = tmp_path / "report.txt"
    path.write_text(REPORT)
    res = CliRunner().invoke(parse_report_command, [str(path)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["organ", "finding", "status", "evidence"]
    assert lines[2].split()[:3] == ["kidney_left", "renal_cyst", "present"]
    assert lines[3].split()[:3] == ["kidney", "hydronephrosis", "absent"]
    assert lines[4].split()[:3] == ["spleen", "(organ)", "absent"]
    col = lines[0].index("status")
    assert all(line[col - 2:col] == "  " and line[col] != " " for line in lines[2:])  # columns are aligned


def test_json_output_via_group(tmp_path):
    path = tmp_path / "report.txt"
    path.write_text(REPORT)
    res = CliRunner().invoke(cli, ["parse-report", str(path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["dictionary_version"]
    assert data["findings"][0] == {"organ": "kidney_left", "finding": "renal_cyst", "status": "present",
                                   "sentence": "Left renal cyst (2.3 cm).",
                                   "span": [REPORT.index("cyst"), REPORT.index("cyst") + 4]}
    assert [f["status"] for f in data["findings"]] == ["present", "absent", "absent"]


def test_stdin_and_custom_dictionary(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"version": "local-1", "findings": {"splenic_cyst": {
        "organ": "spleen", "name": "splenic cyst", "descriptors": ["cyst"], "positives": ["splenic cyst"],
        "negatives": ["no splenic cyst"]}}}))
    res = CliRunner().invoke(parse_report_command, ["-", "--json", "--dictionary", str(mine)],
                             input="Spleen: 1 cm cyst.")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["dictionary_version"].endswith("+local-1")
    assert [(f["organ"], f["finding"]) for f in data["findings"]] == [("spleen", "splenic_cyst")]


def test_user_errors_exit_1(tmp_path):
    res = CliRunner().invoke(cli, ["parse-report", str(tmp_path / "missing.txt")])
    assert res.exit_code == 1 and "missing.txt" in res.output and "Traceback" not in res.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1", "findings": {"x": {"organ": "liver"}}}')
    report = tmp_path / "r.txt"
    report.write_text(REPORT)
    res = CliRunner().invoke(cli, ["parse-report", str(report), "--dictionary", str(bad)])
    assert res.exit_code == 1 and "findings.x.name" in res.output
    res = CliRunner().invoke(cli, ["parse-report"])
    assert res.exit_code == 2
