"""Public calls with wrongly typed or degenerate arguments give the documented error, never a wrong answer."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3

import nibabel as nib
import numpy as np
import pytest

import ctglip_sdk as cg
from ctglip_sdk.errors import ConfigError, IndexStateError, InputError, QueryError
from ctglip_sdk.index import ArchiveIndex, ArchivePlan, plan_ingest

from test_index_common import (AFFINE, LABEL, ORGAN_BOXES, make_archive, phantom, read_manifest, tiny_model,
                               write_manifest)


@pytest.fixture(scope="module")
def idx(tmp_path_factory):
    base = tmp_path_factory.mktemp("inputs")
    index = ArchiveIndex.create(base / "idx", model=tiny_model())
    index.ingest(make_archive(base / "a", n=3, seed=11), workers=0)
    index.insert_scores([(h.crop_id, "renal_cyst", 0.9) for h in index.search(np.ones(index.dim, np.float32),
                                                                              k=len(index), organ="kidney")])
    yield index
    index.close()


def test_a_single_string_is_one_condition_not_its_letters(idx):
    """cohort(all_of="renal_cyst") used to score 'r', 'e', 'n', ... as free text and return a wrong cohort."""
    as_list = idx.cohort(all_of=["renal_cyst"], level="study")
    assert idx.cohort(all_of="renal_cyst", level="study").ids == as_list.ids and len(as_list) == 3
    assert idx.cohort(all_of="renal_cyst", none_of=None, any_of=None).ids == idx.cohort(all_of=["renal_cyst"]).ids
    assert idx.score(findings="renal_cyst")["findings"] == ["renal_cyst"]
    for bad in (dict(all_of=5), dict(all_of=[""]), dict(all_of=["renal_cyst"], threshold=None)):
        with pytest.raises(QueryError):
            idx.cohort(**bad)


def test_an_empty_cohort_keeps_its_columns(idx):
    df = idx.cohort(all_of=["renal_cyst"], threshold=1.0).to_pandas()
    assert len(df) == 0 and list(df.columns) == ["patient", "studies", "p:renal_cyst"]
    df = idx.cohort(all_of=["renal_cyst"], threshold=1.0, level="study").to_pandas()
    assert list(df.columns)[:3] == ["study_uid", "patient", "studies"]


@pytest.mark.parametrize("rows", [[(1, None, 0.5)], [(1, "", 0.5)], [(1, "x")], [("a", "x", 0.5)],
                                  [(1, "x", float("nan"))]])
def test_insert_scores_refuses_junk_rows(idx, rows):
    with pytest.raises(QueryError):
        idx.insert_scores(rows)


@pytest.mark.parametrize("prompts", [{"": "a cyst"}, {"a": ""}, {"a": [""]}, "a cyst"])
def test_score_refuses_empty_prompt_keys_and_texts(idx, prompts):
    with pytest.raises(QueryError):
        idx.score(findings=[], prompts=prompts)


def test_ids_organs_and_models_of_the_wrong_type(idx, tmp_path):
    for crop_id in (None, 1.5, "1", True):
        with pytest.raises(QueryError, match="crop_id must be an integer"):
            idx.similar(crop_id)
    with pytest.raises(QueryError, match="organ"):
        idx.search("liver", organ=5)
    with pytest.raises(ConfigError, match="model: expected"):
        ArchiveIndex.create(tmp_path / "new", model=None)
    assert not (tmp_path / "new").exists()  # no empty folder left behind
    with pytest.raises(InputError, match="expected a file or folder path"):
        cg.load_volume(None)


def test_nan_voxels_are_air_in_a_file_and_an_error_in_an_array(tmp_path, caplog):
    """One NaN voxel made every organ vector of the study NaN: invisible to search, and score() then failed."""
    archive = make_archive(tmp_path / "a", n=1, seed=12)
    image = archive / read_manifest(archive)[0]["image"]
    data = np.asarray(nib.load(image).dataobj, np.float32)
    data[10, 10, 10] = np.nan
    nib.save(nib.Nifti1Image(data, AFFINE), image)
    with caplog.at_level(logging.WARNING):
        vol = cg.load_volume(image)
    assert np.isfinite(vol.array).all() and "1 non-finite voxel(s)" in caplog.text
    index = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    assert index.ingest(archive, workers=0).ok == 1
    assert np.isfinite(index.mirror.view().vecs).all() and index.verify()["ok"]
    index.close()
    raw = cg.Volume(array=data, affine=AFFINE, meta={"source_path": "raw"})
    seg = cg.load_segmentation(archive / read_manifest(archive)[0]["mask"], like=raw)
    with pytest.raises(InputError, match="1 non-finite voxel"):
        tiny_model().encode_organs(raw, seg)


def test_model_level_calls_with_the_wrong_types(idx):
    model = tiny_model()
    for bad in (None, 5):
        with pytest.raises(QueryError, match="encode_text takes"):
            model.encode_text(bad)
        with pytest.raises(ConfigError, match="expected a registered model name"):
            cg.load(bad)
    with pytest.raises(ConfigError, match="needs a CTGlipModel"):
        cg.ZeroShotClassifier(None)
    zs = cg.ZeroShotClassifier(model)
    with pytest.raises(QueryError, match="columns"):
        zs.detect_vectors(["liver"], np.ones((1, model.embed_dim + 3), np.float32))
    single = zs.detect_vectors(["liver"], np.ones((1, model.embed_dim), np.float32), findings="liver_cyst")
    assert [d.finding for d in single] == ["liver_cyst"]
    with pytest.raises(QueryError, match="a query is a text or a vector"):
        idx.search(["liver cyst", "b"])


def test_none_paths_are_clear_errors(idx):
    with pytest.raises(QueryError, match="expected a file path"):
        idx.export(None)
    with pytest.raises(ConfigError, match="expected an archive folder path"):
        idx.ingest(None)
    with pytest.raises(ConfigError, match="expected an index folder path"):
        ArchiveIndex.open(None)


# -- an archive in which nothing is found ----------------------------------------------------------------------
def _files(folder):
    """Every file below ``folder`` with its bytes: an index left untouched keeps exactly these."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_study_archives(base):
    """An empty folder; unrelated files, a mask and a header-only manifest (each found, none a study)."""
    empty = base / "empty"
    empty.mkdir()
    junk = base / "junk"
    (junk / "notes").mkdir(parents=True)
    (junk / "notes" / "readme.txt").write_text("exported by the PACS bridge\n")
    (junk / "blob").write_bytes(b"\x00not dicom")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), AFFINE), junk / "case1_seg.nii.gz")
    rows = base / "header-only"
    rows.mkdir()
    (rows / "manifest.csv").write_text("patient_id,image,mask\n")
    return {empty: "no manifest.csv", junk: "no manifest.csv", rows: "its manifest.csv lists no series"}


