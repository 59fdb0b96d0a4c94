"""Index durability cases from the 2026-12-07 review: copies of a folder sharing SQL tables, create leftovers,
a remove racing a reader, repair leaving empty studies, long keys on PostgreSQL."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ctglip_sdk.errors import IndexStateError
from ctglip_sdk.index import ArchiveIndex
from test_index_common import db_params, make_archive, random_prefix, tiny_model


def _shared(tmp_path, n=2, seed=1):
    """An index whose SQL tables live outside its folder (a database URL, as on PostgreSQL)."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model(), database_url=url, table_prefix=random_prefix())
    idx.ingest(make_archive(tmp_path / "a", n=n, seed=seed), workers=0)
    return idx, url


def test_a_copy_of_a_folder_sharing_sql_tables_is_refused_while_the_original_lives(tmp_path):
    idx, url = _shared(tmp_path)
    n = len(idx)
    idx.close()
    shutil.copytree(tmp_path / "idx", tmp_path / "copy")
    # Opening the copy would have worked; after the original ingested more, the copy's repair deleted the
    # original's series from the shared tables.
    with pytest.raises(IndexStateError, match="copy of the index folder") as err:
        ArchiveIndex.open(tmp_path / "copy", database_url=url)
    assert str(tmp_path / "idx") in str(err.value)
    with pytest.raises(IndexStateError, match="copy of the index folder"):
        ArchiveIndex.open(tmp_path / "copy", database_url=url, repair=True)
    again = ArchiveIndex.open(tmp_path / "idx", database_url=url)
    assert len(again) == n and again.verify()["ok"]
    again.close()
    # A move (the old folder gone) hands the tables to the new folder, and the old path is then the stranger.
    shutil.rmtree(tmp_path / "idx")
    moved = ArchiveIndex.open(tmp_path / "copy", database_url=url)
    assert len(moved) == n and moved.verify()["ok"]
    moved.close()


def test_a_copied_sqlite_index_is_its_own_index(tmp_path):
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    idx.ingest(make_archive(tmp_path / "a", n=2, seed=1), workers=0)
    n = len(idx)
    idx.close()
    shutil.copytree(tmp_path / "idx", tmp_path / "copy")  # its own index.sqlite: nothing shared
    with ArchiveIndex.open(tmp_path / "copy") as copy:
        assert len(copy) == n


def test_repair_drops_studies_and_patients_left_without_series(tmp_path):
    from sqlalchemy import func, select

    from ctglip_sdk.index.vectors import VectorStore

    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    idx.ingest(make_archive(tmp_path / "a", n=3, seed=2), workers=0)
    vs = VectorStore.open(idx.folder / "vectors.f16", idx.dim)
    idx.close()
    with open(vs.path, "r+b") as fh:  # lose the newest series' vectors
        fh.truncate(vs.path.stat().st_size - 2 * vs.dtype.itemsize)
    fixed = ArchiveIndex.open(tmp_path / "idx", repair=True)
    t = fixed.store.t

    def count(table):
        return fixed.store.read(lambda c: int(c.execute(select(func.count()).select_from(table)).scalar()))

    assert count(t.series) == 2
    assert count(t.studies) == 2 and count(t.patients) <= 2  # were 3 and 3: the repaired study stayed behind
    assert fixed.verify()["ok"]
    fixed.close()


def test_a_reader_loading_while_another_process_removes_reads_again_instead_of_failing(tmp_path):
    from test_index_common import read_manifest

    archive = make_archive(tmp_path / "a", n=3, seed=4)
    writer = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    writer.ingest(archive, workers=0)
    reader = ArchiveIndex.open(tmp_path / "idx")
    real = reader.store.mirror_rows
    calls = []

    def rows_then_remove():
        rows = real()
        if not calls:  # the other process's remove lands between this SQL read and the vector-file read
            writer.remove(series=[read_manifest(archive)[0]["series_uid"]])
        calls.append(len(rows))
        return rows

    reader.store.mirror_rows = rows_then_remove
    reader._load_state()  # was: "N organ row(s) in SQL have no stored vector; run ctglip verify --repair"
    assert len(calls) == 2 and calls[1] < calls[0] and len(reader) == calls[1]
    assert reader.search(np.ones(reader.dim, np.float32), k=100).crop_ids  # usable
    reader.store.mirror_rows = real
    assert reader.verify()["ok"]
    writer.close()
    reader.close()


