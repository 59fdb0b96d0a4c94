"""`ctglip demo` end to end on a few small-preset patients: every answer is judged against the truth files."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ctglip_sdk.cli.main import cli
from ctglip_sdk.index.demo import DEFAULT_QUERIES, load_truth


def test_demo_runs_offline_and_judges_every_hit(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "--out", str(out), "--patients", "5", "--preset", "small", "-k", "3",
                                   "--no-montage", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    truth = load_truth(out / "archive")
    assert data["model"] == "ctglip-tiny-synthetic" and len(data["searches"]) == len(DEFAULT_QUERIES)
    for s in data["searches"]:
        assert 0 < len(s["hits"]) <= 3 and s["candidates"] >= len(s["hits"])
        for h in s["hits"]:  # "correct" is exactly what truth.jsonl says about that organ of that study
            assert h["correct"] == ((h["organ"], s["finding"]) in truth[h["study_uid"]])
        right = sum(h["correct"] for h in s["hits"])
        assert s["precision"] == right / len(s["hits"])
        assert 1 <= s["relevant"] == len(s["relevant_ranks"]) <= s["candidates"]  # one study is planted per question
        assert sum(1 for r in s["relevant_ranks"] if r <= len(s["hits"])) == right
        assert s["recall"] is None or s["recall"] == right / min(len(s["hits"]), s["relevant"])
    c = data["cohort"]
    assert c["true_positives"] <= min(c["found"], c["expected"])
    report = (out / "demo-report.md").read_text()
    assert "synthetic" in report.lower() and all(q.question in report for q in DEFAULT_QUERIES)


def test_a_reused_demo_archive_made_with_other_settings_is_warned_about(tmp_path, caplog):
    import json

    from ctglip_sdk.index.demo import _warn_if_other_archive

    (tmp_path / "synth.json").write_text(json.dumps({"seed": 4711, "n_patients": 4, "preset": {"name": "default"}}))
    _warn_if_other_archive(tmp_path, 4, 4711, "default")
    assert "reusing the archive" not in caplog.text
    _warn_if_other_archive(tmp_path, 5, 999, "default")
    assert "seed 4711 (asked 999), n_patients 4 (asked 5)" in caplog.text