def test_an_archive_without_studies_is_refused_and_leaves_an_existing_index_untouched(idx, tmp_path):
    """Ingesting an empty folder (a wrong path, an unmounted share) used to record a run and rewrite the FAISS
    file as if all were well; now it is an InputError naming the root as given, raised before any write."""
    before = _files(idx.folder)
    for root, why in _no_study_archives(tmp_path).items():
        given = f"{root}/"  # as typed, with the trailing slash
        with pytest.raises(InputError) as err:
            idx.ingest(given, workers=0)
        text = str(err.value)
        assert err.value.path == given and text.startswith(f"{given}: no studies found: {why}")
        assert "manifest.csv" in text and "DICOM" in text and "NIfTI" in text and "docs/data.md" in text
    assert _files(idx.folder) == before  # no run row, no FAISS or vector file rewritten


def test_plan_ingest_refuses_before_an_index_exists_and_allow_empty_records_an_empty_run(tmp_path):
    """The Python counterpart of `ctglip ingest`: plan first, create the index only when something is found."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no studies found") as err:
        plan_ingest(str(empty))
    assert err.value.path == str(empty)
    assert not (tmp_path / "idx").exists()  # nothing was created: the check needs no index
    with pytest.raises(InputError, match="archive folder not found"):
        plan_ingest(tmp_path / "nope")
    nothing = plan_ingest(empty, allow_empty=True)
    assert len(nothing) == 0 and os.fspath(nothing) == str(empty) and plan_ingest(nothing) is nothing
    index = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    with index:
        report = index.ingest(nothing, workers=0)  # explicitly accepted: a run of 0 series
        assert (report.seen, report.ok, report.n_errors) == (0, 0, 0)
        with sqlite3.connect(tmp_path / "idx" / "index.sqlite") as conn:
            assert conn.execute("SELECT status FROM ctglip_ingest_runs").fetchall() == [("ok",)]
        # A plan of a real archive is ingested as is (not listed again) and names the root as given.
        plan = plan_ingest(make_archive(tmp_path / "a", n=2, seed=13))
        assert len(plan) == 2 and isinstance(plan, ArchivePlan)
        report = index.ingest(plan, workers=0)
        assert report.ok == 2 and report.timings["plan"] >= plan.seconds


# -- the mask's grid, for both TotalSegmentator layouts --------------------------------------------------------
COARSE = AFFINE @ np.diag([2.0, 2.0, 2.0, 1.0])  # twice the spacing (a --fast mask never resampled back)
SHIFTED = AFFINE.copy()
SHIFTED[2, 3] += 40.0  # the image's shape and spacing, 8 slices further up


def _per_class(folder, seg, grids=None):
    """TotalSegmentator's default output: ``folder/<class>.nii.gz``, one binary mask per class (nibabel)."""
    folder.mkdir(parents=True)
    for name, _box, _hu in ORGAN_BOXES:
        affine = (grids or {}).get(name, AFFINE)
        mask = (seg == LABEL[name]).astype(np.uint8)
        if affine is COARSE:
            mask = np.ascontiguousarray(mask[::2, ::2, ::2])
        nib.save(nib.Nifti1Image(mask, affine), folder / f"{name}.nii.gz")


