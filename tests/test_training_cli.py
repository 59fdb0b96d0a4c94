"""`ctglip train` / `ctglip eval` end to end on a small synthetic archive, and their error paths."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import ctglip_sdk as cg
from ctglip_sdk.cli.main import cli

EVAL_KEYS = {"organ_top1", "auc_mean", "auc_min", "f1_mean", "f1_mean_model_thresholds", "per_finding", "retrieval",
             "model", "archive_seed"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch")
    cg.synth.generate_archive(root, n_patients=6, seed=11, preset="small", fmt="nifti", progress=False,
                              overwrite=True)
    return root


def _train(archive, out, cache, *extra):
    args = ["train", "--archive", str(archive), "--model", "ctglip-tiny", "--out", str(out), "--json",
            "--no-progress", "--set", "max_steps=2", "--set", "batch_size=2", "--set", "checkpoint_every=1",
            "--set", f"cache_dir={cache}", "--set", "organs_per_study=20", "--set", "warmup_steps=1", *extra]
    return CliRunner().invoke(cli, args)


def test_unknown_option_and_missing_archive_are_user_errors(tmp_path, archive):
    res = _train(archive, tmp_path / "o", tmp_path / "c", "--set", "learning_rate=1")
    assert res.exit_code == 1 and "learning_rate" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["train", "--archive", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    res = CliRunner().invoke(cli, ["eval", "--model", str(tmp_path / "no-model"), "--archive", str(archive)])
    assert res.exit_code == 1 and "no-model" in res.output


def test_eval_val_split_without_studies_is_an_error_like_split(archive):
    """A misspelt --val-split used to leave every finding at threshold 0.5 with exit 0."""
    for flag in ("--split", "--val-split"):
        res = CliRunner().invoke(cli, ["eval", "--model", "ctglip-tiny-synthetic", "--archive", str(archive),
                                       flag, "nosuch", "--json"])
        assert res.exit_code == 1 and "no studies in" in res.stderr and "'nosuch'" in res.stderr, res.output
        assert json.loads(res.stdout)["type"] == "InputError" and "Traceback" not in res.output


def test_eval_val_split_none_keeps_the_default_thresholds(archive):
    res = CliRunner().invoke(cli, ["eval", "--model", "ctglip-tiny-synthetic", "--archive", str(archive), "--split",
                                   "test", "--val-split", "none", "--json"])
    assert res.exit_code == 0, res.output
    assert {v["threshold_from"] for v in json.loads(res.stdout)["per_finding"].values()} == {"default"}


def test_calibration_archive_is_checked_before_training_then_used(tmp_path, archive, caplog):
    res = _train(archive, tmp_path / "o", tmp_path / "c", "--set", f"calibration_archive={tmp_path / 'nowhere'}")
    assert res.exit_code == 1 and "nowhere" in res.output and "manifest.csv" in res.output
    assert not (tmp_path / "o" / "checkpoints").exists() and not (tmp_path / "o" / "model").exists()
    # Thresholds come from every study of the calibration archive, not from the training archive's val split.
    res = _train(archive, tmp_path / "run", tmp_path / "c", "--set", "max_steps=1",
                 "--set", f"calibration_archive={archive}")
    assert res.exit_code == 0, res.output
    cal = json.loads(res.output)["calibration"]
    assert cal["split"] == "all" and cal["n_studies"] == 6 and cal["archive"] == str(archive)
    assert cg.load(tmp_path / "run" / "model").calibration == cal["offsets"]
    # Here the calibration archive is the training archive itself, which the run says.
    assert "calibration_archive is the training archive" in caplog.text


def test_train_split_all_reads_every_study_and_warns_of_overlap_with_val(tmp_path, archive, caplog):
    res = _train(archive, tmp_path / "o", tmp_path / "c", "--set", "max_steps=1", "--set", "train_split=all")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_train"] == 6
    # Calibrating on the val split of the same archive would choose thresholds on trained-on studies.
    assert "overlaps val_split" in caplog.text
    res = _train(archive, tmp_path / "o2", tmp_path / "c", "--set", "max_steps=1", "--set", "train_split=nosuch")
    assert res.exit_code == 1 and "nosuch" in res.output


def test_channels_last_gives_the_same_loss_and_a_loadable_model(tmp_path, archive):
    losses = []
    for flag in ("false", "true"):
        res = _train(archive, tmp_path / flag, tmp_path / "c", "--set", "max_steps=1", "--set", "calibrate=false",
                     "--set", f"channels_last={flag}")
        assert res.exit_code == 0, res.output
        losses.append(json.loads(res.output)["last_loss"])
    # Step 1's loss is computed before any update: only the memory layout differs, not the maths.
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    # The saved weights are plain row-major tensors: a model trained this way loads like any other.
    assert all(p.is_contiguous() for p in cg.load(tmp_path / "true" / "model").parameters())


@pytest.mark.slow
def test_train_resume_and_eval_end_to_end(tmp_path, archive):
    out, cache = tmp_path / "run", tmp_path / "cache"
    res = _train(archive, out, cache, "--set", "save_name=tiny-test")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["steps"] == 2 and summary["cache_built"] >= 1 and summary["objective"] == "ctglip"
    model = cg.load(out / "model")
    assert model.name == "tiny-test" and summary["model"] == "tiny-test"
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and {"organ_text", "abnormality", "identity"} <= set(log[-1])

    # Resume to 3 steps: continues from step 2, reuses the cache.
    res = _train(archive, out, cache, "--set", "max_steps=3", "--set", "save_name=tiny-test", "--resume")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["resumed_from"] == 2 and summary["steps"] == 3 and summary["cache_built"] == 0

    res = CliRunner().invoke(cli, ["eval", "--model", str(out / "model"), "--archive", str(archive), "--split",
                                   "test", "--out", str(tmp_path / "eval"), "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output)
    assert EVAL_KEYS <= set(metrics) and set(metrics["retrieval"]) >= {"r@1", "r@5", "r@10", "map"}
    assert metrics["archive_seed"] == 11 and metrics["model"] == "tiny-test"
    assert 0.0 <= metrics["organ_top1"] <= 1.0
    for v in metrics["per_finding"].values():
        assert set(v) >= {"auc", "f1", "n_pos", "n_neg", "f1_at_model_threshold"}
    for name in ("metrics.json", "results.md", "roc.png"):
        assert (tmp_path / "eval" / name).is_file()
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n_studies"] == metrics["n_studies"]
    # Rewritten without curves (no finding with both classes), the folder keeps no earlier run's roc.png.
    from ctglip_sdk.training.evaluation import write_reports

    write_reports(metrics, tmp_path / "eval", {})
    assert not (tmp_path / "eval" / "roc.png").exists() and (tmp_path / "eval" / "results.md").is_file()

    # A second run into the same folder without --resume is refused (it mixed the two runs' logs and
    # checkpoints); the run and its files are untouched.
    before = (out / "metrics.jsonl").read_text()
    res = _train(archive, out, cache, "--set", "save_name=tiny-test")
    assert res.exit_code == 1 and "holds a training run" in res.output and "--resume" in res.output
    assert "\"error\"" in res.output  # still a JSON error under --json
    assert (out / "metrics.jsonl").read_text() == before
    # A truncated checkpoint file is a CheckpointError naming it, not a raw safetensors error.
    newest = sorted((out / "checkpoints").iterdir())[-1] / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    res = _train(archive, out, cache, "--set", "max_steps=4", "--set", "save_name=tiny-test", "--resume")
    assert res.exit_code == 1 and "model.safetensors" in res.output and "unreadable checkpoint" in res.output
    assert "Traceback" not in res.output


def test_device_and_seed_are_checked_before_anything_is_written(tmp_path, archive):
    import torch

    for opt, word in (("device=gpu", "expected auto, cpu, cuda or cuda:N"), ("seed=-5", "seed=-5: must be >= 0")):
        res = _train(archive, tmp_path / "o", tmp_path / "c", "--set", opt)
        assert res.exit_code == 1 and word in res.output, res.output
        assert not (tmp_path / "o" / "model_init").exists()
    if not torch.cuda.is_available():
        res = _train(archive, tmp_path / "o", tmp_path / "c", "--set", "device=cuda")
        assert res.exit_code == 1 and "no CUDA device" in res.output and "Traceback" not in res.output
        with pytest.raises(cg.ConfigError, match="no CUDA device"):
            cg.load("ctglip-tiny-synthetic", device="cuda")
    with pytest.raises(cg.ConfigError, match="not a torch device"):
        cg.load("ctglip-tiny-synthetic", device="gpu")
    (tmp_path / "afile").write_text("x")
    res = _train(archive, tmp_path / "o", tmp_path / "c2", "--set", f"cache_dir={tmp_path / 'afile'}")
    assert res.exit_code == 1 and "is a file, not a folder" in res.output


def test_a_model_config_file_error_names_the_file(tmp_path, archive):
    bad = tmp_path / "arch.json"
    bad.write_text(json.dumps({"name": "x", "vision": {"chanels": [8]}}))
    res = CliRunner().invoke(cli, ["train", "--archive", str(archive), "--model", str(bad), "--out",
                                   str(tmp_path / "o"), "--json", "--no-progress", "--set", "max_steps=1",
                                   "--set", f"cache_dir={tmp_path / 'c'}"])
    assert res.exit_code == 1 and "chanels" in res.output and str(bad) in res.output, res.output


def test_eval_with_truth_labels_refuses_a_manifest_whose_studies_truth_does_not_know(tmp_path, archive):
    """`ctglip manifest --force` on a NIfTI archive keys studies by path: eval then matched no truth.jsonl row and
    printed auc_mean None without a word (review, 2026-12-06)."""
    import csv
    import shutil

    root = tmp_path / "a"
    shutil.copytree(archive, root)
    with open(root / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["study_uid"] = "path:" + r["image"]
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = CliRunner().invoke(cli, ["eval", "--model", "ctglip-tiny-synthetic", "--archive", str(root), "--split",
                                   "all", "--val-split", "none", "--labels", "truth", "--json"])
    assert res.exit_code == 1 and "has an entry in truth.jsonl" in res.output, res.output


def test_under_torchrun_only_rank_0_prints_the_summary(tmp_path, monkeypatch):
    import ctglip_sdk.training as tr

    monkeypatch.setattr(tr, "train", lambda *a, **k: {"steps": 2, "rank_summary": True})
    (tmp_path / "a").mkdir()
    args = ["train", "--archive", str(tmp_path / "a"), "--out", str(tmp_path / "o"), "--json"]
    outs = {rank: CliRunner().invoke(cli, args, env={"RANK": rank, "WORLD_SIZE": "2"}) for rank in ("0", "1")}
    assert all(r.exit_code == 0 for r in outs.values()), [r.output for r in outs.values()]
    assert json.loads(outs["0"].output) == {"steps": 2, "rank_summary": True}
    assert outs["1"].output == ""  # every rank printed its summary: two JSON documents on stdout
    # A RANK without a distributed run (WORLD_SIZE unset or 1) is a single process: it prints.
    alone = CliRunner().invoke(cli, args, env={"RANK": "1", "WORLD_SIZE": "1"})
    assert json.loads(alone.output)["steps"] == 2

