"""where={"patient_id": <raw ID>} finds the patient's organs (it matched nothing): the raw ID is turned into the
index's pseudonym, and never sent to SQL."""

from __future__ import annotations

import logging

import pytest

from ctglip_sdk.index import ArchiveIndex
from test_index_common import make_archive, read_manifest, tiny_model


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("patients")
    root = make_archive(tmp / "arch", n=4, n_patients=2)
    idx = ArchiveIndex.create(tmp / "idx", model=tiny_model())
    idx.ingest(root, progress=False)
    idx.score(findings=["hepatomegaly"])
    yield idx, read_manifest(root)
    idx.close()


def test_a_raw_patient_id_in_where_filters_by_its_pseudonym(built, caplog):
    idx, rows = built
    raw = rows[0]["patient_id"]  # "PAT-0000"
    studies = {r["study_uid"] for r in rows if r["patient_id"] == raw}
    pseudonym = idx.find_patient(raw)
    by_raw = idx.search("liver", k=50, where={"patient_id": raw}, rank="cosine")
    by_pseudonym = idx.search("liver", k=50, where={"patient": pseudonym}, rank="cosine")
    assert by_raw.crop_ids == by_pseudonym.crop_ids and by_raw.crop_ids  # the raw ID matched nothing
    assert {h.study_uid for h in by_raw} == studies
    cohort = idx.cohort(all_of=["hepatomegaly"], where={"patient_id": raw}, threshold=0.0)
    assert {m["patient"] for m in cohort.to_dicts()} == {pseudonym}
    similar = idx.similar(by_raw.crop_ids[0], k=20, where={"patient_id": raw})
    assert similar.crop_ids and {h.study_uid for h in similar} <= studies


def test_an_unknown_raw_id_matches_nothing_and_is_not_echoed(built, caplog):
    idx, _ = built
    with caplog.at_level(logging.DEBUG):
        res = idx.search("liver", k=50, where={"patient_id": "MRN-424242"}, rank="cosine")
    assert res.crop_ids == [] and "MRN-424242" not in caplog.text and "MRN-424242" not in " ".join(res.notes)
