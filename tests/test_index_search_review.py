"""Search and filter behaviour a review found wrong (2026-12-07), on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest

from ctglip_sdk.errors import QueryError
from ctglip_sdk.index import ArchiveIndex, SeriesEmbeddings
from ctglip_sdk.index.filters import parse_where_expr

from test_index_common import db_params, pg_url, random_prefix, tiny_model


def _rec(series, study, patient, sex, age, date, dim, seed):
    vec = np.random.default_rng(seed).normal(size=(2, dim)).astype(np.float32)
    return SeriesEmbeddings(series, np.array(["liver", "spleen"]), vec, study_uid=study, patient_id=patient,
                            sex=sex, age=age, study_date=date)


@pytest.mark.parametrize("db", db_params())
def test_a_sex_learnt_from_a_later_study_reaches_the_earlier_studies_filters(tmp_path, db):
    model = tiny_model()
    kw = {"database_url": pg_url(), "table_prefix": random_prefix()} if db == "postgres" else {}
    idx = ArchiveIndex.create(tmp_path / "idx", model=model, **kw)
    dim, ch = model.embed_dim, model.config_hash
    idx.add_embeddings([_rec("A.1", "SA", "PX", None, 50, "2020-01-01", dim, 1)], config_hash=ch)
    idx.add_embeddings([_rec("B.1", "SB", "PX", "F", 52, "2022-01-01", dim, 2)], config_hash=ch)
    hits = idx.search(np.ones(dim, np.float32), k=10, where={"sex": "F"})
    assert sorted({h.study_uid for h in hits}) == ["SA", "SB"]  # SA was left out: its organs had no sex
    reopened = ArchiveIndex.open(tmp_path / "idx")
    assert sorted({h.study_uid for h in reopened.search(np.ones(dim, np.float32), k=10, where={"sex": "F"})}) == \
        ["SA", "SB"]
    if db == "postgres":
        idx.store.drop_all()


def test_not_equal_is_refused_for_ranges():
    with pytest.raises(QueryError, match="'!=' is not supported"):
        parse_where_expr(["age!=60"])  # was read as age = 60
    with pytest.raises(QueryError, match="'!=' is not supported"):
        parse_where_expr(["study_date!=2021-01-01"])
    assert parse_where_expr(["age>=60", "age<=70"]) == {"age": (60.0, 70.0)}


def test_an_organ_no_stored_organ_has_gives_a_note(tmp_path):
    model = tiny_model()
    idx = ArchiveIndex.create(tmp_path / "idx", model=model)
    idx.add_embeddings([_rec("A.1", "SA", "PX", "F", 50, "2020-01-01", model.embed_dim, 1)],
                       config_hash=model.config_hash)
    res = idx.search(np.ones(model.embed_dim, np.float32), k=5, organ="prostate")
    assert len(res) == 0 and any("no organ of this index is named prostate" in n for n in res.notes)
    assert idx.search(np.ones(model.embed_dim, np.float32), k=5, organ="liver").notes == []
