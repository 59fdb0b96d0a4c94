"""Archive reading, the preprocessing cache and the training dataset on a real 'small' synthetic archive."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import ctglip_sdk as cg
from ctglip_sdk.errors import InputError
from ctglip_sdk.model.preprocess import prepare_study
from ctglip_sdk.training.cache import PreprocessCache, preprocess_spec
from ctglip_sdk.training.data import (StudyDataset, StudyText, archive_seed, build_cache, collate_studies,
                                      read_manifest, read_truth)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch")
    cg.synth.generate_archive(root, n_patients=3, seed=5, preset="small", fmt="nifti", progress=False, overwrite=True)
    return root


@pytest.fixture(scope="module")
def model():
    return cg.create("ctglip-tiny", seed=0)


def test_manifest_truth_and_seed(archive, tmp_path):
    rows = read_manifest(archive)
    assert len(rows) == 3 and all(r.image.is_file() and r.mask.is_file() and r.report.is_file() for r in rows)
    assert {r.split for r in rows} == {"train", "val", "test"}
    assert [r.split for r in read_manifest(archive, "val")] == ["val"]
    # Lists and "all" select as eval/calibrate do, in manifest order.
    assert [r.split for r in read_manifest(archive, "train, test")] == [r.split for r in rows if r.split != "val"]
    assert [r.study_uid for r in read_manifest(archive, "all")] == [r.study_uid for r in rows]
    assert read_manifest(archive, "nosuchsplit") == []
    truth = read_truth(archive)
    assert set(truth) == {r.study_uid for r in rows}
    assert archive_seed(archive) == 5 and archive_seed(tmp_path) is None
    # Manifest paths may not leave the archive.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.csv").write_text("study_uid,image,mask,report,split\n1,../x.nii.gz,m,r,train\n")
    with pytest.raises(InputError, match="escapes"):
        read_manifest(bad)
    (bad / "manifest.csv").write_text("study_uid,image\n1,x\n")
    with pytest.raises(InputError, match="lacks column"):
        read_manifest(bad)


def test_cache_matches_fresh_preprocessing_and_is_reused(archive, model, tmp_path):
    rows = read_manifest(archive)
    cache = PreprocessCache.for_model(model, tmp_path)
    assert build_cache(rows, cache, progress=False) == (3, [])
    assert build_cache(rows, cache, progress=False).built == 0    # built once, then reused
    entries = sorted(cache.dir.glob("*.safetensors"))
    assert len(entries) == 3 and json.loads((cache.dir / "spec.json").read_text()) == preprocess_spec(model)

    r = rows[0]
    got = cache.load(r.image, r.mask)
    vol = cg.load_volume(r.image)
    seg = cg.load_segmentation(r.mask, like=vol)
    want = model.prepare(vol, seg)
    assert got.names == want.names and tuple(got.grid) == tuple(want.grid)
    assert cache.names(r.image, r.mask) == want.names                # read from the entry's header alone
    assert want.stats is not None and got.stats is not None          # ctglip-tiny has per-organ stats
    alone = cache.stats(r.image, r.mask)                             # the stats tensor alone, image unread
    assert torch.equal(alone, got.stats) and alone.shape == (len(want.names), want.stats.shape[-1])
    assert torch.allclose(alone, want.stats.float(), atol=1e-5)
    assert torch.equal(got.rows, want.rows) and torch.equal(got.cols, want.cols) and torch.equal(got.vals, want.vals)
    assert got.image.shape == want.image.shape
    assert float((got.image - want.image).abs().max()) < 1e-3       # float16 storage of a [0, 1] window

    # A touched mask gets a new key; so does a model with another preprocessing spec.
    key = cache.key(r.image, r.mask)
    st = os.stat(r.mask)
    os.utime(r.mask, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.key(r.image, r.mask) != key and not cache.has(r.image, r.mask)
    with pytest.raises(InputError, match="not in the preprocessing cache"):
        cache.names(r.image, r.mask)
    with pytest.raises(InputError, match="not in the preprocessing cache"):
        cache.stats(r.image, r.mask)
    other = cg.create("ctglip-tiny", overrides={"preprocess": {"spacing": [5.0, 5.0, 5.0]}}, seed=0)
    assert PreprocessCache.for_model(other, tmp_path).dir != cache.dir


def test_select_and_pool_equivalence(archive, model, tmp_path):
    rows = read_manifest(archive)
    cache = PreprocessCache.for_model(model, tmp_path)
    build_cache(rows[:1], cache, progress=False)
    study = cache.load(rows[0].image, rows[0].mask)
    pick = ["liver", "spleen", "kidney_left"]
    sub = study.select(pick)
    assert sub.names == pick and set(sub.rows.tolist()) == {0, 1, 2}
    from ctglip_sdk.model.modeling import pool_sparse

    feats = torch.randn(4, *study.grid)
    full = pool_sparse(feats, study.rows, study.cols, study.vals, len(study.names))
    part = pool_sparse(feats, sub.rows, sub.cols, sub.vals, 3)
    idx = [study.names.index(o) for o in pick]
    assert torch.allclose(full[idx], part, atol=1e-6)


def test_dataset_items_and_collate(archive, model, tmp_path):
    rows = read_manifest(archive)
    cache = PreprocessCache.for_model(model, tmp_path)
    build_cache(rows, cache, progress=False)
    texts = [StudyText({"liver": "simple hepatic cyst"}, {"liver": ("liver_cyst",)}, {"spleen": ("splenomegaly",)},
                       "Liver: simple hepatic cyst.") for _ in rows]
    ds = StudyDataset(rows, cache, texts, dictionary=None, organs_per_study=6, seed=1,
                      finding_organs=["kidney_left", "kidney_right"])
    a, b = ds[(0, 1)], ds[(0, 1)]
    assert a["organs"] == b["organs"]                              # same (seed, epoch, index) -> same sample
    assert ds[(1, 1)]["organs"] != a["organs"] or ds[(2, 1)]["organs"] != a["organs"]
    assert {"liver", "spleen"} <= set(a["organs"]) and len(a["organs"]) == 6   # report findings always kept
    li = a["organs"].index("liver")
    assert a["texts"][li] == "simple hepatic cyst" and a["present"][li] == ("liver_cyst",)
    assert a["uncertain"][a["organs"].index("spleen")] == ("splenomegaly",)
    other = next(i for i, o in enumerate(a["organs"]) if o not in ("liver", "spleen"))
    assert cg.organs.display_name(a["organs"][other]).lower() in a["texts"][other].lower()  # a normal phrase
    assert a["present"][other] == ()
    # Every labelled organ keeps turning up across epochs; dictionary organs (weight 3) more often.
    wide = StudyDataset(rows, cache, texts, None, organs_per_study=24, seed=1, finding_organs=["kidney_left"])
    seen = [o for e in range(60) for o in wide[(e, 0)]["organs"]]
    names = cache.load(rows[0].image, rows[0].mask).names
    assert set(seen) == set(names)
    assert seen.count("kidney_left") > seen.count("femur_left")
    batch = collate_studies([ds[(0, 0)], ds[(0, 1)], ds[(0, 2)]])
    shapes = [tuple(cache.load(r.image, r.mask).image.shape) for r in rows]
    assert tuple(batch["image"].shape) == (3, *np.max(shapes, axis=0))
    for i, s in enumerate(shapes):  # each study's own box is intact, the padding is air (window low end = 0)
        x, y, z = s[1:]
        assert torch.equal(batch["image"][i, :, :x, :y, :z], cache.load(rows[i].image, rows[i].mask).image)
        assert float(batch["image"][i, :, x:].abs().sum()) == 0.0


def test_annotate_report_labels_come_from_the_report_text():
    from ctglip_sdk.training.data import annotate_report

    for seed in range(3):
        p = cg.synth.generate_patient(seed, "small", findings=["liver_cyst", "splenomegaly"])
        st = annotate_report(p.report)
        assert "liver_cyst" in st.present.get("liver", ()) + st.uncertain.get("liver", ())
        assert "splenomegaly" in st.present.get("spleen", ())
        assert "liver" in st.organ_texts and st.report == p.report
        # Organs the report calls normal carry no finding.
        assert not st.present.get("pancreas")
    assert annotate_report("The spleen is unremarkable.").present == {}


def test_cache_keeps_hu_histograms_and_select_follows_the_organs(archive, tmp_path):
    """A model with hu_histogram: the cache stores the per-organ stats, select() reorders them with the rows."""
    hist_model = cg.create("ctglip-tiny", overrides={"preprocess": {"hu_histogram": [-100.0, 0.0, 100.0],
                                                                    "organ_descriptors": False, "focal_descriptors": False}}, seed=0)
    cache = PreprocessCache.for_model(hist_model, tmp_path / "cache")
    rec = read_manifest(archive)[0]
    cache.build(rec.image, rec.mask)
    study = cache.load(rec.image, rec.mask)
    vol = cg.load_volume(rec.image)
    fresh = hist_model.prepare(vol, cg.load_segmentation(rec.mask, like=vol))
    assert study.names == fresh.names and study.stats is not None
    torch.testing.assert_close(study.stats, fresh.stats)
    pick = [study.names[2], study.names[0]]
    sub = study.select(pick)
    torch.testing.assert_close(sub.stats, study.stats[[2, 0]])
    # Another preprocessing spec (the registered one) has a different spec hash (never a stale entry).
    plain = PreprocessCache.for_model(cg.create("ctglip-tiny", seed=0), tmp_path / "cache")
    assert plain.spec_hash != cache.spec_hash


def test_a_replaced_file_in_a_dicom_folder_changes_the_cache_key(tmp_path, model):
    import shutil

    folder = tmp_path / "series"
    folder.mkdir()
    for i in range(3):
        (folder / f"IM{i:04d}.dcm").write_bytes(bytes([i]) * 100)
    mask = tmp_path / "seg.nii.gz"
    mask.write_bytes(b"m" * 10)
    cache = PreprocessCache.for_model(model, tmp_path / "cache")
    before = cache.key(folder, mask)
    # A same-size slice restored with its old mtime (cp -p from a backup) used to keep the key: the folder was
    # summed into (total size, newest mtime), and training read the stale entry's pixels.
    (tmp_path / "other.dcm").write_bytes(bytes([9]) * 100)
    os.utime(tmp_path / "other.dcm", ns=(1, 1))
    shutil.copy2(tmp_path / "other.dcm", folder / "IM0001.dcm")
    assert cache.key(folder, mask) != before


def test_temp_entries_of_killed_builds_are_swept(tmp_path, model):
    cache = PreprocessCache.for_model(model, tmp_path)
    old = cache.dir / ".abc.safetensors.12345.tmp"
    fresh = cache.dir / ".def.safetensors.12346.tmp"
    old.write_bytes(b"x" * 10)
    fresh.write_bytes(b"x" * 10)
    os.utime(old, (1, 1))
    PreprocessCache.for_model(model, tmp_path)  # a later run opens the cache
    assert not old.exists() and fresh.exists()  # a live build's temp file is left alone
