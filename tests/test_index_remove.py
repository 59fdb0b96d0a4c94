"""Removing series, studies and patients: SQL rows, FAISS ids and stored vectors go; the rest stays intact."""

from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ctglip_sdk.cli.main import cli
from ctglip_sdk.errors import InputError
from ctglip_sdk.index import ArchiveIndex

from test_index_common import db_params, make_archive, pg_url, random_prefix, tiny_model

# make_archive: 8 studies, patients PAT-0000..PAT-0003 (study i belongs to patient i % 4), 5 organs each.
SERIES = [f"1.2.826.0.1.9.{i}.1" for i in range(8)]
STUDIES = [f"1.2.826.0.1.9.{i}" for i in range(8)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("rm") / "a", n=8, seed=9)


def _built(folder, kind, archive, factory=None):
    url = pg_url() if kind == "postgres" else None
    idx = ArchiveIndex.create(folder, model=tiny_model(), database_url=url,
                              table_prefix=random_prefix() if url else "ctglip_", factory=factory)
    idx.ingest(archive, workers=0)
    return idx


def _close(idx):
    if idx.store.dialect != "sqlite":
        idx.store.drop_all()
    idx.close()


def _rows(idx, what="organs"):
    return pd.read_csv(idx.export(idx.folder.parent / f"{idx.folder.name}_{what}.csv", what=what))


@pytest.mark.parametrize("kind", db_params())
def test_remove_series_study_and_patient_leaves_the_rest_exactly(tmp_path, archive, kind):
    idx = _built(tmp_path / "i", kind, archive)
    try:
        before = _rows(idx)
        keep = before[~before.series_uid.isin([SERIES[0], SERIES[5], SERIES[2], SERIES[6]])]
        vec_before = {int(r.crop_id): idx.mirror.view().vecs[idx.mirror.view().rows_of(np.array([r.crop_id]))][0]
                      for r in keep.itertuples()}
        idx.score(["liver_cyst"])  # scores of removed organs must go with them
        scored = set(_rows(idx, "scores").crop_id)
        assert scored - set(keep.crop_id)  # some of the organs to remove have scores
        # study 0 by series, study 5 by study UID, patient PAT-0002 (studies 2 and 6) by the archive's id
        out = idx.remove(series=[SERIES[0], "1.2.3.not-there"], studies=[STUDIES[5]],
                         patients=["PAT-0002", "PAT-9999"])
        assert out["series"] == 4 and out["organs"] == 20 and out["vectors_erased"] == 20
        assert out["studies"] == 4 and out["patients"] == 1  # PAT-0000 and PAT-0001 keep other studies
        assert out["not_found"] == {"series": ["1.2.3.not-there"], "studies": [], "patients": 1}
        assert "PAT-" not in json.dumps(out)  # identifiers are never echoed
        after = _rows(idx)
        assert sorted(after.crop_id) == sorted(keep.crop_id)
        assert set(_rows(idx, "studies").study_uid) == {STUDIES[i] for i in (1, 3, 4, 7)}
        assert set(_rows(idx, "scores").crop_id) == scored & set(keep.crop_id)
        assert idx.find_patient("PAT-0002") is None and idx.find_patient("PAT-0000") is not None
        # FAISS, the vector file and SQL agree; the kept vectors are untouched
        rep = idx.verify()
        assert rep["ok"] and not rep["problems"], rep
        assert idx.ann.ntotal == len(keep) == len(idx.vectors.read()[0])
        view = idx.mirror.view()
        for cid, v in vec_before.items():
            assert np.array_equal(view.vecs[view.rows_of(np.array([cid]))][0], v)
        hits = idx.search("liver", k=100)
        assert {h.series_uid for h in hits}.isdisjoint({SERIES[0], SERIES[5], SERIES[2], SERIES[6]})
        # the ingest records of removed series go too (their reasons could name paths)
        ingest = _rows(idx, "ingest")
        assert set(ingest.series_uid).isdisjoint({SERIES[0], SERIES[5], SERIES[2], SERIES[6]})
        folder, url = idx.folder, idx.store.url if kind == "postgres" else None
        idx.close()
        # a fresh process-level open sees the same state, and a second removal is a no-op
        idx = ArchiveIndex.open(folder, database_url=url)
        assert sorted(_rows(idx).crop_id) == sorted(keep.crop_id) and idx.verify()["ok"]
        again = idx.remove(series=[SERIES[0]])
        assert again["series"] == 0 and again["not_found"]["series"] == [SERIES[0]]
        # the archive still holds them: the next ingest brings the four series back, nothing else changes
        rep = idx.ingest(archive, workers=0)
        assert rep.ok == 4 and rep.skipped == 4 and len(_rows(idx)) == len(before)
    finally:
        _close(idx)


def test_remove_with_a_stored_pseudonym_and_an_hnsw_index(tmp_path, archive):
    idx = _built(tmp_path / "h", "sqlite", archive, factory="HNSW16,Flat")
    try:
        pseudo = idx.find_patient("PAT-0001")  # studies 1 and 5
        out = idx.remove(patients=[pseudo])
        assert out["series"] == 2 and out["patients"] == 1
        assert idx.ann.ntotal == 30 and idx.verify()["ok"]
    finally:
        idx.close()


def test_remove_needs_a_name_and_takes_a_bare_uid(tmp_path, archive):
    idx = _built(tmp_path / "n", "sqlite", archive)
    try:
        with pytest.raises(InputError, match="name at least one"):
            idx.remove()
        assert idx.remove(series=SERIES[3])["series"] == 1  # a bare string is one UID, not its characters
    finally:
        idx.close()


