"""Review of 2026-12-07 (training side): a damaged preprocessing-cache entry, positives on organs the masks lack, and
a val split whose studies cannot be read."""

from __future__ import annotations

import csv
import json
import logging
import shutil

import nibabel as nib
import numpy as np
import pytest

import ctglip_sdk as cg
from ctglip_sdk import organs
from ctglip_sdk.errors import InputError
from ctglip_sdk.training.cache import PreprocessCache
from ctglip_sdk.training.data import build_cache, read_manifest
from ctglip_sdk.training.evaluation import evaluate, markdown_table
from test_model_encode import TINY


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("rev28")
    cg.synth.generate_archive(root, n_patients=5, seed=28, preset="small", fmt="nifti", progress=False,
                              overwrite=True, prevalence={"gallstones": 1.0})
    return root


@pytest.fixture(scope="module")
def model():
    return cg.create("ctglip-tiny", overrides=TINY, seed=0)


def test_a_damaged_cache_entry_is_rebuilt_not_a_crash(archive, model, tmp_path, caplog):
    rows = read_manifest(archive, "all")[:2]
    cache = PreprocessCache.for_model(model, tmp_path)
    assert build_cache(rows, cache, progress=False).built == 2
    entry = cache.path(rows[0].image, rows[0].mask, rows[0].series)
    good = cache.load(rows[0].image, rows[0].mask, rows[0].series)
    entry.write_bytes(entry.read_bytes()[:100])  # cut short (a full disk, a power cut before the data reached it)
    # Reading it is an InputError naming the cache file (it used to be a raw SafetensorError traceback) ...
    with pytest.raises(InputError, match="damaged preprocessing cache entry") as err:
        cache.stats(rows[0].image, rows[0].mask, rows[0].series)
    assert entry.name in str(err.value)
    # ... and the next cache build (every training run starts with one) finds it, removes it and builds it again.
    with caplog.at_level(logging.WARNING, logger="ctglip_sdk.training.cache"):
        assert build_cache(rows, cache, progress=False) == (1, [])
    assert "damaged preprocessing cache entry" in caplog.text
    again = cache.load(rows[0].image, rows[0].mask, rows[0].series)
    assert again.names == good.names and np.array_equal(again.image.numpy(), good.image.numpy())
    assert build_cache(rows, cache, progress=False).built == 0


def test_positives_on_an_organ_the_mask_lacks_are_counted_not_lost(archive, model, tmp_path, caplog):
    copy = tmp_path / "arch"
    shutil.copytree(archive, copy)
    rows = list(csv.DictReader(open(copy / "manifest.csv")))
    truth = {json.loads(line)["study_uid"]: json.loads(line) for line in open(copy / "truth.jsonl")}
    with_stones = [r for r in rows if any(f["finding"] == "gallstones" for f in truth[r["study_uid"]]["findings"])]
    assert len(with_stones) >= 2
    victim = copy / with_stones[0]["mask"]
    img = nib.load(victim)
    labels = np.asarray(img.dataobj).copy()
    gb = next(i for i, n in organs.label_map("totalseg_v1").items() if n == "gallbladder")
    labels[labels == gb] = 0  # a segmentation that missed the gallbladder
    nib.save(nib.Nifti1Image(labels, img.affine, img.header), victim)

    with caplog.at_level(logging.WARNING, logger="ctglip_sdk.training.evaluation"):
        m = evaluate(model, copy, split="all", val_split=None)
    assert m["unscored_positives"] == {"gallstones": 1}
    assert m["per_finding"]["gallstones"]["n_pos_unscored"] == 1
    assert m["per_finding"]["gallstones"]["n_pos"] == len(with_stones) - 1
    assert "not scored" in caplog.text and "gallstones 1" in caplog.text
    assert "**Not scored:**" in markdown_table(m)
    # the untouched archive has none
    assert evaluate(model, archive, split="all", val_split=None)["unscored_positives"] == {}


def _split(root, uids, split):
    rows = list(csv.DictReader(open(root / "manifest.csv")))
    for r in rows:
        r["split"] = split if r["study_uid"] in uids else "test"
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def test_a_val_split_that_cannot_be_read_is_an_error_and_partial_losses_are_listed(archive, model, tmp_path):
    copy = tmp_path / "arch"
    shutil.copytree(archive, copy)
    first = list(csv.DictReader(open(copy / "manifest.csv")))
    val = [first[0]["study_uid"], first[1]["study_uid"]]
    rows = _split(copy, set(val), "val")
    masks = {r["study_uid"]: copy / r["mask"] for r in rows}
    masks[val[0]].write_bytes(masks[val[0]].read_bytes()[:300])  # a truncated .nii.gz
    m = evaluate(model, copy, split="test", val_split="val")
    assert [s["study_uid"] for s in m["val_skipped_studies"]] == [val[0]]
    assert masks[val[0]].name in m["val_skipped_studies"][0]["reason"]
    assert m["skipped_studies"] == []
    assert "unreadable studies of the val split" in markdown_table(m)
    # every val study unreadable: thresholds would all silently be 0.5 (threshold_from "default") before
    masks[val[1]].write_bytes(masks[val[1]].read_bytes()[:300])
    with pytest.raises(InputError, match="no study of val split 'val' could be read.*--val-split none"):
        evaluate(model, copy, split="test", val_split="val")


