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
