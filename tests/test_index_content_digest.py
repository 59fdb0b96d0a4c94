"""Content digests: a series whose files were only touched, or copied without their times, is not re-embedded."""

from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from sqlalchemy import select, update

from ctglip_sdk.index import ArchiveIndex
from ctglip_sdk.index import content as content_mod
from ctglip_sdk.index.content import content_digest
from test_index_common import (db_params, drop_prefixed_tables, index_url, make_archive, random_prefix, read_manifest,
                               tiny_model)


def _ids(idx):
    return np.sort(idx.search(np.ones(idx.dim, np.float32), k=1000).crop_ids)


def _digests(idx):
    t = idx.store.t
    with idx.store.connect() as conn:
        return dict(conn.execute(select(t.series.c.series_uid, t.series.c.content_digest)).all())


def _copy_without_times(src, dst):
    """A copy that does not keep modification times (``cp -r``, a restore from backup)."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)


def test_digest_covers_names_and_bytes_not_times_and_never_reads_outside_the_root(tmp_path):
    root = tmp_path / "a"
    (root / "s").mkdir(parents=True)
    (root / "s" / "1.dcm").write_bytes(b"abc")
    (root / "s" / "2.dcm").write_bytes(b"def")
    d0 = content_digest(root, ["s"])
    os.utime(root / "s" / "1.dcm", (1, 1))
    assert content_digest(root, ["s"]) == d0                       # times do not count
    _copy_without_times(root, tmp_path / "b")
    assert content_digest(tmp_path / "b", ["s"]) == d0             # nor where the archive lies
    (root / "s" / "2.dcm").write_bytes(b"deg")
    assert content_digest(root, ["s"]) != d0                       # bytes do
    (root / "s" / "2.dcm").write_bytes(b"def")
    (root / "s" / "1.dcm").rename(root / "s" / "3.dcm")
    assert content_digest(root, ["s"]) != d0                       # and names
    (root / "s" / "3.dcm").rename(root / "s" / "1.dcm")
    (root / "s" / "1.dcm").write_bytes(b"ab")
    (root / "s" / "2.dcm").write_bytes(b"cdef")
    assert content_digest(root, ["s"]) != d0                       # a byte moved between files
    # A link out of the root enters by its name only: the target's bytes are never read.
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"one")
    (root / "s" / "link.dcm").symlink_to(secret)
    d1 = content_digest(root, ["s"])
    secret.write_bytes(b"two")
    assert content_digest(root, ["s"]) == d1
    assert content_digest(root, ["missing", None]) == content_digest(root, [])


@pytest.mark.parametrize("kind", db_params())
def test_touched_and_copied_series_are_not_embedded_again(tmp_path, kind, monkeypatch):
    root = make_archive(tmp_path / "arch", n=3)
    rows = read_manifest(root)
    kw = {"table_prefix": random_prefix()} if kind == "postgres" else {}
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model(), database_url=index_url(kind, tmp_path), **kw)
    try:
        assert idx.ingest(root, progress=False).ok == 3
        stored = _digests(idx)
        assert len(stored) == 3 and all(stored.values()) and len(set(stored.values())) == 3
        ids = _ids(idx)
        # Every file touched: nothing re-embedded, the same crop ids, the new times recorded.
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                os.utime(os.path.join(dirpath, f), (1_700_000_000, 1_700_000_000))
        report = idx.ingest(root, progress=False)
        assert (report.ok, report.skipped, report.organs_removed) == (0, 3, 0)
        assert np.array_equal(_ids(idx), ids)
        hashed = []
        real = content_mod.item_digest
        monkeypatch.setattr(content_mod, "item_digest", lambda r, it: hashed.append(it.key) or real(r, it))
        assert idx.ingest(root, progress=False).skipped == 3 and hashed == []  # fingerprints were updated
        # The archive copied to a new folder without its times: skipped, and the series now live there.
        moved = tmp_path / "copy"
        _copy_without_times(root, moved)
        report = idx.ingest(moved, progress=False)
        assert (report.ok, report.skipped) == (0, 3) and sorted(hashed) == sorted(r["series_uid"] for r in rows)
        assert np.array_equal(_ids(idx), ids)
        assert set(idx.store.archive_roots()) == {str(moved.resolve())}
        # A changed voxel is a changed series.
        img = nib.load(moved / rows[1]["image"])
        data = np.asarray(img.dataobj).copy()
        data.flat[data.size // 2] += 7
        nib.save(nib.Nifti1Image(data, img.affine, img.header), moved / rows[1]["image"])
        # (the fingerprint reads whole-second times and sizes: a same-size rewrite within the second of the copy
        # would go unseen by it, as before; a real edit comes later)
        os.utime(moved / rows[1]["image"], (1_800_000_000, 1_800_000_000))
        report = idx.ingest(moved, progress=False)
        assert (report.ok, report.skipped) == (1, 2)
        assert _digests(idx)[rows[1]["series_uid"]] != stored[rows[1]["series_uid"]]
        assert idx.verify()["ok"]
    finally:
        idx.close()
        if kind == "postgres":
            drop_prefixed_tables(idx.store.engine, kw["table_prefix"])


def test_a_manifest_correction_still_reingests_and_a_series_without_digest_is_embedded_once(tmp_path):
    from test_index_common import write_manifest

    root = make_archive(tmp_path / "arch", n=2)
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    idx.ingest(root, progress=False)
    # A series stored before schema 3 has no digest: a touch re-embeds it once, which records one.
    t = idx.store.t
    idx.store.write(lambda c: c.execute(update(t.series).values(content_digest=None)))
    img = root / read_manifest(root)[0]["image"]
    os.utime(img, (1_700_000_000, 1_700_000_000))
    report = idx.ingest(root, progress=False)
    assert (report.ok, report.skipped) == (1, 1) and sum(v is not None for v in _digests(idx).values()) == 1
    # Same bytes, a corrected row: the study values must reach the index, so the series is read again.
    rows = read_manifest(root)
    rows[1]["age"] = "77"
    write_manifest(root, rows)
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            os.utime(os.path.join(dirpath, f), (1_700_000_100, 1_700_000_100))
    report = idx.ingest(root, progress=False)
    assert (report.ok, report.skipped) == (1, 1)
    assert {h.age for h in idx.search(np.ones(idx.dim, np.float32), k=1000, where={"series_uid": rows[1]["series_uid"]})} == {77}
    idx.close()


def test_a_path_keyed_archive_copied_without_times_is_the_same_archive(tmp_path):
    """Without series UIDs a copy without times used to be 'another archive folder with other files' (an error
    per series, docs/index.md); with the same bytes it is the same series, moved."""
    first = make_archive(tmp_path / "a1", n=2, seed=31)
    (first / "manifest.csv").unlink()
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    assert idx.ingest(first, progress=False).ok == 2
    ids = _ids(idx)
    copy = tmp_path / "a2"
    _copy_without_times(first, copy)
    report = idx.ingest(copy, progress=False)
    assert (report.ok, report.skipped, report.n_errors) == (0, 2, 0)
    assert np.array_equal(_ids(idx), ids) and set(idx.store.archive_roots()) == {str(copy.resolve())}
    idx.close()


def _statuses(idx):
    t = idx.store.t
    with idx.store.connect() as conn:
        return [r[0] for r in conn.execute(select(t.ingest_runs.c.status).order_by(t.ingest_runs.c.id)).all()]


@pytest.mark.timeout(120)
def test_a_fifo_in_a_series_folder_is_not_opened(tmp_path):
    """Review, 2026-12-07: the digest opened every file of a series folder, and a named pipe blocked the ingest
    forever (the loaders skip what is not a regular file)."""
    root = make_archive(tmp_path / "arch", n=2, fmt="dicom")
    os.mkfifo(root / read_manifest(root)[0]["image"] / "pipe")
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    assert idx.ingest(root, progress=False).ok == 2
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            os.utime(os.path.join(dirpath, f), (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    assert idx.ingest(root, progress=False).skipped == 2
    idx.close()


def test_files_are_hashed_once_however_many_series_name_them(tmp_path, monkeypatch):
    """Manifest rows naming one shared folder hashed the whole folder once per row (review, 2026-12-07)."""
    root = tmp_path / "a"
    (root / "flat").mkdir(parents=True)
    for k in range(5):
        (root / "flat" / f"{k}.dcm").write_bytes(os.urandom(1000) + bytes([k]))
    import hashlib
    import types

    made = []
    monkeypatch.setattr(content_mod, "hashlib", types.SimpleNamespace(
        blake2b=lambda **kw: made.append(1) or hashlib.blake2b(**kw)))
    first = content_digest(root, ["flat"])
    assert len(made) == 1 + 5                                  # the series' hash and one per file
    made.clear()
    assert content_digest(root, ["flat"]) == first and len(made) == 1  # a second row naming the folder: no read
    (root / "flat" / "3.dcm").write_bytes(b"changed")
    assert content_digest(root, ["flat"]) != first


def test_a_series_that_failed_again_is_not_hashed_and_an_interrupted_check_is_recorded(tmp_path, monkeypatch):
    import nibabel as nib_

    root = make_archive(tmp_path / "arch", n=2)
    rows = read_manifest(root)
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    assert idx.ingest(root, progress=False).ok == 2
    # The mask replaced by one on another grid: the series fails, and keeps failing with these same files.
    mask = nib_.load(root / rows[0]["mask"])
    nib_.save(nib_.Nifti1Image(np.asarray(mask.dataobj)[:-3], mask.affine), root / rows[0]["mask"])
    os.utime(root / rows[0]["mask"], (1_800_000_000, 1_800_000_000))
    report = idx.ingest(root, progress=False)
    assert report.n_errors == 1 and "mismatch" in report.errors[0]["reason"]
    hashed = []
    real = content_mod.item_digest
    monkeypatch.setattr(content_mod, "item_digest", lambda r, it: hashed.append(it.key) or real(r, it))
    report = idx.ingest(root, progress=False)
    assert report.n_errors == 1 and "previous attempt failed" in report.errors[0]["reason"] and hashed == []
    # Ctrl-C while touched series are hashed: the run is recorded as interrupted, not left running.
    os.utime(root / rows[1]["image"], (1_800_000_100, 1_800_000_100))

    def stop(r, it):
        raise KeyboardInterrupt

    monkeypatch.setattr(content_mod, "item_digest", stop)
    with pytest.raises(KeyboardInterrupt):
        idx.ingest(root, progress=False)
    assert _statuses(idx)[-1] == "interrupted"
    monkeypatch.setattr(content_mod, "item_digest", real)
    assert idx.ingest(root, progress=False).skipped == 1 and _statuses(idx)[-1] == "ok"
    idx.close()
