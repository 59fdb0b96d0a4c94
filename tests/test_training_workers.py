"""Worker settings: read-ahead threads give the same vectors, and cache_workers drives the cache and calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ctglip_sdk as cg
import ctglip_sdk.training.api as train_api
import ctglip_sdk.training.calibration as calibration
from ctglip_sdk.errors import ConfigError, InputError
from ctglip_sdk.training import TrainConfig, train
from ctglip_sdk.training.evaluation import encode_split, evaluate, read_splits
from test_model_encode import TINY


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    cg.synth.generate_archive(root, n_patients=6, seed=31, preset="small", fmt="nifti", progress=False,
                              overwrite=True)
    return root


@pytest.fixture(scope="module")
def model():
    return cg.create("ctglip-tiny", overrides=TINY, seed=0).eval()


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_read_ahead_threads_give_the_same_vectors_in_the_same_order(archive, model, workers):
    records = read_splits(archive, "all")
    plain = encode_split(model, records)
    ahead = encode_split(model, records, workers=workers)
    assert ahead.names == plain.names and np.array_equal(ahead.study, plain.study)
    assert np.array_equal(ahead.vectors, plain.vectors)
    assert [r.study_uid for r in ahead.records] == [r.study_uid for r in records]
    # Every study is there, once, with the organs that encode_organs gives it.
    one = model.encode_organs(cg.load_volume(records[-1].image),
                              cg.load_segmentation(records[-1].mask, like=cg.load_volume(records[-1].image)))
    last = ahead.study == len(records) - 1
    assert [ahead.names[i] for i in np.flatnonzero(last)] == one.names
    assert np.array_equal(ahead.vectors[last], one.vectors)


def test_evaluate_with_workers_matches_without(archive, model):
    a = evaluate(model, archive, split="all", val_split=None)
    b = evaluate(model, archive, split="all", val_split=None, workers=2)
    assert a["auc_mean"] == b["auc_mean"] and a["organ_top1"] == b["organ_top1"]
    assert a["per_finding"] == b["per_finding"]


def test_negative_workers_are_refused(archive, model):
    with pytest.raises(InputError, match="workers"):
        encode_split(model, read_splits(archive, "all"), workers=-1)
    with pytest.raises(ConfigError, match="cache_workers"):
        TrainConfig(cache_workers=-1)
    with pytest.raises(ConfigError, match="cache_workers"):
        TrainConfig().with_overrides(["cache_workers=-2"])


def test_loader_workers_fall_back_to_num_workers():
    assert TrainConfig(num_workers=3).loader_workers == 3
    assert TrainConfig(num_workers=3, cache_workers=0).loader_workers == 0
    assert TrainConfig(cache_workers=2).loader_workers == 2 and TrainConfig(cache_workers=2).num_workers == 0


def test_train_builds_the_cache_and_calibrates_with_cache_workers(archive, tmp_path, monkeypatch):
    seen = {}
    real_build, real_encode = train_api.build_cache, calibration.encode_split

    def build(records, cache, workers=0, progress=False):
        seen["cache"] = workers
        return real_build(records, cache, workers=workers, progress=progress)

    def encode(model, records, progress=False, workers=0):
        seen["calibration"] = workers
        return real_encode(model, records, progress, workers)

    monkeypatch.setattr(train_api, "build_cache", build)
    monkeypatch.setattr(calibration, "encode_split", encode)
    spec = tmp_path / "model.json"
    spec.write_text(json.dumps({"name": "tiny-workers", **TINY}))
    cfg = TrainConfig(model=str(spec), max_steps=1, batch_size=2, warmup_steps=1, organs_per_study=12,
                      train_split="all", calibration_archive=str(archive), cache_workers=2, num_workers=0,
                      cache_dir=str(tmp_path / "cache"), checkpoint_every=1)
    summary = train(archive, tmp_path / "run", cfg, progress=False)
    assert seen == {"cache": 2, "calibration": 2}
    assert summary["cache_built"] == 6 and summary["steps"] == 1
    assert summary["calibration"]["n_studies"] == 6
    # The run says where it ran and what memory each stage reached (high-water marks: never falling).
    peaks = summary["peak_memory"]["stages_mb"]
    assert list(peaks) == ["cache", "steps", "calibration"]  # TINY has no stats columns: no stats_norm stage
    values = list(peaks.values())
    assert all(v > 0 for v in values) and all(b >= a - 2 for a, b in zip(values, values[1:]))  # MiB of jitter
    assert summary["peak_memory"]["workers_mb"] > 0  # the two cache-building processes have finished
    assert summary["host"]["cpu"] and summary["host"]["torch"]


def test_eval_and_calibrate_commands_take_workers(archive, model, tmp_path):
    from click.testing import CliRunner

    from ctglip_sdk.cli.main import cli

    model.save_pretrained(tmp_path / "m")
    base = ["eval", "--model", str(tmp_path / "m"), "--archive", str(archive), "--split", "all", "--val-split",
            "all", "--val-archive", str(archive), "--json"]
    outs = []
    for extra in ([], ["--workers", "2"]):
        res = CliRunner().invoke(cli, base + extra)
        assert res.exit_code == 0, res.output
        outs.append(json.loads(res.output))
    assert outs[0]["per_finding"] == outs[1]["per_finding"] and outs[0]["retrieval"] == outs[1]["retrieval"]
    res = CliRunner().invoke(cli, ["eval", "--model", str(tmp_path / "m"), "--archive", str(archive),
                                   "--workers", "-1"])
    assert res.exit_code != 0 and "--workers" in res.output
    res = CliRunner().invoke(cli, ["calibrate", "--model", str(tmp_path / "m"), "--archive", str(archive), "--split",
                                   "all", "--labels", "truth", "--min-positives", "1", "--workers", "2",
                                   "--out", str(tmp_path / "cal"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["n_studies"] == 6 and (tmp_path / "cal" / "config.json").is_file()
