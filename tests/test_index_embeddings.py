"""ArchiveIndex.add_embeddings: precomputed organ vectors + study metadata through ingest's write path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from ctglip_sdk.errors import IndexStateError, InputError
from ctglip_sdk.index import ArchiveIndex, SeriesEmbeddings

from test_index_common import db_params, make_archive, pg_url, random_prefix, read_manifest, tiny_model

ORGANS = ["liver", "spleen", "kidney_left", "kidney_right"]


def records(dim, n_series=6, seed=0, organs=ORGANS):
    """Deterministic records: every other series with boxes and volumes, the rest without."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_series):
        m = len(organs)
        boxed = i % 2 == 0
        out.append(SeriesEmbeddings(
            series_uid=f"1.2.826.9.{seed}.{i}.1", organs=list(organs), vectors=rng.standard_normal((m, dim)),
            bboxes=np.tile([[1, 2, 3, 11, 12, 13]], (m, 1)) + i if boxed else None,
            volumes_ml=np.linspace(50, 1500, m) if boxed else None, mean_hu=np.full(m, 40.0) if boxed else None,
            study_uid=f"1.2.826.9.{seed}.{i}", patient_id=f"PAT-{i % 3}", sex="F" if i % 3 == 1 else "M",
            age=40 + 5 * i,
            study_date=f"2020-01-{i + 1:02d}", contrast=["portal_venous", "none"][i % 2], split="test",
            description="CT abdomen", image=f"s{i}/ct.nii.gz", shape=(40, 40, 24), spacing=(4.0, 4.0, 5.0),
            affine=np.diag([4.0, 4.0, 5.0, 1.0])))
    return out


def _create(path, kind="sqlite", **kw):
    url = pg_url() if kind == "postgres" else None
    return ArchiveIndex.create(path, model=tiny_model(), database_url=url,
                               table_prefix=random_prefix() if url else "ctglip_", **kw), url


def _drop(idx):
    if idx.store.dialect != "sqlite":
        idx.store.drop_all()
    idx.close()


def _state(idx):
    """(series_uid, organ, age, sex, rounded vector) of every stored organ, and the organ count."""
    df = pd.read_csv(idx.export(idx.folder.parent / f"{idx.folder.name}_state.csv", what="organs"))
    view = idx.mirror.view()
    vecs = np.round(view.vecs[view.rows_of(df.crop_id.to_numpy())], 3)
    return sorted(zip(df.series_uid, df.organ, df.age, df.sex, map(bytes, vecs))), len(idx)