def test_a_create_killed_before_its_manifest_is_redone(tmp_path):
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    idx.close()
    (tmp_path / "idx" / "manifest.json").unlink()  # killed after the vector file, before the manifest
    # was: "the folder is not empty and holds no index", for good
    again = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    again.ingest(make_archive(tmp_path / "a", n=2, seed=1), workers=0)
    assert len(again) > 0 and again.verify()["ok"]
    again.close()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(IndexStateError, match="not empty"):
        ArchiveIndex.create(tmp_path / "other", model=tiny_model())


def test_a_second_create_waits_for_a_running_one_and_finds_its_index(tmp_path):
    import threading

    from ctglip_sdk.index.lock import WriterLock

    first = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    first.close()
    manifest = (tmp_path / "idx" / "manifest.json").read_bytes()
    (tmp_path / "idx" / "manifest.json").unlink()
    errors = []
    with WriterLock(tmp_path / "idx"):  # the first create is still writing its files
        t = threading.Thread(target=lambda: errors.append(_create_error(tmp_path / "idx")))
        t.start()
        t.join(0.5)
        (tmp_path / "idx" / "manifest.json").write_bytes(manifest)  # ... and finishes
    t.join(30)
    # The CLI opens the index on this error (two `ctglip ingest` runs into one new folder both proceed).
    assert len(errors) == 1 and "already exists" in errors[0], errors
    with ArchiveIndex.open(tmp_path / "idx") as idx:
        assert idx.verify()["ok"]


def _create_error(folder, model=None):
    try:
        ArchiveIndex.create(folder, model=model or tiny_model())
    except IndexStateError as exc:
        return str(exc)
    return "created"


@pytest.mark.parametrize("db", db_params())
def test_an_unreadable_file_deep_in_the_archive_is_recorded_and_the_run_goes_on(tmp_path, db):
    import nibabel as nib

    from ctglip_sdk.index.layout import plan_archive
    from test_index_common import AFFINE, pg_url, phantom

    root = tmp_path / "arch"
    (root / "good").mkdir(parents=True)
    vol, seg = phantom(np.random.default_rng(3))
    nib.save(nib.Nifti1Image(vol, AFFINE), root / "good" / "ct.nii.gz")
    nib.save(nib.Nifti1Image(seg, AFFINE), root / "good" / "ct_seg.nii.gz")
    deep = root.joinpath(*["d" * 90] * 3)
    deep.mkdir(parents=True)
    (deep / "broken.nii.gz").write_bytes(b"not a nifti file")
    _, errors = plan_archive(root)
    assert len(errors) == 1 and len(errors[0][0]) <= 255  # was path:<270 characters>: PostgreSQL refused it
    kw = {"database_url": pg_url(), "table_prefix": random_prefix()} if db == "postgres" else {}
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model(), **kw)
    try:
        for _ in range(2):  # every later run failed the same way
            report = idx.ingest(root, workers=0)
            assert len(idx) > 0 and any("broken.nii.gz" in e["reason"] for e in report.errors), report.errors
        assert idx.verify()["ok"]
    finally:
        if db == "postgres":
            idx.store.drop_all()
        idx.close()


def _dicom_archive_named_after_patients(root):
    import nibabel as nib

    from test_index_common import AFFINE, phantom, write_dicom_series

    for i, pid in enumerate(["PAT12345", "PAT67890"]):
        vol, seg = phantom(np.random.default_rng(10 + i))
        write_dicom_series(root / pid / "series", vol, f"1.2.{i}", f"1.2.{i}.4", pid, "F", 50 + i, "20200101")
        nib.save(nib.Nifti1Image(seg, AFFINE), root / pid / "segmentations.nii.gz")
    return root


