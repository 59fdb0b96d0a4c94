"""Per-finding calibration: offsets chosen on held-out studies move each F1-best threshold to probability 0.5."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import ctglip_sdk as cg
from ctglip_sdk.cli.main import cli
from ctglip_sdk.errors import CheckpointError
from ctglip_sdk.model.zeroshot import ZeroShotClassifier
from ctglip_sdk.training import calibrate
from ctglip_sdk.training.evaluation import encode_split, read_splits
from ctglip_sdk.training.metrics import f1_score
from test_model_encode import TINY


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    cg.synth.generate_archive(root, n_patients=10, seed=23, preset="small", fmt="nifti", progress=False,
                              overwrite=True)
    return root


@pytest.fixture(scope="module")
def model():
    return cg.create("ctglip-tiny", overrides=TINY, seed=0)


def test_offsets_put_each_f1_best_threshold_at_one_half(archive, model):
    report = calibrate(model, archive, "all", labels="truth", min_positives=1)
    assert report["n_studies"] == 10 and report["offsets"] and model.calibration == report["offsets"]
    emb = encode_split(model, read_splits(archive, "all"))
    raw = ZeroShotClassifier(model, calibrated=False).detect_arrays(emb.names, emb.vectors)
    cal = ZeroShotClassifier(model).detect_arrays(emb.names, emb.vectors)
    assert raw[1] == cal[1] and np.array_equal(raw[0], cal[0])
    keys = np.asarray(cal[1])
    truth = {(f["organ"], f["finding"], rec.study_uid) for rec in emb.records
             for f in cg.training.data.read_truth(archive).get(rec.study_uid, [])}
    labels = np.array([(emb.names[r], k, emb.records[emb.study[r]].study_uid) in truth
                       for r, k in zip(cal[0].tolist(), cal[1])])
    for key, entry in report["per_finding"].items():
        sel = keys == key
        if key in report["offsets"]:
            # The decision at 0.5 of the calibrated classifier is the F1-best decision chosen on this split.
            assert f1_score(cal[2][sel], labels[sel], 0.5) == pytest.approx(entry["f1"], abs=1e-3)
            assert entry["n_pos"] == int(labels[sel].sum())
        else:
            assert entry["offset"] == 0.0 and "uncalibrated" in entry["reason"]
            assert np.allclose(cal[2][sel], raw[2][sel])


def test_report_labels_agree_with_truth_on_synthetic_reports(archive, model):
    by_truth = calibrate(model, archive, "all", labels="truth", min_positives=1)["per_finding"]
    by_reports = calibrate(model, archive, "all", labels="reports", min_positives=1)["per_finding"]
    pos_t = sum(v["n_pos"] for v in by_truth.values())
    pos_r = sum(v["n_pos"] for v in by_reports.values())
    assert pos_t > 0 and abs(pos_t - pos_r) <= max(1, pos_t // 10)


def test_calibration_round_trips_and_bad_values_are_refused(tmp_path, archive, model):
    calibrate(model, archive, "all", labels="truth", min_positives=1)
    model.save_pretrained(tmp_path / "m")
    again = cg.load(tmp_path / "m")
    assert again.calibration == model.calibration and again.weights_hash() == model.weights_hash()
    cfg = tmp_path / "m" / "config.json"
    meta = json.loads(cfg.read_text())
    meta["calibration"] = {"liver_cyst": "high"}
    cfg.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="calibration") as err:
        cg.load(tmp_path / "m")
    assert "config.json" in str(err.value)


def test_cli_calibrate_writes_a_calibrated_copy(tmp_path, archive, model):
    model.calibration = {}
    model.save_pretrained(tmp_path / "plain")
    res = CliRunner().invoke(cli, ["calibrate", "--model", str(tmp_path / "plain"), "--archive", str(archive),
                                   "--split", "all", "--labels", "truth", "--min-positives", "1",
                                   "--out", str(tmp_path / "cal"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert cg.load(tmp_path / "cal").calibration == out["offsets"] and out["offsets"]
    assert cg.load(tmp_path / "plain").calibration == {}
    res = CliRunner().invoke(cli, ["calibrate", "--model", str(tmp_path / "plain"), "--archive", str(archive),
                                   "--split", "nosuch", "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "nosuch" in res.output


def test_public_functions_stay_callable_after_their_modules_are_imported():
    import importlib

    import ctglip_sdk.training as tr

    for name in ("evaluation", "calibration", "api", "trainer"):
        importlib.import_module(f"ctglip_sdk.training.{name}")
    assert callable(tr.evaluate) and callable(tr.calibrate) and callable(tr.train)


def test_findings_this_split_cannot_calibrate_keep_the_models_offsets_unless_reset(tmp_path, archive):
    fresh = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    before = {"renal_cyst": 2.16, "hydronephrosis": 1.91, "pancreatic_cyst": -0.5}
    fresh.calibration = dict(before)
    fresh.calibration_source = {"archive": "elsewhere", "split": "val", "n_studies": 40, "study_hashes": ["abc"]}
    # Too few positives for any finding here: every offset used to be dropped, and the saved model had none.
    report = calibrate(fresh, archive, "all", labels="truth", min_positives=10_000)
    assert fresh.calibration == before == report["offsets"] == report["kept_offsets"]
    assert "kept the model's previous offset" in report["per_finding"]["renal_cyst"]["reason"]
    src = fresh.calibration_source
    assert src["kept_offsets"] == sorted(before) and src["previous"]["archive"] == "elsewhere"
    assert "abc" in src["study_hashes"]  # kept offsets were chosen there: still in-sample for those studies
    fresh.save_pretrained(tmp_path / "m")
    assert cg.load(tmp_path / "m").calibration == before
    # What this split can calibrate is replaced; the rest is kept.
    report = calibrate(fresh, archive, "all", labels="truth", min_positives=1)
    chosen = set(report["offsets"]) - set(report["kept_offsets"])
    assert chosen and all(report["per_finding"][k].get("f1") is not None for k in chosen)
    assert set(report["kept_offsets"]) == set(before) - chosen
    # A model without a calibration record (the bundled one) still says which offsets were kept.
    fresh.calibration_source = None
    calibrate(fresh, archive, "all", labels="truth", min_positives=10_000)
    assert fresh.calibration_source["kept_offsets"] == sorted(fresh.calibration)
    assert "previous" not in fresh.calibration_source
    # reset: the old behaviour, offset 0 for what is not calibrated here
    report = calibrate(fresh, archive, "all", labels="truth", min_positives=10_000, reset=True)
    assert fresh.calibration == {} and report["kept_offsets"] == {}
    assert "previous" not in fresh.calibration_source


def test_bad_labels_and_a_missing_truth_file_are_refused_before_encoding(tmp_path, monkeypatch, model):
    import shutil

    from ctglip_sdk.errors import ConfigError, InputError
    from ctglip_sdk.training import calibration as cal_mod

    def no_encoding(*a, **k):
        raise AssertionError("the split was encoded before the error")

    monkeypatch.setattr(cal_mod, "encode_split", no_encoding)
    root = tmp_path / "a"
    cg.synth.generate_archive(root, n_patients=2, seed=5, preset="small", fmt="nifti", progress=False)
    with pytest.raises(ConfigError, match="'reports' or 'truth'"):
        calibrate(model, root, "all", labels="truths")
    (root / "truth.jsonl").unlink()
    with pytest.raises(InputError, match="truth.jsonl"):
        calibrate(model, root, "all", labels="truth")
    shutil.rmtree(root)
