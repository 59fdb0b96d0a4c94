"""Public calls with wrongly typed or degenerate arguments give the documented error, never a wrong answer."""

from __future__ import annotations

import logging
import os
import sqlite3

import nibabel as nib
import numpy as np
import pytest

import ctglip_sdk as cg
from ctglip_sdk.errors import ConfigError, InputError, QueryError
from ctglip_sdk.index import ArchiveIndex, ArchivePlan, plan_ingest

from test_index_common import AFFINE, make_archive, read_manifest, tiny_model


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