def _reader(folder, q):
    idx = ArchiveIndex.open(folder)
    q.put(len(idx.search("liver", k=100)))
    q.get()  # wait until the parent removed a study
    idx.refresh()
    q.put(sorted({h.series_uid for h in idx.search("liver", k=100)}))
    idx.close()


def test_a_reader_in_another_process_stops_returning_removed_organs(tmp_path, archive):
    idx = _built(tmp_path / "r", "sqlite", archive)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_reader, args=(idx.folder, q))
    p.start()
    try:
        assert q.get(timeout=120) == 8
        idx.remove(studies=[STUDIES[4]])
        q.put("go")
        seen = q.get(timeout=120)
        assert SERIES[4] not in seen and len(seen) == 7
    finally:
        p.join(timeout=60)
        idx.close()


def test_cli_remove_json_and_confirmation(tmp_path, archive):
    idx = _built(tmp_path / "c", "sqlite", archive)
    idx.close()
    ids = tmp_path / "patients.txt"
    ids.write_text("PAT-0003\n\nPAT-4242\n")
    runner = CliRunner()
    declined = runner.invoke(cli, ["remove", "--index", str(tmp_path / "c"), "--series", SERIES[0]], input="n\n")
    assert declined.exit_code != 0
    res = runner.invoke(cli, ["remove", "--index", str(tmp_path / "c"), "--patients-file", str(ids),
                              "--study", STUDIES[0], "--yes", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["series"] == 3 and out["not_found"]["patients"] == 1  # studies 3 and 7, and study 0
    assert "PAT-" not in res.output
    none = runner.invoke(cli, ["remove", "--index", str(tmp_path / "c"), "--yes"])
    assert none.exit_code != 0 and "name at least one" in none.output


# --- found by a review of remove (2026-12-06) ---


def _series_seen(idx):
    return {h.series_uid for h in idx.search("liver", k=200)}


def test_a_writer_object_behind_another_process_reloads_before_removing(tmp_path, archive):
    a = _built(tmp_path / "i", "sqlite", archive)
    b = ArchiveIndex.open(tmp_path / "i")
    b.remove(series=[SERIES[0]])
    b.ingest(archive, workers=0)  # series 0 comes back under new organ ids
    b.close()
    try:
        a.remove(series=[SERIES[1]])  # a has not refreshed since b wrote
        assert np.array_equal(np.sort(a.mirror.view().ids), a.store.organ_ids())
        assert SERIES[0] in _series_seen(a) and SERIES[1] not in _series_seen(a)
        assert a.verify()["ok"]
    finally:
        a.close()


@pytest.mark.parametrize("factory", [None, "IVF1,Flat", "HNSW16,Flat"])
def test_remove_everything_then_open_search_ingest(tmp_path, archive, factory):
    idx = _built(tmp_path / "e", "sqlite", archive, factory=factory)
    out = idx.remove(series=SERIES)
    assert out["series"] == 8 and len(idx) == 0 and idx.ann.ntotal == 0 and idx.vectors.n_records == 0
    assert len(idx.search("liver", k=5)) == 0
    idx.close()
    idx = ArchiveIndex.open(tmp_path / "e")
    try:
        assert idx.verify()["ok"] and len(idx.search("liver", k=5)) == 0
        rep = idx.ingest(archive, workers=0)
        assert rep.ok == 8 and len(idx) == 40 and idx.ann.ntotal == 40 and idx.verify()["ok"]
    finally:
        idx.close()


def test_an_interrupted_removal_says_so_and_the_next_call_erases_the_vectors(tmp_path, archive, monkeypatch):
    from ctglip_sdk.errors import IndexStateError

    idx = _built(tmp_path / "c", "sqlite", archive)
    try:
        def full_disk(live):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(idx.vectors, "compact", full_disk)
        with pytest.raises(IndexStateError, match="run remove again"):
            idx.remove(series=[SERIES[0]])
        monkeypatch.undo()
        assert idx.vectors.n_records == 40 and len(idx) == 35  # SQL committed, the vectors are still there
        again = idx.remove(series=[SERIES[0]])
        assert again["series"] == 0 and idx.vectors.n_records == 35 and idx.verify()["ok"]
    finally:
        idx.close()


def test_removed_vectors_and_identifiers_leave_the_files_and_logs(tmp_path, archive, caplog):
    idx = _built(tmp_path / "f", "sqlite", archive)
    try:
        gone = _rows(idx)
        gone = gone[gone.series_uid.isin([SERIES[2], SERIES[6]])].crop_id.to_numpy()
        view = idx.mirror.view()
        removed_bytes = [view.vecs[view.rows_of(np.array([c]))][0].astype(np.float16).tobytes() for c in gone]
        with caplog.at_level("DEBUG"):
            out = idx.remove(patients=["PAT-0002", "MRN-UNKNOWN-77"])
        assert out["series"] == 2
        text = " ".join(r.getMessage() for r in caplog.records)
        assert "PAT-0002" not in text and "MRN-UNKNOWN-77" not in text
        data = idx.vectors.path.read_bytes()
        assert not any(b in data for b in removed_bytes)  # erased from the record file, not only unreferenced
    finally:
        idx.close()
    db = (tmp_path / "f" / "index.sqlite").read_bytes()
    assert SERIES[2].encode() not in db and SERIES[6].encode() not in db  # zeroed pages, WAL folded in