def test_paths_in_exports_do_not_carry_the_patient_id_of_folder_names(tmp_path):
    root = _dicom_archive_named_after_patients(tmp_path / "arch")
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    assert not idx.ingest(root, workers=0).errors
    for what in ("organs", "scores"):
        if what == "scores":
            idx.score()
        text = idx.export(tmp_path / f"{what}.csv", what=what).read_text()
        assert "PAT12345" not in text and "PAT67890" not in text, what  # was "PAT12345/series" in every row
    assert "<patient>/series" in (tmp_path / "organs.csv").read_text()
    idx.close()
    # An index made to keep identifiers shows the paths as they are.
    keep = ArchiveIndex.create(tmp_path / "keep", model=tiny_model(), include_identifiers=True)
    keep.ingest(root, workers=0)
    assert "PAT12345/series" in keep.export(tmp_path / "k.csv", what="organs").read_text()
    keep.close()


def test_an_index_of_schema_1_gains_the_shown_path_column(tmp_path):
    from sqlalchemy import delete, inspect

    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    idx.ingest(make_archive(tmp_path / "a", n=2, seed=1), workers=0)
    st, n = idx.store, len(idx)
    idx.close()
    # Back to schema 1: no columns, no migration records (SQLite >= 3.35 drops columns).
    st.write(lambda c: (c.exec_driver_sql(f'ALTER TABLE "{st.t.series.name}" DROP COLUMN shown_path'),
                        c.exec_driver_sql(f'ALTER TABLE "{st.t.series.name}" DROP COLUMN content_digest'),
                        c.execute(delete(st.t.migrations).where(st.t.migrations.c.version >= 2))))
    assert st.schema_version() == 1
    again = ArchiveIndex.open(tmp_path / "idx")
    assert again.store.schema_version() == 3 and len(again) == n
    assert {"shown_path", "content_digest"} <= {c["name"] for c in inspect(again.store.engine).get_columns(
        st.t.series.name)}
    text = again.export(tmp_path / "o.csv", what="organs").read_text()
    assert text.count("\n") == n + 1  # rows of schema 1 show their stored path
    again.close()


