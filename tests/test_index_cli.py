"""`ctglip ingest/search/similar/score/cohort/export/verify` through the real click group."""

from __future__ import annotations

import json

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
    return archive, index, model_dir, json.loads(res.output)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_commands_are_registered_documented_and_take_index_and_json():
    assert [c.name for c in COMMANDS] == ["ingest", "search", "similar", "score", "cohort", "export", "verify"]
    for cmd in COMMANDS:
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"--index", "--json"} <= opts and cmd.help
        assert run(cmd.name, "--help").exit_code == 0


def test_ingest_creates_then_reuses_the_recorded_model(env):
    archive, index, model_dir, report = env
    assert report["ok"] == 4 and report["organs_added"] == 20 and report["n_errors"] == 0
    again = run("ingest", archive, "--index", index, "--json")  # no --model: the index's own model
    assert again.exit_code == 0 and json.loads(again.output)["skipped"] == 4


def test_search_similar_and_filters(env, tmp_path):
    _, index, _, _ = env
    res = run("search", "low attenuation liver", "--index", index, "--organ", "liver", "--where", "age>=40",
              "-k", "3", "--json", "--montage", tmp_path / "hits.png")
    assert res.exit_code == 0, res.output
    hits = json.loads(res.output)
    assert len(hits) == 3 and {h["organ"] for h in hits} == {"liver"} and all(h["age"] >= 40 for h in hits)
    assert {"crop_id", "organ", "score", "study_uid", "series_uid", "patient", "bbox"} <= set(hits[0])
    assert (tmp_path / "hits.png").stat().st_size > 1000
    sim = run("similar", hits[0]["crop_id"], "--index", index, "-k", "2", "--json")
    assert sim.exit_code == 0 and len(json.loads(sim.output)) == 2
    table = run("search", "kidney", "--index", index, "--organ", "kidney", "-k", "2")
    assert table.exit_code == 0 and "kidney" in table.output and "crop_id" in table.output


def test_search_prints_how_the_text_was_read(env):
    """Notes go with the table, and to stderr under --json so that stdout stays one JSON document."""
    _, index, _, _ = env
    res = run("search", "hydronephrosiss", "--index", index, "-k", "2", "--json")
    assert res.exit_code == 0, res.output
    assert {h["organ"] for h in json.loads(res.stdout)} <= {"kidney_left", "kidney_right"}
    assert "(read as 'hydronephrosis')" in res.stderr
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
    assert ver.exit_code == 0 and json.loads(ver.output)["ok"]
    (index / "vectors.faiss").unlink()
    bad = run("verify", "--index", index)
    assert bad.exit_code == 1 and "FAISS file is missing" in bad.output
    fixed = run("verify", "--index", index, "--repair", "--json")
    assert fixed.exit_code == 0 and json.loads(fixed.output)["repaired"]
    sc = run("score", "--index", index, "--finding", "__none__", "--prompt", "cystic=a cystic lesion", "--json")
    assert sc.exit_code == 1  # an unknown dictionary key is a user error
    sc = run("score", "--index", index, "--prompt", "cystic=a cystic lesion", "--json")
    if sc.exit_code == 0:  # needs the abnormality dictionary when no --finding is given
        assert json.loads(sc.output)["scored"] > 0
    sc = run("cohort", "--index", index, "--all-of", "a cystic lesion", "--threshold", "0", "--json",
             "--output", tmp_path / "cohort.csv")
    assert sc.exit_code == 0, sc.output
    body = json.loads(sc.output)
    assert body["n"] == len(body["members"]) >= 1 and (tmp_path / "cohort.csv").exists()
