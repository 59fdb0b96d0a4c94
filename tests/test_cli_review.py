"""CLI behaviour a review found wrong (2026-12-07): JSON on stdout for every error under --json, no tracebacks,
binary reports refused, and an index kept out of other folders."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import ctglip_sdk as cg
from ctglip_sdk.cli.main import cli


def run(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], **kw)


def _json_error(res) -> dict:
    doc = json.loads(res.stdout)
    assert "error" in doc and "Traceback" not in res.output
    return doc


def test_a_missing_archive_folder_gives_json_under_json(tmp_path):
    res = run("train", "--archive", tmp_path / "nope", "--out", tmp_path / "o", "--json")
    assert res.exit_code == 2 and "nope" in _json_error(res)["error"]  # stdout was empty


def test_remove_under_json_asks_for_yes_instead_of_prompting(tmp_path):
    res = run("remove", "--index", tmp_path / "idx", "--series", "1.2.3", "--json", input="")
    assert res.exit_code == 1 and "--yes" in _json_error(res)["error"]  # was "Aborted!" and nothing on stdout


@pytest.mark.parametrize("value", ['{"renal_stone": "abc"}', '{"renal_stone": null}', "renal_stone=x"])
def test_a_bad_prevalence_is_a_one_line_error(tmp_path, value):
    res = run("synth", tmp_path / "s", "--patients", 1, "--preset", "small", "--json", "--prevalence", value)
    assert res.exit_code == 1 and "--prevalence" in _json_error(res)["error"]  # was a traceback
    assert not (tmp_path / "s").exists()


def test_parse_report_refuses_a_binary_file(tmp_path):
    binary = tmp_path / "IM0001.dcm"
    binary.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    res = run("parse-report", binary, "--json")
    assert res.exit_code == 1 and "NUL bytes" in _json_error(res)["error"]  # was exit 0, "findings": []
    text = tmp_path / "r.txt"
    text.write_text("LIVER: Hepatic steatosis.\n")
    ok = run("parse-report", text, "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["findings"]


def test_an_index_is_not_made_in_a_foreign_folder_nor_inside_the_archive(tmp_path):
    from ctglip_sdk.errors import ConfigError, IndexStateError
    from ctglip_sdk.index import ArchiveIndex

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    model = cg.create("ctglip-tiny", seed=0)
    with pytest.raises(IndexStateError, match="not empty and holds no index"):
        ArchiveIndex.create(busy, model=model)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    archive = tmp_path / "arch"
    cg.synth.generate_archive(archive, n_patients=1, seed=2, preset="small", progress=False)
    idx = ArchiveIndex.create(archive / "idx", model=model)
    with pytest.raises(ConfigError, match="lies inside the archive"):
        idx.ingest(archive)


def test_a_refused_training_run_leaves_no_out_folder(tmp_path):
    archive = tmp_path / "a"
    cg.synth.generate_archive(archive, n_patients=1, seed=2, preset="small", progress=False)
    res = run("train", "--archive", archive, "--out", tmp_path / "tr7", "--model", "nosuch", "--json")
    assert res.exit_code == 1 and "error" in json.loads(res.stdout)
    assert not (tmp_path / "tr7").exists()  # was left behind, empty
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "manifest.csv").write_text("study_uid,image,mask,report,split\n")
    res = run("train", "--archive", tmp_path / "empty", "--out", tmp_path / "tr8", "--json")
    assert res.exit_code == 1 and not (tmp_path / "tr8").exists()