def _study(root, name, vol):
    (root / name).mkdir(parents=True)
    nib.save(nib.Nifti1Image(vol, AFFINE), root / name / "ct.nii.gz")
    return root / name


def test_a_per_class_mask_folder_on_another_grid_is_a_mask_mismatch_like_a_multilabel_file(tmp_path):
    """A per-class folder (TotalSegmentator's default layout) on another grid used to be resampled silently,
    while the same grid in one multi-label file was refused: both are now a mask mismatch, by the same rule, and
    every reason names the mask's path relative to the archive root and both grids."""
    rng = np.random.default_rng(21)
    root = tmp_path / "archive"
    studies = {name: phantom(rng) for name in ("S001", "S002", "S003", "S004", "S005", "S006")}
    _per_class(_study(root, "S001", studies["S001"][0]) / "segmentations", studies["S001"][1])  # right grid
    _per_class(_study(root, "S002", studies["S002"][0]) / "segmentations", studies["S002"][1],
               {name: COARSE for name, _b, _h in ORGAN_BOXES})
    _per_class(_study(root, "S003", studies["S003"][0]) / "segmentations", studies["S003"][1],
               {name: SHIFTED for name, _b, _h in ORGAN_BOXES})
    _per_class(_study(root, "S004", studies["S004"][0]) / "segmentations", studies["S004"][1], {"spleen": COARSE})
    vol, seg = studies["S005"]  # the multi-label file (--ml) on the same coarse grid as S002's folder
    nib.save(nib.Nifti1Image(np.ascontiguousarray(seg[::2, ::2, ::2]), COARSE),
             _study(root, "S005", vol) / "segmentations.nii.gz")
    vol, seg = studies["S006"]
    nib.save(nib.Nifti1Image(seg, AFFINE), _study(root, "S006", vol) / "segmentations.nii.gz")  # right grid
    plan = plan_ingest(root)
    assert {i.image: i.mask for i in plan.items}["S002/ct.nii.gz"] == "S002/segmentations"  # found by name

    with ArchiveIndex.create(tmp_path / "idx", model=tiny_model()) as index:
        report = index.ingest(plan, workers=0)
        # The folder on the right grid gives the organs the multi-label file gives.
        organs = index.search(np.ones(index.dim, np.float32), k=len(index)).to_pandas().organ
        assert sorted(organs) == sorted([name for name, _b, _h in ORGAN_BOXES] * 2)
    reasons = {e["series"].removeprefix("path:").removesuffix("/ct.nii.gz"): e["reason"] for e in report.errors}
    assert report.ok == 2 and set(reasons) == {"S002", "S003", "S004", "S005"}, report.errors
    image = "(40, 40, 24) voxels of 4 x 4 x 5 mm"
    coarse = "(20, 20, 12) voxels of 8 x 8 x 10 mm"
    assert reasons["S002"] == f"S002/segmentations/: mask mismatch: the mask's grid is {coarse}, the image's {image}"
    assert reasons["S005"] == f"S005/segmentations.nii.gz: mask mismatch: the mask's grid is {coarse}, " \
                              f"the image's {image}"
    assert reasons["S003"] == ("S003/segmentations/: mask mismatch: same shape as the image but another grid "
                               "(corners up to 8.0 voxels apart; origins differ by 40.0 mm): the mask's grid is "
                               f"{image}, the image's {image}")
    assert reasons["S004"].startswith(f"S004/segmentations/: per-class masks lie on different grids: gallbladder.nii.gz "
                                      f"is {image}, spleen.nii.gz is {coarse} (1 of 5 files differ")
    assert str(tmp_path) not in json.dumps(report.errors)

    # A manifest row naming the folder (with or without the trailing slash) is checked the same way, and the
    # reason names the mask as the row does, never the patient.
    write_manifest(root, [{"patient_id": f"PAT-SECRET-{n}", "series_uid": f"1.2.826.0.77.{n}",
                           "image": f"S00{n}/ct.nii.gz", "mask": f"S00{n}/segmentations{slash}"}
                          for n, slash in ((1, "/"), (2, "/"), (4, ""))])
    with ArchiveIndex.create(tmp_path / "idx2", model=tiny_model()) as index:
        report = index.ingest(root, workers=0)
    reasons = {e["series"]: e["reason"] for e in report.errors}
    assert report.ok == 1 and set(reasons) == {"1.2.826.0.77.2", "1.2.826.0.77.4"}, report.errors
    assert reasons["1.2.826.0.77.2"].startswith(f"S002/segmentations/: mask mismatch: the mask's grid is {coarse}")
    assert reasons["1.2.826.0.77.4"].startswith("S004/segmentations/: per-class masks lie on different grids")
    assert "SECRET" not in json.dumps(report.errors)


