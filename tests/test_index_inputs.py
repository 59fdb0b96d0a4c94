"""Public calls with wrongly typed or degenerate arguments give the documented error, never a wrong answer."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

import ctglip_sdk as cg
from ctglip_sdk.errors import ConfigError, InputError, QueryError
from ctglip_sdk.index import ArchiveIndex

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
