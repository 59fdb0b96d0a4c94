"""Storage layers of the index without a model: stored vectors, FAISS wrapper, SQL store, filters and planner."""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pytest

from ctglip_sdk.errors import ConfigError, IndexStateError, QueryError
from ctglip_sdk.index.ann import AnnIndex, choose_factory
from ctglip_sdk.index.filters import parse_where, parse_where_expr
from ctglip_sdk.index.mirror import Mirror
from ctglip_sdk.index.planner import Planner, exact_topk
from ctglip_sdk.index.store import Store
from ctglip_sdk.index.vectors import VectorStore

from test_index_common import db_params, pg_url, random_prefix


def clustered(n: int, d: int, seed: int = 0, k: int = 20) -> np.ndarray:
    """Unit vectors around k centres (real embeddings are clustered; uniform ones make ANN look broken)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    x = centres[rng.integers(0, k, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- stored vectors --------------------------------------------------------------------------------------------
def test_vector_store_append_gather_truncate_and_compact(tmp_path):
    vs = VectorStore.create(tmp_path / "v.f16", dim=8)
    x = clustered(10, 8)
    vs.append(np.arange(1, 6), x[:5])
    vs.append(np.arange(6, 11), x[5:])
    np.testing.assert_allclose(vs.gather(np.array([3, 9])), x[[2, 8]], atol=2e-3)  # float16 storage
    with pytest.raises(IndexStateError):
        vs.append(np.array([4]), x[:1])  # ids must follow the stored ones
    with open(vs.path, "ab") as fh:  # a crash in the middle of a record
        fh.write(b"\x01\x02\x03")
    assert vs.n_records == 10
    assert vs.truncate_uncommitted(next_id=9) == 2  # records 9 and 10 were never committed
    assert vs.path.stat().st_size == 64 + 8 * vs.dtype.itemsize
    with pytest.raises(IndexStateError, match="missing"):
        vs.gather(np.array([9]))
    assert vs.compact([1, 2, 8]) == 5
    ids, v = VectorStore.open(vs.path, 8).read()
    assert ids.tolist() == [1, 2, 8]
    np.testing.assert_allclose(np.asarray(v, np.float32), x[[0, 1, 7]], atol=2e-3)
    with pytest.raises(IndexStateError, match="dimension"):
        VectorStore.open(vs.path, 16)


# -- FAISS wrapper ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW16"])
def test_ann_ids_are_sql_keys_and_selector_restricts(tmp_path, factory):
    x = clustered(3000, 32, seed=1)
    ids = np.arange(100, 3100, dtype=np.int64) * 3  # sparse, non-positional ids
    ann = AnnIndex.build(32, factory)
    ann.train(x)
    ann.add(ids, x)
    assert sorted(ann.ids().tolist()) == ids.tolist()
    member = np.zeros(int(ids.max()) + 1, bool)
    member[ids[::7]] = True
    s, found = ann.search(x[:1], 10, bitmap=np.packbits(member, bitorder="little"), selectivity=1 / 7)
    assert found[0][0] == ids[0] and all(member[i] for i in found[0] if i >= 0)
    ann.tune(ids, x, target_recall=0.9)
    path = tmp_path / "a.faiss"
    checksum = ann.save(path)
    back = AnnIndex.load(path, factory)
    assert back.kind == ann.kind and back.params == ann.params and checksum.startswith("crc32:")
    removed = back.remove(ids[:10])
    if factory == "HNSW16":
        assert removed is False  # HNSW cannot remove: the index rebuilds instead
    else:
        assert removed and back.ntotal == ids.size - 10
        s2, f2 = back.search(x[:1], 5)
        assert ids[0] not in f2[0]


def test_choose_factory_by_size_and_budget():
    assert choose_factory(10_000, 256) == "Flat"
    assert choose_factory(1_000_000, 256) == "IVF4096,Flat"
    assert choose_factory(1_000_000, 256, memory_budget=512 << 20) == "IVF4096,SQ8"
    assert choose_factory(20_000_000, 512, memory_budget=1 << 30).startswith("IVF16384,PQ")
    with pytest.raises(ConfigError, match="factory"):
        AnnIndex.build(8, "NotAnIndex")


# -- filters -----------------------------------------------------------------------------------------------------
def test_where_allowlist_and_values():
    conds = {c.key: c for c in parse_where({"age": (60, None), "sex": "female", "study_date": ("2020-01-01", None),
                                            "contrast": True, "split": ["test", "val"]})}
    assert conds["age"].lo == 60 and conds["age"].hi is None
    assert conds["sex"].values == ("F",) and conds["contrast"].flag is True
    assert conds["study_date"].lo == dt.date(2020, 1, 1) and conds["split"].values == ("test", "val")
    for bad in ({"ssn": "1"}, {"age": (80, 60)}, {"age": "old"}, {"sex": "X"}, {"study_date": "last week"},
                {"age": (None, None)}, {"split": []}):
        with pytest.raises(QueryError):
            parse_where(bad)
    assert parse_where_expr(["age>=60", "age<=80", "sex=F", "contrast=false"]) == \
        {"age": (60.0, 80.0), "sex": "F", "contrast": False}
    # "no"/"native"/"yes" answer the yes/no question; anything else is a phase stored verbatim
    assert [parse_where_expr([f"contrast={v}"])["contrast"] for v in ("no", "Native", "yes", "portal_venous")] == \
        [False, False, True, "portal_venous"]
    assert parse_where({"contrast": "none"})[0].flag is False
    with pytest.raises(QueryError):
        parse_where_expr(["sex>=F"])


# -- SQL + mirror + planner against brute force -------------------------------------------------------------------
def _populate(store: Store, n_studies: int, organs_per: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    organ_names = ["liver", "spleen", "kidney_left", "kidney_right", "lung_upper_lobe_left"][:organs_per]
    vecs = clustered(n_studies * organs_per, d, seed)
    rows, oid = [], 1

    def tx(conn):
        nonlocal oid
        for s in range(n_studies):
            sex = ["M", "F", None][s % 3]
            pid, _ = store.ensure_patient(conn, f"p{s % 50}", None, sex, None)
            age = None if s % 17 == 0 else float(rng.integers(20, 90))
            date = dt.date(2015, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3000)))
            contrast = ["venous", "none", None, "arterial"][s % 4]
            sid, srow, _ = store.ensure_study(conn, f"st{s}", pid, {"age": age, "study_date": date, "contrast": contrast,
                                                                "body_part": "ABDOMEN", "split": ["train", "test"][s % 2]})
            ser = store.insert_series(conn, {"series_uid": f"se{s}", "study_id": sid, "path": f"s{s}/ct.nii.gz",
                                             "fingerprint": "x", "n_organs": organs_per})
            batch = []
            for name in organ_names:
                batch.append({"id": oid, "series_id": ser, "study_id": sid, "patient_id": pid, "organ": name,
                              "i0": 0, "j0": 0, "k0": 0, "i1": 1, "j1": 1, "k1": 1, "volume_ml": float(rng.uniform(1, 900)),
                              "mean_hu": 40.0, "age": srow["age"], "sex": sex, "study_date": srow["study_date"]})
                rows.append((oid, name, srow["age"], sex, srow["study_date"], contrast, "ABDOMEN", ["train", "test"][s % 2]))
                oid += 1
            store.insert_organs(conn, batch)
    store.write(tx)
    return rows, vecs


@pytest.fixture(params=db_params())
def store(request):
    url = pg_url() if request.param == "postgres" else f"sqlite:///{request.getfixturevalue('tmp_path')}/s.db"
    st = Store(url, random_prefix())
    st.init_schema()
    yield st
    st.drop_all()
    st.dispose()


def test_store_schema_version_and_migrations_are_recorded(store):
    # idempotent (2: series.shown_path, 3: series.content_digest, both 2026-12-07)
    assert store.schema_version() == 3 == store.init_schema()
    store.write(lambda c: store.set_meta(c, "k", "v1"))
    store.write(lambda c: store.set_meta(c, "k", "v2"))
    assert store.get_meta("k") == "v2"


FILTER_CASES = [
    (None, None),
    (["liver"], None),
    (None, {"age": (60, None)}),
    (["kidney_left", "kidney_right"], {"sex": "F", "age": (None, 50)}),
    (["spleen"], {"study_date": ("2017-01-01", "2018-06-30"), "contrast": True}),
    (None, {"contrast": False, "split": "test"}),
    (["liver"], {"volume_ml": (100, 400)}),          # not mirrored: answered by SQL
    (None, {"study_uid": ["st3", "st5"]}),            # tight: exact path
    (["liver"], {"patient": "p7", "age": (0, 200)}),  # SQL path with a mirrored key mixed in
]


def test_filtered_search_paths_agree_with_brute_force(store):
    from ctglip_sdk.index import queries

    d = 32
    rows, vecs = _populate(store, n_studies=600, organs_per=5, d=d)
    mirror = Mirror(d)
    mirror.load(store.mirror_rows(), vecs)
    view = mirror.view()
    ann = AnnIndex.build(d, "Flat")
    ann.add(view.ids, view.vecs)

    class Fake:  # the planner's SQL callback only needs the store
        pass

    fake = Fake()
    fake.store = store
    q = vecs[11] + 0.05
    q = q / np.linalg.norm(q)
    for organs, where in FILTER_CASES:
        conds = parse_where(where)
        truth_ids = queries._filtered_ids(fake, organs, conds)
        # brute force over the truth set from SQL
        rows_t = np.searchsorted(view.ids, truth_ids)
        s = vecs[rows_t] @ q
        expect = truth_ids[np.argsort(-s, kind="stable")[:10]]
        mask = view.mask(organs, [c for c in conds if c.mirrored])
        if all(c.mirrored for c in conds):
            got_mask_ids = view.ids if mask is None else view.ids[mask]
            assert got_mask_ids.tolist() == truth_ids.tolist(), (organs, where)  # mirror == SQL
        for planner in (Planner(exact_max=10 ** 9), Planner(exact_max=0, gather_cost=1e9)):
            scores, ids, plan = planner.search(view, ann, q, 10, organs, conds,
                                               lambda: queries._filtered_ids(fake, organs, conds))
            assert ids.tolist() == expect.tolist(), (organs, where, plan)
            assert plan.source == ("sql" if any(not c.mirrored for c in conds) else
                                   "none" if organs is None and not conds else "mirror")


def test_planner_chooses_by_subset_size_and_ivf_bitmap_keeps_recall():
    d, n = 32, 20_000
    x = clustered(n, d, seed=3)
    ids = np.arange(1, n + 1, dtype=np.int64)
    mirror = Mirror(d)
    mirror.load([(int(i), "liver" if i % 10 == 0 else "spleen", 50.0, "M", None, None, None, None) for i in ids], x)
    view = mirror.view()
    ivf = AnnIndex.build(d, "IVF64,Flat")
    ivf.train(x)
    ivf.add(ids, x)
    ivf.tune(ids, x, target_recall=0.95)
    p = Planner()
    assert p.choose(100, n, ivf) == "exact"
    assert p.choose(n, n, ivf) == "faiss"
    recalls = []
    for qi in range(0, 200, 20):
        q = x[qi]
        truth = exact_topk(view.vecs, q, 10, mask=view.mask(["liver"], []))[1]
        for organs in (["liver"], None):
            scores, got, plan = p.search(view, ivf, q, 10, organs, [], lambda: np.zeros(0))
            if organs is None:
                continue
            recalls.append(len(set(got.tolist()) & set(view.ids[truth].tolist())) / 10)
    assert np.mean(recalls) >= 0.95


def test_store_retries_busy_sqlite(tmp_path):
    import sqlite3
    import threading
    import time

    st = Store(f"sqlite:///{tmp_path}/busy.db", "b_")
    st.init_schema()
    raw = sqlite3.connect(tmp_path / "busy.db", isolation_level=None, check_same_thread=False)
    raw.execute("BEGIN IMMEDIATE")  # another writer holds the database for a while
    threading.Timer(0.5, lambda: raw.execute("COMMIT")).start()
    t0 = time.perf_counter()
    st.write(lambda c: st.set_meta(c, "k", "v"))
    assert st.get_meta("k") == "v" and time.perf_counter() - t0 >= 0.4
    raw.close()
    assert os.path.exists(tmp_path / "busy.db-wal")


def test_sqlite_busy_pragma_matches_timeout():
    from ctglip_sdk.index import engine as store

    assert store._BUSY_PRAGMA == f"PRAGMA busy_timeout={store._BUSY_MS}"


def test_a_read_only_sqlite_index_can_be_searched_but_not_written(tmp_path, monkeypatch):
    """A published read-only index used to fail every command, search included ("PRAGMA journal_mode=WAL")."""
    import os

    import numpy as np

    from ctglip_sdk.errors import IndexStateError
    from ctglip_sdk.index import ArchiveIndex
    from ctglip_sdk.index import engine as store_mod
    from test_index_common import make_archive, tiny_model

    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    idx.ingest(make_archive(tmp_path / "a", n=2, seed=1), workers=0)
    expect = idx.search(np.ones(idx.dim, np.float32), k=3).crop_ids
    idx.close()
    db = str(tmp_path / "idx" / "index.sqlite")
    real_access = os.access
    # Tests run as root, which file modes do not stop: present the database as unwritable instead.
    monkeypatch.setattr(store_mod.os, "access", lambda p, mode: False if mode == os.W_OK and
                        os.path.abspath(p) in (db, os.path.dirname(db)) else real_access(p, mode))
    ro = ArchiveIndex.open(tmp_path / "idx")
    assert ro.search(np.ones(ro.dim, np.float32), k=3).crop_ids == expect
    with pytest.raises(IndexStateError, match="read-only"):
        ro.score()
    ro.close()


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path):
    pytest.importorskip("psycopg")
    from ctglip_sdk.errors import ConfigError
    from ctglip_sdk.index import ArchiveIndex
    from test_index_common import tiny_model

    ArchiveIndex.create(tmp_path / "idx", model=tiny_model()).close()
    with pytest.raises(ConfigError, match=r"cannot use database 'postgresql\+psycopg://u:\*\*\*@127.0.0.1:1/x'") as err:
        ArchiveIndex.open(tmp_path / "idx", database_url="postgresql+psycopg://u:S3cret@127.0.0.1:1/x")
    assert "S3cret" not in str(err.value) and "\n" not in str(err.value)


def test_a_missing_sqlite_file_is_named_and_not_recreated_empty(tmp_path):
    from ctglip_sdk.errors import IndexStateError
    from ctglip_sdk.index import ArchiveIndex
    from test_index_common import tiny_model

    ArchiveIndex.create(tmp_path / "idx", model=tiny_model()).close()
    (tmp_path / "idx" / "index.sqlite").unlink()
    with pytest.raises(IndexStateError, match="index.sqlite is missing"):
        ArchiveIndex.open(tmp_path / "idx")
    assert not (tmp_path / "idx" / "index.sqlite").exists()
