"""Review of 2026-12-07, query side: redacted series keys passed back, cohort-question ages, dates, sexes, lobes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctglip_sdk.errors import QueryError
from ctglip_sdk.index import ArchiveIndex
from ctglip_sdk.index.nlq import parse_query
from test_index_common import phantom, tiny_model, write_manifest


def _two_patients_without_uids(tmp_path):
    from test_index_common import write_nifti_study

    root = tmp_path / "arch"
    rows = []
    for i, pid in enumerate(["PID1234567", "PID7654321"]):  # the same layout: redacted, both paths are alike
        vol, seg = phantom(np.random.default_rng(30 + i))
        write_nifti_study(root, pid, vol, seg)
        rows.append({"patient_id": pid, "study_uid": "", "series_uid": "", "image": f"{pid}/ct.nii.gz",
                     "mask": f"{pid}/seg.nii.gz", "report": "", "split": "test", "age": "50", "sex": "F",
                     "study_date": "2020-01-01", "contrast": "none"})
    write_manifest(root, rows)
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    assert not idx.ingest(root, workers=0).errors
    return idx


def test_redacted_series_keys_stay_apart_and_can_be_passed_back(tmp_path):
    idx = _two_patients_without_uids(tmp_path)
    try:
        hits = idx.search(np.ones(idx.dim, np.float32), k=50)
        patients = {h.patient for h in hits}
        assert len(patients) == 2 and all("PID" not in h.series_uid + h.study_uid for h in hits)
        # was one shown key for both patients' series: group_by("series") merged two patients
        groups = hits.group_by("series")
        assert len(groups) == 2 and all(len({h.patient for h in g}) == 1 for g in groups.values())
        first = hits[0]
        for key, value in (("series_uid", first.series_uid), ("study_uid", first.study_uid)):
            got = idx.search(np.ones(idx.dim, np.float32), k=50, where={key: value})  # was 0 hits
            assert len(got) and {h.patient for h in got} == {first.patient}, key
        out = idx.remove(series=[first.series_uid])  # a hit's shown key removes its series
        assert out["series"] == 1 and out["not_found"]["series"] == []
        left = idx.search(np.ones(idx.dim, np.float32), k=50)
        assert {h.patient for h in left} == patients - {first.patient}
        out = idx.remove(studies=[left[0].study_uid])
        assert out["series"] == 1 and out["not_found"]["studies"] == []
    finally:
        idx.close()


@pytest.mark.parametrize("question, age", [
    ("liver cyst in patients older than 65 and younger than 80", (65, 80)),   # was age<=65
    ("liver cyst younger than 30 or older than 70", None),                    # was age>=30; two groups: none
    ("liver cyst in children under 10", (None, 10)),                          # was <=17, "under 10" left
    ("liver cyst in children", (None, 17)),
    ("65 and older with liver cyst", (65, None)),
    ("3 or more nodules in the liver", None),                                 # a count, still no age
])
def test_age_phrases(question, age):
    assert parse_query(question).where.get("age") == age


@pytest.mark.parametrize("question, text, where", [
    # "boys"/"girls" are a sex and a children's word: the number after them is an age, and alone they mean < 18
    ("liver cysts in boys under 12", "liver cysts", {"sex": "M", "age": (None, 12)}),  # was sex M, "under 12" left
    ("girls younger than 16 with hydronephrosis", "hydronephrosis", {"sex": "F", "age": (None, 16)}),
    ("boys aged 5 to 10 with hydronephrosis", "hydronephrosis", {"sex": "M", "age": (5, 10)}),
    ("liver cysts in girls", "liver cysts", {"sex": "F", "age": (None, 17)}),
    ("renal cysts excluding boys", "renal cysts", {"sex": "F"}),  # an excluded sex, as before
    # both sexes (no sex filter) and still children; a stated adult age wins over the word
    ("boys and girls under 12 with renal cyst", "renal cyst", {"age": (None, 12)}),
    ("boys and girls with renal cyst", "renal cyst", {"age": (None, 17)}),
    ("girls over 18 with liver cyst", "liver cyst", {"sex": "F", "age": (18, None)}),
    ("boys with 2-3 renal stones", "2-3 renal stones", {"sex": "M", "age": (None, 17)}),  # a count stays a count
])
def test_boys_and_girls_are_children(question, text, where):
    parsed = parse_query(question)
    assert (parsed.text, parsed.where) == (text, where)


@pytest.mark.parametrize("question, dates", [
    ("liver cyst on or after 2021", ("2021-01-01", None)),     # was >= 2022-01-01
    ("liver cyst in or after 2021", ("2021-01-01", None)),
    ("liver cyst on or before 2021", (None, "2021-12-31")),    # was <= 2020-12-31
    ("liver cyst from 2020 until now", ("2020-01-01", None)),  # was the year 2020
    ("liver cyst 2020 to present", ("2020-01-01", None)),
    ("liver cyst since 2021-3-5", ("2021-03-05", None)),       # was >= 2021-01-01, "-3-5" left in the text
    ("liver cyst after 2021", ("2022-01-01", None)),           # unchanged
])
def test_date_phrases(question, dates):
    parsed = parse_query(question)
    assert parsed.where.get("study_date") == dates and parsed.text == "liver cyst"


@pytest.mark.parametrize("question, sex", [
    ("liver cyst in women, not men", "F"),      # was no filter ("both sexes named")
    ("liver cyst in women but not men", "F"),
    ("liver cyst excluding men, in women", "F"),
    ("liver cyst in men and women", None),
])
def test_one_sex_named_and_the_other_excluded(question, sex):
    assert parse_query(question).where.get("sex") == sex


def test_a_lobe_word_narrows_a_side_named_by_another_phrase():
    assert parse_query("left lung lower lobe nodule").organ == ["lung_lower_lobe_left"]  # was both left lobes
    assert parse_query("left lung nodule").organ == ["lung_upper_lobe_left", "lung_lower_lobe_left"]


def test_search_says_when_its_text_holds_filters_it_does_not_apply(tmp_path):
    idx = _two_patients_without_uids(tmp_path)
    try:
        notes = idx.search("fatty liver in women over 60", k=3).notes
        assert any("look like filters (sex=F, age>=60)" in n for n in notes)  # was silent: men came back
        assert not any("look like filters" in n for n in idx.search("fatty liver", k=3).notes)
        given = idx.search("fatty liver in women over 60", k=3, where={"sex": "F", "age": (60, None)}).notes
        assert not any("look like filters" in n for n in given)
    finally:
        idx.close()


def test_similar_with_a_crop_id_past_int64_is_a_query_error(tmp_path):
    from click.testing import CliRunner

    from ctglip_sdk.cli.main import cli

    idx = _two_patients_without_uids(tmp_path)
    with pytest.raises(QueryError, match="not in this index"):
        idx.similar(2 ** 70)  # was OverflowError
    idx.close()
    res = CliRunner().invoke(cli, ["similar", str(2 ** 80), "--index", str(tmp_path / "idx"), "--json"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert json.loads(res.stdout)["type"] == "QueryError"  # --json stays one JSON document


def test_a_later_record_of_one_batch_restates_the_organs_written_before_it(tmp_path):
    from ctglip_sdk.index import SeriesEmbeddings

    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    rng = np.random.default_rng(5)

    def rec(uid, **kw):
        return SeriesEmbeddings(uid, ["liver"], rng.standard_normal((1, idx.dim)), **kw)

    try:
        idx.add_embeddings([rec("BM.1", study_uid="S.1", patient_id="P-1", age=50, study_date="2020-01-01"),
                            rec("BM.2", study_uid="S.1", patient_id="P-1", age=60, study_date="2020-01-01"),
                            rec("BM.3", study_uid="S.3", patient_id="P-3", age=40),
                            rec("BM.4", study_uid="S.4", patient_id="P-3", sex="F", age=41)],
                           config_hash=idx.manifest["model"]["config_hash"])
        for reopened in (False, True):
            if reopened:
                idx.close()
                idx = ArchiveIndex.open(tmp_path / "idx")
            q = rng.standard_normal(idx.dim).astype(np.float32)
            # were BM.1 (its organs kept age 50 while its study says 60) and BM.4 only (BM.3 never learnt sex F)
            assert sorted(h.series_uid for h in idx.search(q, k=10, where={"age": 60})) == ["BM.1", "BM.2"]
            assert idx.search(q, k=10, where={"age": 50}).crop_ids == []
            assert sorted(h.series_uid for h in idx.search(q, k=10, where={"sex": "F"})) == ["BM.3", "BM.4"]
    finally:
        idx.close()


def test_cohort_members_show_redacted_study_keys(tmp_path):
    idx = _two_patients_without_uids(tmp_path)
    try:
        res = idx.cohort(all_of=["liver"], threshold=0.0, level="study")
        assert len(res) == 2
        shown = [m["study_uid"] for m in res] + list(res.ids)
        assert all("PID" not in s and s.startswith("series:path:") and "#" in s for s in shown), shown  # was the PID
    finally:
        idx.close()


def test_verify_in_a_reader_sees_what_another_writer_committed(tmp_path):
    from ctglip_sdk.index import SeriesEmbeddings

    writer = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    rng = np.random.default_rng(6)
    ch = writer.manifest["model"]["config_hash"]
    writer.add_embeddings([SeriesEmbeddings("A.1", ["liver"], rng.standard_normal((1, writer.dim)), patient_id="P")],
                          config_hash=ch)
    reader = ArchiveIndex.open(tmp_path / "idx")
    try:
        assert reader.verify()["ok"]
        writer.add_embeddings([SeriesEmbeddings("A.2", ["spleen"], rng.standard_normal((1, writer.dim)),
                                                patient_id="P")], config_hash=ch)
        report = reader.verify()  # was "FAISS index in memory differs from SQL (1 missing, 0 extra)"
        assert report["ok"], report["problems"]
    finally:
        reader.close()
        writer.close()


def _embedding_index(tmp_path):
    return ArchiveIndex.create(tmp_path / "idx", model=tiny_model())


def test_long_finding_names_and_model_hashes_are_refused_up_front(tmp_path):
    from ctglip_sdk.index import SeriesEmbeddings

    idx = _embedding_index(tmp_path)
    try:
        idx.add_embeddings([SeriesEmbeddings("L.1", ["liver"], np.ones((1, idx.dim)))],
                           config_hash=idx.manifest["model"]["config_hash"])
        crop = idx.search(np.ones(idx.dim, np.float32), k=1)[0].crop_id
        with pytest.raises(QueryError, match="too long"):  # SQLite stored it; PostgreSQL raised a DataError
            idx.insert_scores([(crop, "x" * 97, 0.5)])
        with pytest.raises(QueryError, match="model_hash"):
            idx.insert_scores([(crop, "liver_cyst", 0.5)], model_hash="h" * 65)
        with pytest.raises(QueryError, match="too long"):
            idx.score(prompts={"p" * 90: "a calcified liver lesion"})
        with pytest.raises(QueryError, match="tuples"):
            idx.insert_scores([(crop + 0.7, "liver_cyst", 0.5)])  # was stored on crop int(crop + 0.7)
        assert idx.insert_scores([(float(crop), "liver_cyst", 0.5)], model_hash="h" * 64) == 1
    finally:
        idx.close()


def test_export_to_an_unwritable_place_is_an_input_error(tmp_path):
    from click.testing import CliRunner

    from ctglip_sdk.cli.main import cli
    from ctglip_sdk.errors import InputError

    idx = _embedding_index(tmp_path)
    (tmp_path / "file.csv").write_text("x")
    with pytest.raises(InputError, match="cannot write the export"):  # was a raw FileExistsError
        idx.export(tmp_path / "file.csv" / "x.csv", what="organs")
    idx.close()
    res = CliRunner().invoke(cli, ["export", str(tmp_path / "file.csv" / "x.csv"), "--index", str(tmp_path / "idx"),
                                   "--json", "--what", "organs"])
    assert res.exit_code == 1 and json.loads(res.stdout)["type"] == "InputError"


def test_huge_and_tiny_finite_vectors_keep_their_direction(tmp_path):
    from ctglip_sdk.index import SeriesEmbeddings

    idx = _embedding_index(tmp_path)
    direction = np.random.default_rng(8).standard_normal(idx.dim)
    try:
        idx.add_embeddings([SeriesEmbeddings("H.1", ["liver"], (direction * 1e20)[None]),   # stored as zeros before
                            SeriesEmbeddings("H.2", ["spleen"], (direction * 1e-24)[None])],  # refused as "all zeros"
                           config_hash=idx.manifest["model"]["config_hash"])
        hits = idx.search(direction.astype(np.float32), k=2)
        assert sorted(h.organ for h in hits) == ["liver", "spleen"] and min(h.score for h in hits) > 0.99
    finally:
        idx.close()


def test_a_pandas_row_with_empty_cells_is_read_as_missing_values(tmp_path):
    pd = pytest.importorskip("pandas")
    from ctglip_sdk.index import SeriesEmbeddings

    idx = _embedding_index(tmp_path)
    row = pd.DataFrame([{"patient_id": "P-9", "study_uid": None, "age": None, "sex": None, "study_date": None,
                         "birth_year": 1960.0, "description": None}]).iloc[0]  # NaN, NaT, 1960.0 as pandas gives
    try:
        kw = {k: row[k] for k in row.index}
        kw["study_date"] = pd.NaT
        idx.add_embeddings([SeriesEmbeddings("N.1", ["liver"], np.ones((1, idx.dim)), **kw)],
                           config_hash=idx.manifest["model"]["config_hash"])  # was "age must be between 0 and 150"
        hit = idx.search(np.ones(idx.dim, np.float32), k=1)[0]
        assert hit.age is None and hit.sex is None and hit.study_date is None and "nan" not in hit.study_uid
    finally:
        idx.close()


def test_a_stored_key_ending_in_hash_digits_is_not_read_as_a_shown_key(tmp_path):
    from ctglip_sdk.index import SeriesEmbeddings

    idx = _embedding_index(tmp_path)
    rng = np.random.default_rng(9)
    try:
        idx.add_embeddings([SeriesEmbeddings("path:A/ct.nii.gz", ["liver"], rng.standard_normal((1, idx.dim)),
                                             image="A/ct.nii.gz"),
                            SeriesEmbeddings("path:B/CT#1", ["liver"], rng.standard_normal((1, idx.dim)),
                                             image="B/CT#1")],  # a DICOM folder named "CT#1"
                           config_hash=idx.manifest["model"]["config_hash"])
        q = rng.standard_normal(idx.dim).astype(np.float32)
        a = next(h for h in idx.search(q, k=2) if "A/" in h.series_uid)
        got = idx.search(q, k=5, where={"series_uid": "path:B/CT#1"})  # was series A (id 1)
        assert [h.path for h in got] == ["B/CT#1"]
        assert idx.search(q, k=5, where={"series_uid": "path:elsewhere#" + a.series_uid.rsplit("#", 1)[1]}).crop_ids == []
        out = idx.remove(series=["path:B/CT#1"])  # removed both series before
        assert out["series"] == 1 and [h.series_uid for h in idx.search(q, k=5)] == [a.series_uid]
    finally:
        idx.close()


@pytest.mark.parametrize("question, age", [
    ("children with 2-3 appendicoliths", (None, 17)),            # counts stay counts with a children's word
    ("children with 3 or more kidney stones", (None, 17)),
    ("children with more than 3 enlarged lymph nodes", (None, 17)),
])
def test_counts_next_to_a_childrens_word_are_not_ages(question, age):
    assert parse_query(question).where.get("age") == age


@pytest.mark.parametrize("question, organ", [
    ("right lung upper and lower lobe nodules", ["lung_upper_lobe_right", "lung_middle_lobe_right",
                                                 "lung_lower_lobe_right"]),
    ("left lung nodules not in the lower lobe", ["lung_upper_lobe_left", "lung_lower_lobe_left"]),
    ("liver metastases in prostate cancer patients", ["liver"]),  # the finding's organ, not the v2 context word
])
def test_lobe_and_v2_words_do_not_override_what_the_question_asks(question, organ):
    assert parse_query(question).organ == organ


def test_v2_phrases_do_not_match_other_vessels_or_sides():
    from ctglip_sdk.organs_v2_words import v2_named_in

    assert v2_named_in("internal carotid artery stenosis")[0] == ()
    assert v2_named_in("right atrial appendage thrombus")[0] == ()  # v2 has the left appendage only
    assert parse_query("liver cysts in women, excluding men over 80").where.get("sex") is None
    assert parse_query("liver cyst 2020 until the present day").text == "liver cyst"


def test_a_finding_in_the_text_keeps_its_ranking_next_to_a_v2_word(tmp_path):
    idx = _index_v2(tmp_path)
    try:
        res = idx.search("liver metastases from thyroid cancer", k=3)
        assert res.ranking == "finding:liver_mass"  # was cosine within the thyroid
        assert idx.search("thyroid nodule", k=3).ranking == "cosine"
    finally:
        idx.close()


def _index_v2(tmp_path):
    import nibabel as nib

    from test_index_common import AFFINE

    vol, seg = phantom(np.random.default_rng(41))
    root = tmp_path / "arch"
    (root / "s0" / "seg").mkdir(parents=True)
    nib.save(nib.Nifti1Image(vol, AFFINE), root / "s0" / "ct.nii.gz")
    for name, v in zip(("thyroid_gland", "liver"), [v for v in np.unique(seg) if v][:2]):
        nib.save(nib.Nifti1Image((seg == v).astype(np.uint8), AFFINE), root / "s0" / "seg" / f"{name}.nii.gz")
    write_manifest(root, [{"patient_id": "P1", "study_uid": "1.2", "series_uid": "1.2.3", "image": "s0/ct.nii.gz",
                           "mask": "s0/seg", "report": "", "split": "test", "age": "50", "sex": "F",
                           "study_date": "2020-01-01", "contrast": "none"}])
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    assert not idx.ingest(root, workers=0).errors
    return idx