def test_search_hits_show_paths_without_patient_ids_and_montages_still_read_the_files(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import ctglip_sdk.io as cio
    from ctglip_sdk.index.montage import save_montage

    root = _dicom_archive_named_after_patients(tmp_path / "arch")
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    idx.ingest(root, workers=0)
    hits = idx.search(np.ones(idx.dim, np.float32), k=4)
    assert hits and all(h.path.startswith("<patient>/") for h in hits)  # was "PAT12345/series"
    assert "PAT12345" not in repr(hits.to_dicts()) and "PAT67890" not in repr(hits.to_dicts())
    read = []
    real = cio.load_volume
    monkeypatch.setattr(cio, "load_volume", lambda p, *a, **k: read.append(str(p)) or real(p, *a, **k))
    save_montage(idx, hits, tmp_path / "m.png")
    assert len(read) == len(hits) and all("PAT" in p for p in read)  # the stored paths, not the shown ones
    idx.close()


def test_a_deidentified_study_gets_the_patient_pseudonym_the_manifest_gives_it(tmp_path):
    import nibabel as nib
    from sqlalchemy import select

    from test_index_common import AFFINE, phantom, write_dicom_series

    root = tmp_path / "arch"
    vol, seg = phantom(np.random.default_rng(21))
    for phase in ("ART", "PV"):  # two phases of one study, PatientID emptied by the export
        write_dicom_series(root / "STUDY0" / phase, vol, "1.2.7", f"1.2.7.{len(phase)}", "", "F", 60, "20200101")
        nib.save(nib.Nifti1Image(seg, AFFINE), root / "STUDY0" / phase / "segmentations.nii.gz")
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    assert not idx.ingest(root, workers=0).errors
    from ctglip_sdk.privacy import pseudonymize

    t = idx.store.t
    stored = idx.store.read(lambda c: c.execute(select(t.patients.c.pseudonym)).scalars().all())
    # One patient, and the one `ctglip manifest` names (study:<pseudonym of the StudyInstanceUID>), so the index
    # groups patients the same way with or without a manifest (it was a per-series "unknown:" pseudo-patient).
    assert stored == [idx.pseudonym(f"study:{pseudonymize('1.2.7')}")]
    idx.close()


def test_a_create_that_times_out_on_the_lock_removes_nothing_of_the_running_one(tmp_path, monkeypatch):
    import functools

    from ctglip_sdk.index import create as create_mod
    from ctglip_sdk.index.lock import WriterLock

    folder = tmp_path / "idx"
    folder.mkdir()
    import threading

    monkeypatch.setattr(create_mod, "WriterLock", functools.partial(WriterLock, timeout=1.0))
    model = tiny_model()
    errors = []
    with WriterLock(folder):  # another process's create holds the lock ...
        t = threading.Thread(target=lambda: errors.append(_create_error(folder, model)))
        t.start()
        t.join(0.3)
        (folder / "pseudonym.key").write_text("k")  # ... and writes its files while this create waits
        (folder / "index.sqlite").write_bytes(b"")
        t.join(30)
        assert errors and errors[0] != "created"
        # was: the timed-out create removed every file written after it started (the running create's)
        assert (folder / "pseudonym.key").exists() and (folder / "index.sqlite").exists()


def test_a_folder_with_a_lost_manifest_keeps_its_model_and_a_users_model_folder_is_not_taken(tmp_path):
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    idx.ingest(make_archive(tmp_path / "a", n=2, seed=1), workers=0)
    idx.close()
    model_bytes = (tmp_path / "idx" / "model" / "model.safetensors").read_bytes()
    (tmp_path / "idx" / "manifest.json").rename(tmp_path / "manifest.bak")
    with pytest.raises(IndexStateError, match="already hold"):
        ArchiveIndex.create(tmp_path / "idx", model=tiny_model(seed=5))
    # was: the other model's copy had replaced the index's own before the refusal
    assert (tmp_path / "idx" / "model" / "model.safetensors").read_bytes() == model_bytes
    (tmp_path / "manifest.bak").rename(tmp_path / "idx" / "manifest.json")
    with ArchiveIndex.open(tmp_path / "idx") as again:
        assert again.verify()["ok"]
    proj = tmp_path / "proj"
    (proj / "model").mkdir(parents=True)
    (proj / "model" / "NOTES.md").write_text("mine")
    with pytest.raises(IndexStateError, match="not empty"):  # a model/ folder alone is no unfinished create
        ArchiveIndex.create(proj, model=tiny_model())
    assert (proj / "model" / "NOTES.md").exists()


def test_an_index_without_a_recorded_folder_records_it_so_copies_are_caught(tmp_path):
    from sqlalchemy import delete

    idx, url = _shared(tmp_path)
    st = idx.store
    st.write(lambda c: c.execute(delete(st.t.meta).where(st.t.meta.c.key == "index_folder")))  # made before 2026-12-07
    idx.close()
    ArchiveIndex.open(tmp_path / "idx", database_url=url).close()  # records its folder (it stayed unrecorded)
    shutil.copytree(tmp_path / "idx", tmp_path / "copy")
    with pytest.raises(IndexStateError, match="copy of the index folder"):
        ArchiveIndex.open(tmp_path / "copy", database_url=url)


def test_an_older_read_only_index_says_to_open_it_once_with_write_access(tmp_path, monkeypatch):
    import os

    from sqlalchemy import delete

    from ctglip_sdk.index import engine as engine_mod

    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    idx.ingest(make_archive(tmp_path / "a", n=1, seed=1), workers=0)
    st = idx.store
    idx.close()
    # Schema 1 (no shown_path, which queries read): refused until upgraded.
    st.write(lambda c: (c.exec_driver_sql(f'ALTER TABLE "{st.t.series.name}" DROP COLUMN shown_path'),
                        c.exec_driver_sql(f'ALTER TABLE "{st.t.series.name}" DROP COLUMN content_digest'),
                        c.execute(delete(st.t.migrations).where(st.t.migrations.c.version >= 2))))
    st.dispose()
    db = str(tmp_path / "idx" / "index.sqlite")
    real_access = os.access
    monkeypatch.setattr(engine_mod.os, "access", lambda p, mode: False if mode == os.W_OK and
                        os.path.abspath(p) in (db, os.path.dirname(db)) else real_access(p, mode))
    with pytest.raises(IndexStateError, match="older ctglip-sdk.*open it once with write access"):
        ArchiveIndex.open(tmp_path / "idx")  # was the driver's "attempt to write a readonly database"


def test_a_read_only_index_of_schema_2_is_read_without_its_upgrade(tmp_path, monkeypatch, caplog):
    """Schema 3 only adds series.content_digest, which ingest alone writes: a published (read-only) index of
    schema 2 is searched and exported by a newer library, with a warning (review, 2026-12-07)."""
    import os

    from sqlalchemy import delete

    from ctglip_sdk.index import engine as engine_mod

    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    idx.ingest(make_archive(tmp_path / "a", n=2, seed=1), workers=0)
    st, n = idx.store, len(idx)
    hits = idx.search(np.ones(idx.dim, np.float32), k=5).crop_ids
    idx.close()
    st.write(lambda c: (c.exec_driver_sql(f'ALTER TABLE "{st.t.series.name}" DROP COLUMN content_digest'),
                        c.execute(delete(st.t.migrations).where(st.t.migrations.c.version == 3))))
    st.dispose()
    db = str(tmp_path / "idx" / "index.sqlite")
    real_access = os.access
    monkeypatch.setattr(engine_mod.os, "access", lambda p, mode: False if mode == os.W_OK and
                        os.path.abspath(p) in (db, os.path.dirname(db)) else real_access(p, mode))
    caplog.set_level("WARNING")
    ro = ArchiveIndex.open(tmp_path / "idx")
    assert "schema 2 and is read-only" in caplog.text and len(ro) == n
    assert list(ro.search(np.ones(ro.dim, np.float32), k=5).crop_ids) == list(hits)
    assert ro.export(tmp_path / "o.csv", what="organs").read_text().count("\n") == n + 1
    assert ro.store.schema_version() == 2
    report = ro.verify()  # the column it lacks is ingest's: a warning, not a missing column
    assert report["ok"] and any("read without its upgrade" in w for w in report["warnings"]), report
    ro.close()


def test_a_study_without_uid_and_the_ingest_export_show_no_patient_id_of_folder_names(tmp_path):
    from test_index_common import phantom, write_manifest, write_nifti_study

    root = tmp_path / "arch"
    rows = []
    for i, pid in enumerate(["PID1234567", "PID7654321"]):
        vol, seg = phantom(np.random.default_rng(30 + i))
        write_nifti_study(root, pid, vol, seg)
        rows.append({"patient_id": pid, "study_uid": "", "series_uid": "", "image": f"{pid}/ct.nii.gz",
                     "mask": f"{pid}/seg.nii.gz", "report": "", "split": "test", "age": "50", "sex": "F",
                     "study_date": "2020-01-01", "contrast": "none"})
    write_manifest(root, rows)
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    assert not idx.ingest(root, workers=0).errors
    hits = idx.search(np.ones(idx.dim, np.float32), k=20)
    # was "series:path:PID1234567/ct.nii.gz" as the study of a series without UIDs, and the raw key in `ingest`
    assert hits and all("PID" not in h.study_uid and "PID" not in h.series_uid for h in hits)
    for what in ("organs", "studies", "ingest"):
        text = idx.export(tmp_path / f"{what}.csv", what=what).read_text()
        assert "PID1234567" not in text and "PID7654321" not in text, what
    idx.close()


def test_organs_of_a_totalsegmentator_2_mask_can_be_searched_by_their_name(tmp_path):
    import nibabel as nib

    from test_index_common import AFFINE, phantom, write_manifest

    vol, seg = phantom(np.random.default_rng(40))
    root = tmp_path / "arch"
    (root / "s0" / "seg").mkdir(parents=True)
    nib.save(nib.Nifti1Image(vol, AFFINE), root / "s0" / "ct.nii.gz")
    labels = [v for v in np.unique(seg) if v][:2]
    for name, v in zip(("heart", "liver"), labels):  # v2 names: "heart" is v1's group of chambers
        nib.save(nib.Nifti1Image((seg == v).astype(np.uint8), AFFINE), root / "s0" / "seg" / f"{name}.nii.gz")
    write_manifest(root, [{"patient_id": "P1", "study_uid": "1.2", "series_uid": "1.2.3", "image": "s0/ct.nii.gz",
                           "mask": "s0/seg", "report": "", "split": "test", "age": "50", "sex": "F",
                           "study_date": "2020-01-01", "contrast": "none"}])
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    assert not idx.ingest(root, workers=0).errors
    hits = idx.search(np.ones(idx.dim, np.float32), k=5, organ="heart")
    assert [h.organ for h in hits] == ["heart"]  # was no hit: "heart" resolved to v1's chambers only
    idx.close()


def test_a_create_killed_after_its_tables_and_before_its_key_is_redone(tmp_path):
    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / "writer.lock").write_text("")
    from ctglip_sdk.index.store import Store

    Store(f"sqlite:///{folder / 'index.sqlite'}", "ctglip_").init_schema()  # the tables come first
    with ArchiveIndex.create(folder, model=tiny_model()) as idx:
        assert idx.verify()["ok"]


