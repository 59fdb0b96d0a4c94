"""`evaluate`: F1 at the model's own calibrated threshold beside F1 at the val split's threshold."""

from __future__ import annotations

import math

import pytest

import ctglip_sdk as cg
from ctglip_sdk.training import calibrate
from ctglip_sdk.training.evaluation import evaluate, markdown_table
from test_model_encode import TINY


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalarch")
    cg.synth.generate_archive(root, n_patients=6, seed=31, preset="small", fmt="nifti", progress=False,
                              overwrite=True)
    return root


def test_f1_at_the_model_threshold_is_the_calibrated_decision(archive):
    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    report = calibrate(model, archive, "all", labels="truth", min_positives=1)
    assert report["offsets"]
    # Calibrated and scored on the same studies: the model's 0.5 is each finding's F1-best threshold there,
    # so F1 at 0.5 is the best F1 calibrate found (its report rounds to 4 decimals), and no threshold chosen
    # on that split does better.
    m = evaluate(model, archive, split="all", val_split="all", val_archive=archive)
    for key in report["offsets"]:
        entry = m["per_finding"][key]
        assert entry["f1_at_model_threshold"] == pytest.approx(report["per_finding"][key]["f1"], abs=6e-5)
        assert entry["f1_at_model_threshold"] <= entry["f1"] + 1e-9
    scored = [v["f1_at_model_threshold"] for v in m["per_finding"].values() if v["f1_at_model_threshold"] is not None]
    assert m["f1_mean_model_thresholds"] == pytest.approx(sum(scored) / len(scored))
    assert all(v["f1_at_model_threshold"] is None for v in m["per_finding"].values() if not v["n_pos"])
    assert "F1 at 0.5 (model's threshold)" in markdown_table(m) and math.isfinite(m["f1_mean_model_thresholds"])


def test_a_val_split_without_studies_is_an_error_not_default_thresholds(archive):
    from ctglip_sdk.errors import InputError

    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    with pytest.raises(InputError, match="no studies in val split 'nosuch'.*val_split=None"):
        evaluate(model, archive, split="all", val_split="nosuch", val_archive=archive)


