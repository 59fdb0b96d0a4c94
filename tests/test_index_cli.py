"""`ctglip ingest/search/similar/score/cohort/export/verify` through the real click group."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3

import pytest
from click.testing import CliRunner

from ctglip_sdk.cli.index_cmds import COMMANDS
from ctglip_sdk.cli.main import cli

from test_index_common import make_archive, tiny_model


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    archive = make_archive(base / "archive", n=4, seed=6)
    model_dir = base / "model"
    tiny_model().save_pretrained(model_dir)
    index = base / "idx"
    res = CliRunner().invoke(cli, ["ingest", str(archive), "--index", str(index), "--model", str(model_dir),
                                   "--workers", "1", "--json"])
    assert res.exit_code == 0, res.output
    return archive, index, model_dir, json.loads(res.stdout)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_commands_are_registered_documented_and_take_index_and_json():
    assert [c.name for c in COMMANDS] == ["ingest", "search", "similar", "score", "cohort", "export", "verify", "remove"]
    for cmd in COMMANDS:
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"--index", "--json"} <= opts and cmd.help
        assert run(cmd.name, "--help").exit_code == 0


def test_ingest_creates_then_reuses_the_recorded_model(env):
    archive, index, model_dir, report = env
    assert report["ok"] == 4 and report["organs_added"] == 20 and report["n_errors"] == 0
    again = run("ingest", archive, "--index", index, "--json")  # no --model: the index's own model
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == 4


def test_search_similar_and_filters(env, tmp_path):
    _, index, _, _ = env
    res = run("search", "low attenuation liver", "--index", index, "--organ", "liver", "--where", "age>=40",
              "-k", "3", "--json", "--montage", tmp_path / "hits.png")
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert len(hits) == 3 and {h["organ"] for h in hits} == {"liver"} and all(h["age"] >= 40 for h in hits)
    assert {"crop_id", "organ", "score", "study_uid", "series_uid", "patient", "bbox"} <= set(hits[0])
    assert (tmp_path / "hits.png").stat().st_size > 1000
    sim = run("similar", hits[0]["crop_id"], "--index", index, "-k", "2", "--json")
    assert sim.exit_code == 0 and len(json.loads(sim.stdout)) == 2
    table = run("search", "kidney", "--index", index, "--organ", "kidney", "-k", "2")
    assert table.exit_code == 0 and "kidney" in table.output and "crop_id" in table.output


def test_search_prints_how_the_text_was_read(env):
    """Notes go with the table, and to stderr under --json so that stdout stays one JSON document."""
    _, index, _, _ = env
    res = run("search", "hydronephrosiss", "--index", index, "-k", "2", "--json")
    assert res.exit_code == 0, res.output
    assert {h["organ"] for h in json.loads(res.stdout)} <= {"kidney_left", "kidney_right"}
    assert "(read as 'hydronephrosis')" in res.stderr
    # How the hits were ranked is kept under --json too: margins and cosine similarities are not comparable.
    assert "(ranked by the zero-shot margin of hydronephrosis)" in res.stderr
    table = run("search", "hydronephrosiss", "--index", index, "-k", "2")
    assert "(ranked by the zero-shot margin of hydronephrosis)" in table.output
    assert "(read as 'hydronephrosis')" in table.output


def test_user_errors_exit_1_with_one_line(env, tmp_path):
    archive, index, _, _ = env
    for args in (["search", "x", "--index", index, "--where", "ssn=1"],
                 ["search", "x", "--index", index, "--organ", "gizzard"],
                 ["similar", "999999", "--index", index],
                 ["search", "x", "--index", tmp_path / "nothing"]):
        res = run(*args)
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    fresh = run("ingest", archive, "--index", tmp_path / "new")  # default model not bundled (yet)
    if fresh.exit_code != 0:
        assert fresh.exit_code == 1 and "--model" in fresh.output
    assert run("search", "--index", index).exit_code == 2  # usage error


def test_export_verify_and_cohort(env, tmp_path):
    _, index, _, _ = env
    out = run("export", tmp_path / "organs.csv", "--index", index, "--what", "organs")
    assert out.exit_code == 0 and len((tmp_path / "organs.csv").read_text().splitlines()) == 21
    ver = run("verify", "--index", index, "--json")
    assert ver.exit_code == 0 and json.loads(ver.stdout)["ok"]
    (index / "vectors.faiss").unlink()
    bad = run("verify", "--index", index)
    assert bad.exit_code == 1 and "FAISS file is missing" in bad.output
    fixed = run("verify", "--index", index, "--repair", "--json")
    assert fixed.exit_code == 0 and json.loads(fixed.stdout)["repaired"]
    sc = run("score", "--index", index, "--finding", "__none__", "--prompt", "cystic=a cystic lesion", "--json")
    assert sc.exit_code == 1  # an unknown dictionary key is a user error
    sc = run("score", "--index", index, "--prompt", "cystic=a cystic lesion", "--json")
    if sc.exit_code == 0:  # needs the abnormality dictionary when no --finding is given
        assert json.loads(sc.stdout)["scored"] > 0
    sc = run("cohort", "--index", index, "--all-of", "a cystic lesion", "--threshold", "0", "--json",
             "--output", tmp_path / "cohort.csv")
    assert sc.exit_code == 0, sc.output
    body = json.loads(sc.stdout)
    assert body["n"] == len(body["members"]) >= 1 and (tmp_path / "cohort.csv").exists()
    assert "names no dictionary finding" in body["notes"][0]  # free text says so, in the JSON too
    typo = run("cohort", "--index", index, "--none-of", "renal_cysts", "--json")
    assert typo.exit_code == 1 and "did you mean renal_cyst" in typo.output


# -- search: filters in the question, montage paths ---------------------------------------------------------
def test_search_reads_filters_from_the_question_only_with_parse(env):
    """make_archive: study i has age 35 + 7i and sex "MF"[i % 2], so women over 40 are studies 1 and 3."""
    _, index, _, _ = env
    q = "liver lesion in women over 40"
    plain = run("search", q, "--index", index, "-k", "20", "--json")
    assert plain.exit_code == 0, plain.output
    assert {h["sex"] for h in json.loads(plain.stdout)} == {"F", "M"}  # nothing filtered ...
    assert "'women over 40'" in plain.stderr and "--parse" in plain.stderr  # ... and stderr says so
    assert '--where "sex=F" --where "age>=40"' in plain.stderr
    parsed = run("search", q, "--index", index, "-k", "20", "--json", "--parse")
    assert parsed.exit_code == 0, parsed.output
    hits = json.loads(parsed.stdout)
    assert len(hits) == 2 and {h["organ"] for h in hits} == {"liver"}
    assert all(h["sex"] == "F" and h["age"] >= 40 for h in hits)
    assert "parsed as text 'liver lesion'; organ liver; filters sex=F, age>=40" in parsed.stderr
    assert "--parse to read" not in parsed.stderr
    # Explicit options win over what the question says.
    explicit = run("search", q, "--index", index, "-k", "20", "--json", "--parse", "--where", "age>=50",
                   "--organ", "spleen")
    hits = json.loads(explicit.stdout)
    assert [(h["organ"], h["sex"], h["age"]) for h in hits] == [("spleen", "F", 56)]
    assert not run("search", "liver lesion", "--index", index, "-k", "2", "--json").stderr.count("--parse")
    only_filters = run("search", "women over 40", "--index", index, "--parse")
    assert only_filters.exit_code == 1 and "Traceback" not in only_filters.output


def test_bad_montage_path_is_one_line_before_searching(env, tmp_path):
    _, index, _, _ = env
    for path, words in ((tmp_path / "nodir" / "m.png", "does not exist"), (tmp_path / "m.txt", ".png")):
        res = run("search", "liver", "--index", index, "--montage", path, "--json")
        assert res.exit_code == 1 and words in res.stderr, res.output
        assert "Traceback" not in res.output and len(res.stderr.splitlines()) == 1
        assert words in json.loads(res.stdout)["error"]  # under --json the error is also the stdout document
        assert not path.exists()


def test_montage_failure_after_the_search_keeps_the_hits(env, tmp_path, monkeypatch):
    import ctglip_sdk.index.montage as montage

    def fail(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(montage, "save_montage", fail)
    _, index, _, _ = env
    res = run("search", "liver", "--index", index, "-k", "3", "--montage", tmp_path / "m.png", "--json")
    assert res.exit_code == 1 and len(json.loads(res.stdout)) == 3  # the hits are printed first
    assert "montage not saved (disk full)" in res.stderr and "Traceback" not in res.output


# -- cohort output: union of columns, header of an empty CSV --------------------------------------------------
def test_cohort_table_shows_every_members_evidence_and_empty_csv_has_a_header(env, tmp_path):
    import pandas as pd

    from ctglip_sdk.index import ArchiveIndex

    _, index, _, _ = env
    copy = tmp_path / "idx"
    shutil.copytree(index, copy)
    hits = json.loads(run("search", "liver", "--index", copy, "--organ", "liver", "-k", "20", "--json").stdout)
    first, second = sorted({h["patient"]: h["crop_id"] for h in hits}.items())[:2]
    with ArchiveIndex.open(copy) as idx:  # the first member (by pseudonym) lacks the second one's condition
        idx.insert_scores([(first[1], "find_a", 0.91), (second[1], "find_b", 0.87)])
    res = run("cohort", "--index", copy, "--any-of", "find_a", "--any-of", "find_b")
    assert res.exit_code == 0, res.output
    header, _, *lines = res.stdout.splitlines()
    assert "p:find_a" in header and "p:find_b" in header
    assert "0.87" in lines[1] and "0.91" in lines[0] and lines[-1] == "2 patient(s)"
    out = tmp_path / "none.csv"
    empty = run("cohort", "--index", copy, "--all-of", "find_a", "--any-of", "find_b", "--threshold", "0.99",
                "--output", out, "--json")
    assert empty.exit_code == 0 and json.loads(empty.stdout)["n"] == 0
    assert out.read_text().splitlines() == ["patient,studies,p:find_a,p:find_b"]
    assert pd.read_csv(out).empty
    study = tmp_path / "study.csv"
    run("cohort", "--index", copy, "--all-of", "find_b", "--level", "study", "--output", study)
    assert pd.read_csv(study).columns.tolist() == ["patient", "studies", "study_uid", "p:find_b"]


# -- ingest: exit status, options of a new index, interrupts ---------------------------------------------------
def test_ingest_exit_status_says_whether_series_failed_in_this_run(env, tmp_path):
    _, _, model_dir, _ = env
    archive = make_archive(tmp_path / "a", n=3, seed=8)
    (archive / "s001" / "seg.nii.gz").unlink()
    args = ["ingest", archive, "--index", tmp_path / "idx", "--model", model_dir, "--workers", "0"]
    res = run(*args, "--json")
    assert res.exit_code == 3, res.output
    body = json.loads(res.stdout)  # --json output is unchanged: one document on stdout
    assert body["ok"] == 2 and body["n_errors"] == 1
    # The failure is remembered and skipped while its files are unchanged: nothing failed in this run.
    assert run(*args, "--json").exit_code == 0
    again = run(*args, "--retry-errors")
    assert again.exit_code == 3 and "failed" in again.stderr and "1 failed" in again.stdout


def test_ingest_of_an_archive_without_studies_creates_no_index_and_says_why(env, tmp_path):
    """It used to create the index folder (index.sqlite, FAISS files) and exit 0 with a warning."""
    _, _, model_dir, _ = env
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "readme.txt").write_text("nothing to see\n")
    for archive in (f"{empty}/", str(junk)):  # the root as the user typed it, trailing slash included
        new = tmp_path / "idx"
        res = run("ingest", archive, "--index", new, "--model", model_dir, "--json")
        assert res.exit_code == 1, res.output  # a user error, like every other refused input
        assert not new.exists()  # no index folder, no index.sqlite, no FAISS file
        body = json.loads(res.stdout)  # --json: one parseable document on stdout, also on an error
        assert body["type"] == "InputError" and body["path"] == archive
        assert body["error"].startswith(f"{archive}: no studies found") and "docs/data.md" in body["error"]
        assert res.stderr.startswith(f"Error: {archive}: no studies found") and "Traceback" not in res.output
    plain = run("ingest", empty, "--index", tmp_path / "idx", "--model", model_dir)
    assert plain.exit_code == 1 and plain.stdout == "" and "no studies found" in plain.stderr
    # --allow-empty: a drop folder that may be empty is accepted; the (new) index records a run of 0 series.
    res = run("ingest", empty, "--index", tmp_path / "idx", "--model", model_dir, "--json", "--allow-empty")
    assert res.exit_code == 0 and json.loads(res.stdout)["seen"] == 0
    assert "warning: no studies found" in res.stderr and _runs(tmp_path / "idx") == [("ok", 1)]


def test_ingest_of_an_empty_archive_leaves_an_existing_index_untouched(env, tmp_path):
    archive, index, _, _ = env
    empty = tmp_path / "empty"
    empty.mkdir()

    def files():  # SQLite's -wal/-shm come and go with readers (as _runs): the run rows cover what SQL holds
        return {p.name: p.read_bytes() for p in index.rglob("*") if p.is_file() and p.suffix not in {
            ".sqlite-wal", ".sqlite-shm"}}

    before, runs = files(), _runs(index)
    res = run("ingest", empty, "--index", index, "--json")
    assert res.exit_code == 1 and json.loads(res.stdout)["path"] == str(empty)
    assert _runs(index) == runs and files() == before  # no run recorded, no FAISS or vector file rewritten
    again = run("ingest", archive, "--index", index, "--json")  # nothing new: not an error, every series seen
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == json.loads(again.stdout)["seen"] > 0


def test_ingest_warns_of_new_index_options_on_an_existing_index(env):
    archive, index, model_dir, _ = env
    res = run("ingest", archive, "--index", index, "--factory", "HNSW32", "--include-identifiers",
              "--table-prefix", "other_", "--model", "ctglip-tiny-synthetic", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ok"] == 0
    for opt in ("--factory HNSW32", "--include-identifiers", "--table-prefix other_",
                "--model ctglip-tiny-synthetic"):
        assert f"warning: {opt} is ignored" in res.stderr, opt
    assert "create(" not in res.output
    # The index's own model (by folder or name) and its own settings are no reason to warn.
    same = run("ingest", archive, "--index", index, "--model", model_dir, "--table-prefix", "ctglip_", "--json")
    assert same.exit_code == 0 and "warning" not in same.stderr


def _runs(index):
    with sqlite3.connect(index / "index.sqlite") as conn:
        return conn.execute("SELECT status, finished_at IS NOT NULL FROM ctglip_ingest_runs ORDER BY id").fetchall()


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupted_ingest_exits_128_plus_the_signal_and_records_the_run(env, tmp_path, monkeypatch, sig, code):
    import ctglip_sdk.index.ingest as ingest_mod

    _, _, model_dir, _ = env
    archive = make_archive(tmp_path / "a", n=3, seed=9)
    real = ingest_mod._encode

    def encode_then_signal(*args, **kwargs):
        out = real(*args, **kwargs)
        os.kill(os.getpid(), sig)  # as from Ctrl-C or an orchestrator, while the run is writing
        return out

    monkeypatch.setattr(ingest_mod, "_encode", encode_then_signal)
    args = ["ingest", archive, "--index", tmp_path / "idx", "--model", model_dir, "--workers", "0",
            "--batch-size", "1"]
    before = signal.getsignal(signal.SIGTERM)
    res = run(*args)
    assert res.exit_code == code, res.output
    assert len(res.stderr.splitlines()) == 1 and "run the same command again" in res.stderr
    assert "Traceback" not in res.output and "Aborted" not in res.output
    assert _runs(tmp_path / "idx") == [("interrupted", 1)]  # not 'running' forever
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the command's only
    monkeypatch.undo()
    again = run(*args, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["ok"] == 3
    assert _runs(tmp_path / "idx") == [("interrupted", 1), ("ok", 1)]


def test_verify_json_reports_an_index_that_cannot_open(env, tmp_path):
    """verify exists to report problems: under --json they come as JSON (exit 1), not as an error line only."""
    import shutil

    _, index, _, _ = env
    broken = tmp_path / "broken"
    shutil.copytree(index, broken)
    vectors = broken / "vectors.f16"
    with open(vectors, "r+b") as fh:
        fh.truncate(vectors.stat().st_size // 2)  # lose stored vectors: open() refuses and names the fix
    res = run("verify", "--index", broken, "--json")
    assert res.exit_code == 1
    body = json.loads(res.stdout)
    assert body["ok"] is False and "--repair" in body["problems"][0]
    fixed = run("verify", "--index", broken, "--repair", "--json")
    assert fixed.exit_code == 0 and any(r.startswith("removed") for r in json.loads(fixed.stdout)["repaired"])


def test_a_wrong_archive_path_and_an_unwritable_cohort_csv_are_json_user_errors(env, tmp_path):
    """Both were outside the --json contract: click's usage error (exit 2, text only) and a raw pandas OSError
    traceback (review, 2026-12-06)."""
    _, index, _, _ = env
    res = run("ingest", tmp_path / "no-such-archive", "--index", tmp_path / "new-idx", "--json")
    assert res.exit_code == 1 and json.loads(res.stdout)["type"] == "InputError"
    assert "no-such-archive" in json.loads(res.stdout)["error"] and not (tmp_path / "new-idx").exists()
    res = run("cohort", "--index", index, "--all-of", "renal_cyst", "--output", tmp_path / "nodir" / "c.csv",
              "--json")
    assert res.exit_code == 1 and "cannot write the cohort CSV" in json.loads(res.stdout)["error"]
    assert "Traceback" not in res.output