@pytest.mark.parametrize("db", db_params())
def test_add_embeddings_round_trip_idempotent_and_replace(tmp_path, db):
    model = tiny_model()
    idx, url = _create(tmp_path / "idx", db)
    try:
        recs = records(idx.dim)
        rep = idx.add_embeddings(recs, config_hash=model.config_hash, batch_size=4, source="gpu-run-1")
        assert (rep.seen, rep.ok, rep.skipped, rep.organs_added, rep.organs_removed) == (6, 6, 0, 24, 0)
        assert rep.archive == "gpu-run-1" and rep.timings["write"] > 0 and len(idx) == 24
        # The stored vector of a record finds that record first, with the record's metadata.
        hit = idx.search(recs[2].vectors[1], k=1)[0]
        assert (hit.organ, hit.series_uid, hit.study_uid) == ("spleen", recs[2].series_uid, recs[2].study_uid)
        assert hit.score > 0.999 and hit.patient == idx.pseudonym("PAT-2") and "PAT" not in hit.patient
        assert (hit.age, hit.sex, hit.study_date, hit.path) == (50.0, "M", "2020-01-03", "s2/ct.nii.gz")
        assert hit.bbox == (3, 4, 5, 13, 14, 15) and hit.volume_ml == pytest.approx(533.33, abs=0.01)
        no_box = idx.search(recs[1].vectors[0], k=1)[0]
        assert no_box.series_uid == recs[1].series_uid and no_box.bbox == (None,) * 6 and no_box.volume_ml is None
        # Filters answered from the mirror and from SQL see the added organs.
        women = idx.search(recs[0].vectors[0], k=50, organ="kidney", where={"sex": "F"})
        assert len(women) == 4 and {h.organ for h in women} == {"kidney_left", "kidney_right"}
        assert {h.series_uid for h in women} == {recs[1].series_uid, recs[4].series_uid}
        assert len(idx.search(recs[0].vectors[0], k=50, organ="liver", where={"contrast": False})) == 3
        assert len(idx.search(recs[0].vectors[0], k=50, where={"volume_ml": (0, None)})) == 12
        report = idx.verify()
        assert report["ok"] and not report["problems"] and report["faiss_file"]["missing"] == 0
        before = _state(idx)
        # A fresh process sees the same index.
        again = ArchiveIndex.open(idx.folder, database_url=url)
        assert _state(again) == before and again.search(recs[2].vectors[1], k=1)[0].crop_id == hit.crop_id
        again.close()
        # Adding the same records again adds nothing; changed vectors replace their series.
        rep = idx.add_embeddings(recs, config_hash=model.config_hash)
        assert (rep.ok, rep.skipped, rep.organs_added) == (0, 6, 0) and _state(idx) == before
        recs[0].vectors = recs[0].vectors + 1.0
        rep = idx.add_embeddings(recs, config_hash=model.config_hash)
        assert (rep.ok, rep.skipped, rep.organs_added, rep.organs_removed) == (1, 5, 4, 4) and len(idx) == 24
        assert idx.search(recs[0].vectors[0], k=1)[0].crop_id > 24  # new ids; the old ones are never reused
        # The same vectors with corrected metadata replace the series (they used to be skipped as unchanged).
        recs[3].age, recs[3].split = 61.0, "train"
        rep = idx.add_embeddings(recs, config_hash=model.config_hash)
        assert (rep.ok, rep.skipped) == (1, 5)
        fixed = idx.search(recs[3].vectors[0], k=50, where={"age": (61, 61), "split": "train"})
        assert {h.series_uid for h in fixed} == {recs[3].series_uid}
        assert idx.verify()["ok"]
    finally:
        _drop(idx)


def test_one_record_synonyms_and_defaults(tmp_path):
    idx, _ = _create(tmp_path / "idx")
    vec = np.random.default_rng(3).standard_normal((2, idx.dim)).astype(np.float32)
    rec = SeriesEmbeddings("9.9.9", np.array(["left kidney", "hepatic"]), vec * 7.0)
    rep = idx.add_embeddings(rec, config_hash=tiny_model().config_hash)
    assert rep.ok == 1 and rep.organs_added == 2
    hits = idx.search(vec[0], k=2)
    assert [h.organ for h in hits] == ["kidney_left", "liver"]
    assert hits[0].study_uid == "series:9.9.9" and hits[0].age is None and hits[0].path == ""
    assert np.linalg.norm(idx.mirror.view().vecs, axis=1) == pytest.approx(1.0, abs=1e-3)  # stored unit norm
    assert hits[0].patient == idx.pseudonym("unknown:9.9.9")
    idx.close()


@pytest.fixture(scope="module")
def empty_index(tmp_path_factory):
    idx = _create(tmp_path_factory.mktemp("bad") / "idx")[0]
    yield idx
    idx.close()


def _bad(dim, **change):
    rec = records(dim, n_series=1)[0]
    for k, v in change.items():
        setattr(rec, k, v(rec) if callable(v) else v)
    return rec