def test_auc_by_size_splits_the_positives_of_focal_findings_by_lesion_size(archive):
    import json

    import numpy as np

    from ctglip_sdk.training.evaluation import auc_by_size
    from ctglip_sdk.training.metrics import auc

    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    m = evaluate(model, archive, split="all", val_split=None)
    # What truth.jsonl says: positives per (finding, organ) of focal lesions, by their largest size.
    focal = {}
    for line in (archive / "truth.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for f in rec["findings"]:
            if f.get("center_ras_mm") is not None and f.get("size_mm") is not None:
                k = (rec["study_uid"], f["organ"], f["finding"])
                focal[k] = max(focal.get(k, 0.0), f["size_mm"])
    sized = {k: v for k, v in m["per_finding"].items() if "auc_by_size" in v}
    assert sized, "the archive has focal lesions"
    for key, entry in m["per_finding"].items():
        sizes = [s for (_, _, f), s in focal.items() if f == key]
        if not sizes:
            assert "auc_by_size" not in entry
            continue
        bins = entry["auc_by_size"]
        assert sum(b["n_pos"] for b in bins.values()) == len(sizes) == entry["n_pos"]
        assert all(0.0 <= b["auc"] <= 1.0 for b in bins.values())
    assert "by lesion size" in markdown_table(m)
    # The bins themselves: each is the AUC of that bin's positives against all negatives.
    prob = np.array([0.9, 0.7, 0.2, 0.8, 0.3, 0.1])
    lab = np.array([1, 1, 1, 0, 0, 0], bool)
    size = np.array([25.0, 8.0, 4.0, np.nan, np.nan, np.nan])
    got = auc_by_size(prob, lab, size)
    assert list(got) == ["<6 mm", "6-10 mm", ">=20 mm"]
    assert got["<6 mm"] == {"auc": auc(prob[[2, 3, 4, 5]], lab[[2, 3, 4, 5]]), "n_pos": 1}
    assert got[">=20 mm"]["auc"] == 1.0 and got["6-10 mm"]["auc"] == pytest.approx(2 / 3)


def test_auc_by_contrast_splits_each_finding_by_the_manifests_phase(archive, tmp_path):
    import csv
    import shutil

    import numpy as np

    from ctglip_sdk.training.evaluation import auc_by_group
    from ctglip_sdk.training.metrics import auc

    with open(archive / "manifest.csv", newline="") as fh:
        phases = {r["contrast"] for r in csv.DictReader(fh)}
    assert len(phases) == 2, "seed 31 gives both phases; pick another seed if the generator changes"
    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    m = evaluate(model, archive, split="all", val_split=None)
    assert any(entry["n_pos"] for entry in m["per_finding"].values())
    for key, entry in m["per_finding"].items():
        if not entry["n_pos"]:  # a finding the archive never shows has no AUC to split
            assert "auc_by_contrast" not in entry
            continue
        groups = entry["auc_by_contrast"]
        assert set(groups) == phases
        # Every scored organ falls in exactly one phase.
        assert sum(g["n_pos"] for g in groups.values()) == entry["n_pos"]
        assert sum(g["n_neg"] for g in groups.values()) == entry["n_neg"]
    assert "AUC by contrast phase" in markdown_table(m)
    # An archive whose manifest has no contrast column (a hospital's own) gets no phase breakdown.
    bare = tmp_path / "bare"
    shutil.copytree(archive, bare)
    with open(archive / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(bare / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, [c for c in rows[0] if c != "contrast"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    m2 = evaluate(model, bare, split="all", val_split=None)
    assert not any("auc_by_contrast" in v for v in m2["per_finding"].values())
    assert "AUC by contrast phase" not in markdown_table(m2)
    # The function itself: positives and negatives of one group only; a one-sided group has no AUC.
    prob = np.array([0.9, 0.4, 0.8, 0.3, 0.6, 0.2])
    lab = np.array([1, 1, 0, 0, 1, 1], bool)
    got = auc_by_group(prob, lab, ["a", "a", "a", "a", "b", "b"])
    assert got["a"] == {"auc": auc(prob[:4], lab[:4]), "n_pos": 2, "n_neg": 2}
    assert math.isnan(got["b"]["auc"]) and got["b"]["n_pos"] == 2 and got["b"]["n_neg"] == 0
    assert auc_by_group(prob, lab, ["a"] * 6) == {}


def test_val_embeddings_from_an_earlier_call_give_the_same_metrics_and_in_sample_encodes_once(archive, monkeypatch):
    import ctglip_sdk.training.evaluation as ev
    from ctglip_sdk.errors import InputError

    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    calls = []
    real = ev.encode_split
    monkeypatch.setattr(ev, "encode_split", lambda m, recs, progress=False, workers=0: calls.append(len(recs)) or
                        real(m, recs, progress, workers))
    # In-sample thresholds (the calibration archive scored with itself): its studies are encoded once.
    plain = evaluate(model, archive, split="all", val_split="all", val_archive=archive)
    assert calls == [6]
    # One calibration encoding reused by a later evaluation (here of the same studies, so nothing is encoded
    # again), the same numbers.
    pre = real(model, ev.read_splits(archive, "all"))
    calls.clear()
    reused = evaluate(model, archive, split="all", val_split="all", val_archive=archive, val_embeddings=pre)
    assert calls == []
    drop = ("seconds",)
    assert {k: v for k, v in reused.items() if k not in drop} == {k: v for k, v in plain.items() if k not in drop}
    # Embeddings of other studies than the val split are refused, naming the manifest.
    part = ev.SplitEmbeddings(pre.study[:0], [], pre.vectors[:0], pre.records[:2])
    with pytest.raises(InputError, match="val_embeddings"):
        evaluate(model, archive, split="all", val_split="all", val_archive=archive, val_embeddings=part)


def test_an_unreadable_study_is_left_out_and_listed_not_fatal(archive, tmp_path):
    """Evaluation is a batch job: one corrupt mask used to stop it with exit 1."""
    import csv
    import shutil

    copy = tmp_path / "arch"
    shutil.copytree(archive, copy)
    rows = list(csv.DictReader(open(copy / "manifest.csv")))
    victim = copy / rows[0]["mask"]
    victim.write_bytes(victim.read_bytes()[:300])  # a truncated .nii.gz
    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    m = evaluate(model, copy, split="all", val_split=None)
    assert [s["study_uid"] for s in m["skipped_studies"]] == [rows[0]["study_uid"]]
    assert rows[0]["mask"].split("/")[-1] in m["skipped_studies"][0]["reason"]
    assert m["n_studies"] == len(rows) - 1 and m["n_organs"] > 0
    assert "Left out 1 unreadable studies" in markdown_table(m)


def test_report_labels_evaluate_an_archive_without_truth(archive, tmp_path):
    """labels="reports": positives are what the reports state; uncertain statements are neither positive nor
    negative; truth.jsonl is not needed (an archive of one's own)."""
    import csv
    import shutil

    from click.testing import CliRunner

    from ctglip_sdk.cli.main import cli

    own = tmp_path / "own"
    shutil.copytree(archive, own)
    (own / "truth.jsonl").unlink()
    with open(own / "manifest.csv", newline="", encoding="utf-8") as fh:
        reports = [own / r["report"] for r in csv.DictReader(fh)]
    normal = "FINDINGS:\nThe liver, pancreas and kidneys are normal.\nIMPRESSION:\nNo acute abnormality.\n"
    for path in reports:
        path.write_text(normal)
    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    base = evaluate(model, own, split="all", val_split=None, labels="reports")
    assert base["labels"] == "reports" and all(v["n_pos"] == 0 for v in base["per_finding"].values())
    reports[0].write_text("FINDINGS:\nLiver: simple hepatic cyst.\n")
    reports[1].write_text("FINDINGS:\nKidneys: possible cyst in the left kidney.\n")
    reports[2].write_text("FINDINGS:\nThe pancreas is abnormal.\n")
    m = evaluate(model, own, split="all", val_split=None, labels="reports")
    per, was = m["per_finding"], base["per_finding"]
    assert per["liver_cyst"]["n_pos"] == 1 and per["liver_cyst"]["n_neg"] == was["liver_cyst"]["n_neg"] - 1
    # "possible" is uncertain: that kidney leaves the renal-cyst pairs; an unnamed pancreatic abnormality
    # leaves every pancreatic finding of that study out.
    assert per["renal_cyst"]["n_pos"] == 0 and per["renal_cyst"]["n_neg"] == was["renal_cyst"]["n_neg"] - 1
    for key in ("pancreatic_cyst", "pancreatic_atrophy"):
        assert per[key]["n_neg"] == was[key]["n_neg"] - 1
    with pytest.raises(cg.CTGlipError, match="no truth.jsonl"):
        evaluate(model, own, split="all", val_split=None)
    model_dir = tmp_path / "m"
    model.save_pretrained(model_dir)
    res = CliRunner().invoke(cli, ["eval", "--model", str(model_dir), "--archive", str(own), "--split", "all",
                                   "--val-split", "none", "--labels", "reports", "--json"])
    assert res.exit_code == 0, res.output
    assert '"labels": "reports"' in res.output


# --- A review of the metrics (2026-12-07) -------------------------------------------------------------------------

def test_thresholds_chosen_on_scored_studies_are_flagged_in_sample(archive):
    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    m = evaluate(model, archive, split="all", val_split="all", val_archive=archive)
    assert m["thresholds_in_sample"] is True and "**F1 is in-sample:**" in markdown_table(m)
    # The same archive spelt another way is the same archive.
    m = evaluate(model, archive, split="all", val_split="all", val_archive=str(archive) + "/./")
    assert m["thresholds_in_sample"] is True
    clean = evaluate(model, archive, split="all", val_split=None)
    assert clean["thresholds_in_sample"] is False and "in-sample" not in markdown_table(clean)
    # Both means cover the findings that have an AUC (positives and negatives), and say how many.
    both = [v for v in clean["per_finding"].values() if v["auc"] is not None]
    assert clean["n_findings"] == len(both)
    assert clean["f1_mean"] == pytest.approx(sum(v["f1"] for v in both if v["f1"] is not None)
                                             / len([v for v in both if v["f1"] is not None]))


def test_detection_scores_keep_their_order_beyond_float32_saturation():
    import numpy as np

    from ctglip_sdk.training.evaluation import SplitEmbeddings, _detections
    from ctglip_sdk.training.metrics import auc

    class Huge:  # logits of 18-30: float32 sigmoid gives 1.0 for every one of them
        def detect_logits(self, names, vectors):
            n = len(names)
            return np.arange(n), ["liver_cyst"] * n, np.linspace(18.0, 30.0, n).astype(np.float32)

    rec = cg.training.data.StudyRecord(study_uid="s1", image="i", mask="m", report=None, split="test")
    emb = SplitEmbeddings(np.zeros(6, int), ["liver"] * 6, np.zeros((6, 4), np.float32), [rec])
    truth = {"s1": [{"organ": "liver", "finding": "liver_cyst"}]}
    rows, keys, prob, lab = _detections(Huge(), emb, truth)
    assert len(set(prob.tolist())) == 6  # distinct, so AUC and the threshold search still rank them
    assert np.all(np.diff(prob) > 0)
    assert auc(prob, np.array([0, 0, 0, 1, 1, 1], bool)) == 1.0


def test_metric_labels_must_be_binary():
    from ctglip_sdk.training.metrics import auc, best_f1_threshold

    with pytest.raises(ValueError, match="labels must be 0/1"):
        auc([0.9, 0.1, 0.05], [1, 0, -1])  # -1 was counted as a positive
    with pytest.raises(ValueError, match="labels must be 0/1"):
        best_f1_threshold([0.9, 0.1], [1.0, float("nan")])
    assert auc([0.9, 0.1], [1, 0]) == 1.0


def test_a_finding_a_report_states_stays_positive_beside_an_unnamed_abnormality(tmp_path):
    from ctglip_sdk.training.data import read_manifest, report_truth

    root = tmp_path / "a"
    cg.synth.generate_archive(root, n_patients=1, seed=3, preset="small", fmt="nifti", progress=False)
    rec = read_manifest(root)[0]
    (root / rec.report).write_text("FINDINGS:\nLIVER: Hepatic cyst. Abnormal liver.\n")
    truth, unsure = report_truth([rec], cg.AbnormalityDictionary.default())
    assert {"organ": "liver", "finding": "liver_cyst"} in truth[rec.study_uid]
    assert (rec.study_uid, "liver", "liver_cyst") not in unsure  # was dropped from the scored pairs
    assert (rec.study_uid, "liver", "liver_mass") in unsure  # the unnamed abnormality may be any other


def test_the_model_records_where_it_was_calibrated_and_evaluation_says_when_it_scores_those(archive, tmp_path):
    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    calibrate(model, archive, "all", labels="truth", min_positives=1)
    src = model.calibration_source
    assert src["n_studies"] == 6 and len(src["study_hashes"]) == 6 and src["split"] == "all"
    assert not any(len(h) != 16 for h in src["study_hashes"])  # hashed, the UIDs themselves are not stored
    model.save_pretrained(tmp_path / "m")
    loaded = cg.load(tmp_path / "m")
    assert loaded.calibration_source == src
    m = evaluate(loaded, archive, split="all", val_split=None)
    assert m["model_calibration"]["scored_studies_among_them"] == 6
    assert "**F1 at the model's thresholds is in-sample** for 6" in markdown_table(m)
    fresh = evaluate(cg.create("ctglip-tiny", overrides=TINY, seed=0), archive, split="all", val_split=None)
    assert fresh["model_calibration"] is None


def test_without_matplotlib_the_roc_plot_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    import sys

    import numpy as np

    from ctglip_sdk.training.eval_report import _plot_roc

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "pip install ctglip-sdk" without the viz extra
    metrics = {"per_finding": {"liver:liver_cyst": {"auc": 0.9, "f1": 0.7, "n_pos": 3, "n_neg": 5}}}
    with caplog.at_level("WARNING"):
        _plot_roc({"liver:liver_cyst": (np.array([0.0, 1.0]), np.array([0.0, 1.0]))}, metrics, tmp_path / "roc.png")
    assert not (tmp_path / "roc.png").exists()
    assert "matplotlib is not installed" in caplog.text  # was a NameError: the logger was left behind in a split