@pytest.mark.parametrize("content,reason", [
    ("study_uid,image,mask,report,split,patient_id\n1.2,s/ct.nii.gz,m,r,train,R\xe9n\xe9\n".encode("latin-1"),
     "not UTF-8 text (byte 0xe9"),
    (b"study_uid,image,mask,report,split,note\n1.2,s000/ct.nii.gz,m,r,train,\"" + b"x" * 140_000 + b"\"\n",
     "not a readable CSV file"),
    (b"patient_id,series_uid\nP1,1.2.3\n", "lacks column(s)"),
])
def test_an_unreadable_manifest_is_an_input_error_naming_it(tmp_path, content, reason):
    """A latin-1 manifest or a huge field was a raw UnicodeDecodeError / csv.Error with no file name (review,
    2026-12-06); training reads manifests the same way."""
    from ctglip_sdk.index.layout import plan_archive
    from ctglip_sdk.training.data import read_manifest as training_manifest

    (tmp_path / "manifest.csv").write_bytes(content)
    for call in (lambda: plan_archive(tmp_path), lambda: training_manifest(tmp_path)):
        with pytest.raises(InputError, match=re.escape(reason)) as err:
            call()
        assert "manifest.csv" in str(err.value)


def test_a_failed_create_leaves_no_folder_behind(tmp_path):
    """An invalid factory left an empty index folder, an unreachable database a model copy and a key file
    (review, 2026-12-06): the next `ctglip ingest` then found a half index."""
    with pytest.raises(Exception):
        ArchiveIndex.create(tmp_path / "bad-factory", model=tiny_model(), factory="NotAFactory")
    assert not (tmp_path / "bad-factory").exists()
    with pytest.raises(ConfigError):
        ArchiveIndex.create(tmp_path / "no-db", model=tiny_model(),
                            database_url="postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2")
    assert not (tmp_path / "no-db").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    # A folder holding other files is refused before anything is written (since 2026-12-07; docs/index.md).
    with pytest.raises(IndexStateError, match="not empty and holds no index"):
        ArchiveIndex.create(tmp_path / "mine", model=tiny_model(),
                            database_url="postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    (tmp_path / "dotted").mkdir()
    (tmp_path / "dotted" / ".gitkeep").write_text("")
    with pytest.raises(ConfigError):  # a folder of hidden files only is no one's: the database error, as before
        ArchiveIndex.create(tmp_path / "dotted", model=tiny_model(),
                            database_url="postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2")
    assert sorted(p.name for p in (tmp_path / "dotted").iterdir()) == [".gitkeep"]  # kept, nothing left behind


def test_a_run_left_running_by_a_killed_writer_is_marked_crashed(tmp_path):
    from sqlalchemy import select

    root = make_archive(tmp_path / "a", n=2, seed=25)
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    dead = idx.store.start_run(str(root))  # what a writer killed with -9 leaves behind
    idx.ingest(root, workers=0)
    runs = idx.store.t.ingest_runs
    status = dict(idx.store.read(lambda c: c.execute(select(runs.c.id, runs.c.status)).all()))
    assert status[dead] == "crashed" and list(status.values()).count("ok") == 1
    idx.close()


def test_reserved_table_prefixes_are_refused_before_any_table_is_made(tmp_path):
    with pytest.raises(ConfigError, match="reserved by the database"):
        ArchiveIndex.create(tmp_path / "idx", model=tiny_model(), table_prefix="sqlite_")
    assert not (tmp_path / "idx").exists()