@pytest.mark.parametrize("change,match", [
    ({"vectors": lambda r: r.vectors[:, :7]}, "7 columns, the index's model gives"),
    ({"vectors": lambda r: np.where(np.arange(r.vectors.shape[1]) == 3, np.nan, r.vectors)}, "non-finite"),
    ({"vectors": lambda r: r.vectors * np.array([[1], [0], [1], [1]])}, "'spleen' is all zeros"),
    ({"vectors": lambda r: r.vectors[:3]}, r"one row per organ"),
    ({"organs": ["liver", "spleen", "kidney_left", "brain stemm"]}, "unknown organ"),
    ({"organs": ["liver", "spleen", "kidney", "aorta"]}, "names 2 classes"),
    ({"organs": ["liver", "spleen", "spleen", "aorta"]}, "spleen appear more than once"),
    ({"bboxes": np.zeros((4, 5))}, r"bboxes must have shape \(4, 6\)"),
    ({"bboxes": np.tile([[5, 5, 5, 1, 1, 1]], (4, 1))}, "i1 >= i0"),
    ({"volumes_ml": [1.0, 2.0, np.inf, 3.0]}, "volumes_ml holds non-finite"),
    ({"sex": "X"}, "sex must be M, F or O"),
    ({"study_date": "yesterday"}, "cannot read 'yesterday' as a date"),
    ({"age": -3}, "age must be between 0 and 150"),
    ({"series_uid": ""}, "series_uid must be a non-empty string"),
])
def test_bad_records_raise_input_error_naming_the_series(empty_index, change, match):
    idx = empty_index
    rec = _bad(idx.dim, **change)
    with pytest.raises(InputError, match=match) as err:
        idx.add_embeddings([rec], config_hash=tiny_model().config_hash)
    if rec.series_uid:
        assert f"series {rec.series_uid} (study {rec.study_uid})" in str(err.value)
    assert len(idx) == 0




def test_model_mismatch_and_batch_semantics(tmp_path):
    idx, _ = _create(tmp_path / "idx")
    recs = records(idx.dim, n_series=4)
    with pytest.raises(IndexStateError, match="not comparable"):
        idx.add_embeddings(recs, config_hash="0" * 64)
    rec_w = idx.manifest["model"].get("weights_hash")
    if rec_w:
        with pytest.raises(IndexStateError, match="other weights"):
            idx.add_embeddings(recs, config_hash=tiny_model().config_hash, weights_hash="f" * 64)
    with pytest.raises(InputError, match="given twice"):
        idx.add_embeddings([recs[0], recs[0]], config_hash=tiny_model().config_hash)
    with pytest.raises(InputError, match="batch_size"):
        idx.add_embeddings(recs, config_hash=tiny_model().config_hash, batch_size=0)
    assert len(idx) == 0
    # batch_size=2, the 4th record is bad: the first batch is committed, nothing of the second.
    recs[3].vectors = recs[3].vectors[:, :5]
    with pytest.raises(InputError, match=recs[3].series_uid):
        idx.add_embeddings(iter(recs), config_hash=tiny_model().config_hash, batch_size=2)
    assert len(idx) == 8 and idx.verify()["ok"]
    runs = idx.store.t.ingest_runs
    assert idx.store.read(lambda c: c.execute(select(runs.c.status).order_by(runs.c.id.desc())).scalar()) == \
        "interrupted"
    recs[3].vectors = np.ones((4, idx.dim))
    rep = idx.add_embeddings(recs, config_hash=tiny_model().config_hash, batch_size=2)
    assert (rep.ok, rep.skipped, len(idx)) == (2, 2, 16)
    idx.close()