def test_a_series_stored_before_schema_2_gets_its_redacted_path_on_the_next_ingest(tmp_path):
    from sqlalchemy import update

    root = _dicom_archive_named_after_patients(tmp_path / "arch")
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    idx.ingest(root, workers=0)
    st = idx.store
    st.write(lambda c: c.execute(update(st.t.series).values(shown_path=None)))  # as the migration leaves them
    assert "PAT12345" in idx.export(tmp_path / "before.csv", what="organs").read_text()
    report = idx.ingest(root, workers=0)
    assert report.skipped == 2 and report.ok == 0  # unchanged: not re-embedded ...
    assert "PAT12345" not in idx.export(tmp_path / "after.csv", what="organs").read_text()  # ... yet redacted
    idx.close()


def test_ingest_without_a_manifest_refuses_a_series_of_two_patients(tmp_path):
    import nibabel as nib
    import pydicom

    from test_index_common import AFFINE, phantom, write_dicom_series

    root = tmp_path / "arch"
    vol, seg = phantom(np.random.default_rng(50))
    write_dicom_series(root / "P1" / "CT", vol, "1.2.9", "1.2.9.1", "PATAAAAA", "F", 60, "20200101")
    nib.save(nib.Nifti1Image(seg, AFFINE), root / "P1" / "CT" / "segmentations.nii.gz")
    files = sorted((root / "P1" / "CT").glob("*.dcm"))
    for f in files[len(files) // 2:]:  # a merge error: the second half belongs to someone else
        ds = pydicom.dcmread(f)
        ds.PatientID = "PATBBBBB"
        ds.save_as(f)
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    report = idx.ingest(root, workers=0)
    assert len(idx) == 0 and report.errors  # was stored under whichever header the loader read
    reason = report.errors[0]["reason"]
    assert "different PatientIDs" in reason and "PATAAAAA" not in reason and "PATBBBBB" not in reason
    idx.close()