def test_a_clipped_calibration_offset_reports_the_f1_it_gives():
    from ctglip_sdk.training.calibration import MAX_OFFSET, _offsets

    keys = np.array(["k"] * 6)
    lab = np.array([0, 0, 0, 1, 1, 1])
    # every negative above the clip: the F1-best threshold (16) is clipped to MAX_OFFSET, which calls them positive
    offsets, per = _offsets(keys, np.array([10.0, 11, 12, 20, 30, 40]), lab, 1)
    assert offsets == {"k": MAX_OFFSET} and per["k"]["f1"] == pytest.approx(2 / 3, abs=1e-4)  # was 1.0
    offsets, per = _offsets(keys, np.array([-3.0, -2, -1, 1, 2, 3]), lab, 1)  # not clipped: as before
    assert offsets == {"k": 0.0} and per["k"]["f1"] == 1.0


def test_evaluate_and_calibrate_refuse_a_split_none_of_whose_studies_can_be_read(archive, model, tmp_path):
    from ctglip_sdk.training import calibrate

    copy = tmp_path / "arch"
    shutil.copytree(archive, copy)
    for r in csv.DictReader(open(copy / "manifest.csv")):
        (copy / r["mask"]).write_bytes((copy / r["mask"]).read_bytes()[:300])  # every mask truncated
    # they exited 0 with n_studies 0 and null metrics, and calibrate wrote a model "calibrated" on no study
    with pytest.raises(InputError, match="no study of split 'all' could be read \\(5 unreadable"):
        evaluate(model, copy, split="all", val_split=None)
    before = dict(model.calibration or {})
    with pytest.raises(InputError, match="no study of split 'all' could be read.*the model is unchanged"):
        calibrate(model, copy, "all", labels="truth")
    assert dict(model.calibration or {}) == before


def test_calibration_counts_a_study_once_and_keeps_it_when_one_of_its_series_fails(archive, model, tmp_path):
    from ctglip_sdk.training import calibrate
    from ctglip_sdk.training.data import study_hash

    copy = tmp_path / "arch"
    shutil.copytree(archive, copy)
    rows = list(csv.DictReader(open(copy / "manifest.csv")))
    # a second series of the first study (a copy of its image), whose mask is broken
    extra = dict(rows[0], series_uid=rows[0]["series_uid"] + ".2", image="images/extra.nii.gz", mask="masks/extra.nii.gz")
    shutil.copy(copy / rows[0]["image"], copy / extra["image"])
    (copy / extra["mask"]).write_bytes((copy / rows[0]["mask"]).read_bytes()[:300])
    with open(copy / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([*rows, extra])
    report = calibrate(model, copy, "all", labels="truth")
    # every study was read (the first through its good series): 5 studies, the first among the calibration hashes
    assert report["n_studies"] == len(rows) == model.calibration_source["n_studies"]  # was 4 (the study dropped)
    assert study_hash(rows[0]["study_uid"]) in model.calibration_source["study_hashes"]
    assert [s["study_uid"] for s in report["skipped_studies"]] == [rows[0]["study_uid"]]


def test_a_damaged_entry_that_cannot_be_removed_is_a_skipped_study_not_a_traceback(archive, model, tmp_path,
                                                                                     monkeypatch):
    from pathlib import Path

    rows = read_manifest(archive, "all")[:1]
    cache = PreprocessCache.for_model(model, tmp_path)
    build_cache(rows, cache, progress=False)
    entry = cache.path(rows[0].image, rows[0].mask, rows[0].series)
    entry.write_bytes(b"\0" * 50)
    real = Path.unlink

    def refuse(self, missing_ok=False):  # a read-only shared cache (root ignores chmod, so the refusal is simulated)
        if self == entry:
            raise PermissionError(13, "Permission denied")
        return real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    done = build_cache(rows, cache, progress=False)
    assert done.built == 0 and len(done.skipped) == 1
    assert "cannot be removed" in done.skipped[0][1] and "writable" in done.skipped[0][1]


def test_unspecified_abnormality_uncertain_leaves_the_organs_findings_out_of_the_labels():
    from ctglip_sdk.errors import ConfigError
    from ctglip_sdk.training.config import TrainConfig
    from ctglip_sdk.training.data import UNSPECIFIED, annotate_report
    from ctglip_sdk.training.objectives import TextBank, decision_labels, organ_uncertain

    d = cg.AbnormalityDictionary.default()
    st = annotate_report("The liver is abnormal. Small hepatic cyst.", d)
    keys = sorted(e.key for e in d.for_organ("liver"))
    present, unc = st.present.get("liver", ()), st.uncertain.get("liver", ())
    assert UNSPECIFIED in unc and "liver_cyst" in present
    # the default (the bundled model's recipe): findings the report does not state are negatives
    assert decision_labels(keys, keys, present, organ_uncertain(unc, keys, present)) == [
        int(k == "liver_cyst") for k in keys]
    # "uncertain": the stated cyst stays a positive, every other liver finding is left out (-1), as evaluation reads it
    labels = decision_labels(keys, keys, present, organ_uncertain(unc, keys, present, "uncertain"))
    assert labels == [1 if k == "liver_cyst" else -1 for k in keys]
    bank = TextBank.draw(d, np.random.default_rng(0), 1)
    t = bank.targets(tuple(keys), ("liver",), present, organ_uncertain(unc, keys, present, "uncertain"))
    assert {v for v, k in zip(t, bank.keys) if k in keys and k != "liver_cyst"} == {-1}
    assert TrainConfig(unspecified_abnormality="uncertain").unspecified_abnormality == "uncertain"
    with pytest.raises(ConfigError, match="unspecified_abnormality='ignore'"):
        TrainConfig(unspecified_abnormality="ignore")