def test_vectors_from_encode_organs_match_ingest(tmp_path):
    """Embeddings computed elsewhere with model.encode_organs land as ingest would have stored them."""
    import ctglip_sdk as cg

    model = tiny_model()
    archive = make_archive(tmp_path / "a", n=2, seed=5)
    ingested = ArchiveIndex.create(tmp_path / "ingested", model=model)
    assert ingested.ingest(archive, workers=0).ok == 2
    added = ArchiveIndex.create(tmp_path / "added", model=model)
    recs = []
    for row in read_manifest(archive):
        vol = cg.load_volume(archive / row["image"])
        emb = model.encode_organs(vol, cg.load_segmentation(archive / row["mask"], like=vol))
        recs.append(SeriesEmbeddings.from_organ_embeddings(
            emb, row["series_uid"], study_uid=row["study_uid"], patient_id=row["patient_id"], sex=row["sex"],
            age=row["age"], study_date=row["study_date"], contrast=row["contrast"], split=row["split"],
            image=row["image"], mask=row["mask"], shape=vol.shape, spacing=vol.spacing, affine=vol.affine))
    rep = added.add_embeddings(recs, config_hash=model.config_hash, weights_hash=model.weights_hash())
    assert rep.ok == 2
    a, b = (pd.read_csv(i.export(tmp_path / f"{n}.csv", what="organs")).sort_values(["series_uid", "organ"])
            for n, i in (("ing", ingested), ("add", added)))
    cols = ["series_uid", "organ", "age", "sex", "i0", "j0", "k0", "i1", "j1", "k1"]
    cols = [c for c in cols if c in a.columns]
    assert a[cols].reset_index(drop=True).equals(b[cols].reset_index(drop=True))
    va, vb = (i.mirror.view() for i in (ingested, added))
    ra, rb = va.rows_of(a.crop_id.to_numpy()), vb.rows_of(b.crop_id.to_numpy())
    assert np.abs(va.vecs[ra] - vb.vecs[rb]).max() < 2e-3
    q = "hypodense liver lesion"
    assert [(h.series_uid, h.organ) for h in ingested.search(q, k=5)] == \
        [(h.series_uid, h.organ) for h in added.search(q, k=5)]
    ingested.close()
    added.close()


def test_requested_ivf_factory_is_built_at_the_end(tmp_path):
    idx, _ = _create(tmp_path / "idx", factory="IVF64,Flat")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((64, idx.dim))
    organs = ["liver", "spleen", "kidney_left", "kidney_right", "pancreas", "aorta", "stomach", "gallbladder"]
    recs = [SeriesEmbeddings(f"7.{i}", organs,
                             centres[rng.integers(0, 64, 8)] + 0.3 * rng.standard_normal((8, idx.dim)))
            for i in range(400)]
    rep = idx.add_embeddings(recs, config_hash=tiny_model().config_hash, batch_size=100)
    assert rep.organs_added == 3200 and idx.ann.factory == "IVF64,Flat" and idx.ann.kind == "ivf"
    assert idx.search(recs[17].vectors[3], k=1)[0].series_uid == "7.17"
    assert idx.verify()["ok"]
    idx.close()


CHILD = textwrap.dedent('''
    import os, signal, sys
    sys.path.insert(0, sys.argv[3])
    from ctglip_sdk.index import ArchiveIndex, vectors
    from test_index_embeddings import records
    calls = {"n": 0}
    orig = vectors.VectorStore.append
    def append(self, ids, vecs):
        out = orig(self, ids, vecs)
        calls["n"] += 1
        if calls["n"] == 2:  # the 2nd batch's vectors are on disk (fsynced), its SQL rows not committed
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    vectors.VectorStore.append = append
    idx = ArchiveIndex.open(sys.argv[1], database_url=sys.argv[2] or None)
    idx.add_embeddings(records(idx.dim, n_series=6), config_hash=idx.manifest["model"]["config_hash"], batch_size=2)
''')


@pytest.mark.parametrize("db", db_params())
def test_kill9_between_vector_append_and_sql_commit(tmp_path, db):
    ref, _ = _create(tmp_path / "ref")
    ref.add_embeddings(records(ref.dim, n_series=6), config_hash=tiny_model().config_hash, batch_size=2)
    reference = _state(ref)
    ref.close()
    idx, url = _create(tmp_path / "idx", db)
    idx.close()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "idx"), url or "", str(Path(__file__).parent)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    idx = ArchiveIndex.open(tmp_path / "idx", database_url=url)
    try:
        assert len(idx) == 8  # the first batch
        report = idx.verify()
        assert report["ok"] and not report["problems"]
        rep = idx.add_embeddings(records(idx.dim, n_series=6), config_hash=tiny_model().config_hash)
        assert (rep.ok, rep.skipped) == (4, 2)
        assert idx.verify()["ok"] and _state(idx) == reference
    finally:
        _drop(idx)
