"""Review 28 of the index CLI: user-named outputs inside the index, database failures as one line, identifiers in
ingest reasons with a manifest, verify on a database that lost tables."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import sqlalchemy
from click.testing import CliRunner

from ctglip_sdk.cli.main import cli
from ctglip_sdk.errors import IndexStateError, InputError, QueryError
from ctglip_sdk.index import ArchiveIndex, SeriesEmbeddings

from test_index_common import AFFINE, db_params, phantom, pg_url, random_prefix, tiny_model, write_dicom_series
from test_index_common import write_manifest

ORGANS = ["liver", "spleen", "kidney_left", "kidney_right"]


def _records(dim: int, n: int = 3):
    rng = np.random.default_rng(28)
    return [SeriesEmbeddings(f"1.2.28.{i}.1", ORGANS, rng.normal(size=(len(ORGANS), dim)).astype(np.float32),
                             study_uid=f"1.2.28.{i}", patient_id=f"PAT-28{i}", sex="MF"[i % 2], age=40 + 9 * i)
            for i in range(n)]


def _fill(idx: ArchiveIndex) -> None:
    """Three series of vectors and one renal_cyst score per kidney (no images: fast)."""
    idx.add_embeddings(_records(idx.dim), config_hash=idx.manifest["model"]["config_hash"])
    hits = idx.search(np.ones(idx.dim, np.float32), k=100, organ="kidney_left")
    idx.insert_scores([(h.crop_id, "renal_cyst", 0.9) for h in hits])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("r28") / "idx"
    with ArchiveIndex.create(folder, model=tiny_model()) as idx:
        _fill(idx)
    return folder


@pytest.fixture
def index(base, tmp_path) -> Path:
    """A private copy of the module's index (tests damage it)."""
    copy = tmp_path / "idx"
    shutil.copytree(base, copy)
    return copy


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_json_error(res, kind: str) -> dict:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["type"] == kind, doc
    return doc


# -- 1. outputs never land in the index folder ------------------------------------------------------------------
def test_cohort_output_over_the_index_database_is_refused_and_the_index_survives(index, tmp_path):
    """`cohort --output idx/index.sqlite` replaced the database with a CSV and exited 0."""
    db = index / "index.sqlite"
    before = _digest(db)
    for target in (db, index / "members.csv", index / "model" / "c.csv"):
        res = run("cohort", "--index", index, "--all-of", "renal_cyst", "--threshold", "0", "--output", target,
                  "--json")
        doc = _one_json_error(res, "QueryError" if target.suffix != ".csv" else "InputError")
        assert target.name in doc["error"] and doc["path"] == str(target)
    assert _digest(db) == before and not (index / "members.csv").exists()
    res = run("cohort", "--index", index, "--all-of", "renal_cyst", "--output", tmp_path / "members.txt")
    assert res.exit_code == 1 and ".csv" in res.stderr and not (tmp_path / "members.txt").exists()
    ok = run("cohort", "--index", index, "--all-of", "renal_cyst", "--output", tmp_path / "members.csv", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["n"] == 3
    assert (tmp_path / "members.csv").read_text().splitlines()[0] == "patient,studies,p:renal_cyst"
    assert run("search", "liver", "--index", index, "--json").exit_code == 0


def test_export_and_montage_into_the_index_folder_are_refused(index, tmp_path):
    res = run("export", index / "scores.csv", "--index", index, "--json")
    assert "refusing to write the export into the index" in _one_json_error(res, "InputError")["error"]
    res = run("search", "liver", "--index", index, "-k", "2", "--montage", index / "hits.png", "--json")
    assert _one_json_error(res, "InputError")["path"] == str(index / "hits.png")
    link = tmp_path / "scores.csv"
    link.symlink_to(index / "vectors.f16")  # a link into the index is the index
    assert run("export", link, "--index", index).exit_code == 1
    assert not (index / "scores.csv").exists() and not (index / "hits.png").exists() and link.is_symlink()


def test_library_writers_share_the_check(index, tmp_path):
    from ctglip_sdk.index.montage import save_montage
    from ctglip_sdk.index.outputs import check_output_path, write_cohort_csv

    with ArchiveIndex.open(index) as idx:
        with pytest.raises(InputError, match="into the index"):
            idx.export(index / "organs.jsonl", what="organs")
        with pytest.raises(InputError, match="into the index"):
            save_montage(idx, idx.search(np.ones(idx.dim, np.float32), k=2), index / "m.png")
        res = idx.cohort(all_of=["renal_cyst"])
        with pytest.raises(InputError, match="into the index"):
            write_cohort_csv(idx, res, index / "c.csv")
        with pytest.raises(QueryError, match=r"\.csv"):
            write_cohort_csv(idx, res, tmp_path / "c.parquet")
        assert write_cohort_csv(idx, res, tmp_path / "c.csv").read_text().startswith("patient,studies,p:renal_cyst")
    assert not any((index / n).exists() for n in ("organs.jsonl", "m.png", "c.csv"))
    with pytest.raises(InputError, match="into the index"):  # by folder alone, as the CLI checks before opening
        check_output_path(index / "sub" / "x.png", index, suffixes=(".png",), what="montage")


def test_a_sqlite_database_outside_the_folder_is_protected_too(tmp_path):
    db = tmp_path / "shared" / "db.csv"  # named so that only the location check can refuse it
    db.parent.mkdir()
    with ArchiveIndex.create(tmp_path / "idx", model=tiny_model(), database_url=f"sqlite:///{db}") as idx:
        _fill(idx)
        with pytest.raises(InputError, match="into the index"):
            idx.export(db, what="scores")
    assert db.read_bytes().startswith(b"SQLite format 3")
    with ArchiveIndex.open(tmp_path / "idx", database_url=f"sqlite:///{db}") as idx:
        assert len(idx) == 12


# -- 2. database failures: one line naming the database, JSON under --json ------------------------------------
def test_a_file_that_is_no_database_is_one_line_and_json(index):
    (index / "index.sqlite").write_text("garbage\n")
    for args in (("search", "liver"), ("export", index.parent / "x.csv"), ("cohort", "--all-of", "renal_cyst"),
                 ("score",)):
        res = run(*args, "--index", index, "--json")
        doc = _one_json_error(res, "IndexStateError")
        assert doc["path"] == str((index / "index.sqlite").resolve()) and "backup" in doc["error"]
    for repair in ((), ("--repair",)):  # verify reports it as its problem
        res = run("verify", "--index", index, "--json", *repair)
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert json.loads(res.stdout)["ok"] is False and "damaged" in json.loads(res.stdout)["problems"][0]
    with pytest.raises(IndexStateError, match="damaged"):
        ArchiveIndex.open(index)


def test_a_database_url_naming_a_plain_file_is_the_users_input_error(index, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("root:x:0:0:root:/root:/bin/bash\n" * 50)
    res = run("search", "liver", "--index", index, "--database-url", f"sqlite:///{notes}", "--json")
    doc = _one_json_error(res, "InputError")
    assert doc["path"] == str(notes) and "--database-url" in doc["error"]


def test_a_dropped_table_is_named_by_score_cohort_and_export(index, tmp_path):
    with sqlite3.connect(index / "index.sqlite") as con:
        con.execute("DROP TABLE ctglip_scores")
    for args in (("score",), ("cohort", "--all-of", "renal_cyst"), ("export", tmp_path / "s.csv")):
        doc = _one_json_error(run(*args, "--index", index, "--json"), "IndexStateError")
        assert "no table ctglip_scores" in doc["error"] and "verify --repair" in doc["error"]
        assert "SELECT" not in doc["error"]


def test_a_database_locked_past_the_timeout_is_one_line(index, monkeypatch):
    from ctglip_sdk.index import engine

    monkeypatch.setattr(engine, "_BUSY_MS", 200)
    monkeypatch.setattr(engine, "_BUSY_PRAGMA", "PRAGMA busy_timeout=200")
    other = sqlite3.connect(index / "index.sqlite", isolation_level=None)
    try:
        other.execute("PRAGMA locking_mode=EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")  # another program holds the file
        with pytest.raises(IndexStateError, match="locked by another program"):
            ArchiveIndex.open(index)
        doc = _one_json_error(run("search", "liver", "--index", index, "--json"), "IndexStateError")
        assert "close the program" in doc["error"]
    finally:
        other.close()
    with ArchiveIndex.open(index) as idx:
        assert len(idx) == 12


def test_refused_values_stay_sqlalchemy_errors_for_their_callers(index):
    """Ingest writes series one by one after an IntegrityError/DataError: the handler must leave those alone."""
    with ArchiveIndex.open(index) as idx:
        m = idx.store.t.meta
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            idx.store.write(lambda c: c.execute(m.insert().values(key="index_uid", value="again")))


def test_an_unexplained_database_error_is_one_json_line_without_the_statement(index, monkeypatch):
    def fail(*_a, **_k):
        raise sqlalchemy.exc.ProgrammingError("SELECT * FROM ctglip_patients WHERE pseudonym = ?", {"p": "PAT-0007"},
                                              Exception("permission denied for table ctglip_patients"))

    monkeypatch.setattr(ArchiveIndex, "search", fail)
    doc = _one_json_error(run("search", "liver", "--index", index, "--json"), "DatabaseError")
    assert "permission denied" in doc["error"] and "SELECT" not in doc["error"] and "PAT-0007" not in doc["error"]


# -- 3. identifiers in ingest reasons, manifest or not ------------------------------------------------------------
def test_ingest_reasons_with_a_manifest_hide_the_header_identifiers(tmp_path):
    """The documented `ctglip manifest` -> `ctglip ingest` flow: patient_id holds a pseudonym, the folders are named
    after the PatientID, the name and the accession number, and one slice is truncated."""
    import pydicom

    root = tmp_path / "arch"
    vol, seg = phantom(np.random.default_rng(3))
    image = "images/SYN0337944/Fernsby_Hollis/A003000002/ct"
    write_dicom_series(root / image, vol, "1.2.28.9", "1.2.28.9.1", "SYN0337944", "F", 61, "20200101")
    for f in sorted((root / image).iterdir()):
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.AccessionNumber = "Fernsby^Hollis", "A003000002"
        ds.save_as(f)
    nib.save(nib.Nifti1Image(seg, AFFINE), root / "images" / "seg.nii.gz")
    broken = sorted((root / image).iterdir())[6]
    broken.write_bytes(broken.read_bytes()[:2000])
    write_manifest(root, [{"patient_id": "3f9c1e0b7a2d4c6e8f10", "study_uid": "1.2.28.9", "series_uid": "1.2.28.9.1",
                           "image": image, "mask": "images/seg.nii.gz"}])
    with ArchiveIndex.create(tmp_path / "idx", model=tiny_model()) as idx:
        report = idx.ingest(root, workers=0)
        assert report.ok == 0 and len(report.errors) == 1
        reason = report.errors[0]["reason"]
        assert "<patient>" in reason and broken.name in reason, reason
        out = idx.export(tmp_path / "ingest.csv", what="ingest")
    stored = out.read_text()
    for ident in ("SYN0337944", "Fernsby", "Hollis", "A003000002"):
        assert ident not in reason and ident not in stored


# -- 4. verify checks the schema ----------------------------------------------------------------------------------
def test_verify_reports_a_dropped_scores_table_and_repair_recreates_it(index):
    with sqlite3.connect(index / "index.sqlite") as con:
        con.execute("DROP TABLE ctglip_scores")
    res = run("verify", "--index", index, "--json")
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    assert report["ok"] is False and report["missing_schema"] == ["ctglip_scores"]
    assert "ctglip_scores" in report["problems"][0] and "--repair" in report["problems"][0]
    res = run("verify", "--index", index, "--repair", "--json")
    assert res.exit_code == 0, res.output
    assert any("recreated the missing table ctglip_scores" in r for r in json.loads(res.stdout)["repaired"])
    with ArchiveIndex.open(index) as idx:
        idx.insert_scores([(idx.search(np.ones(idx.dim, np.float32), k=1)[0].crop_id, "renal_cyst", 0.5)])
        assert idx.verify()["ok"]


def test_verify_with_a_lost_truth_table_is_not_ok_even_after_repair(index):
    with sqlite3.connect(index / "index.sqlite") as con:
        con.execute("DROP TABLE ctglip_patients")
    with ArchiveIndex.open(index) as idx:
        report = idx.verify(repair=True)
    assert report["ok"] is False and report["repaired"] == [] and "backup" in report["problems"][0]
    res = run("verify", "--index", index)
    assert res.exit_code == 1 and "ctglip_patients" in res.stderr and "run with --repair" not in res.output


@pytest.mark.parametrize("db", db_params())
def test_a_dropped_table_on_either_database(tmp_path, db):
    url = pg_url() if db == "postgres" else None
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model(), database_url=url, table_prefix=random_prefix())
    try:
        _fill(idx)
        idx.store.t.scores.drop(idx.store.engine)
        with pytest.raises(IndexStateError, match=f"no table {idx.store.t.scores.name}"):
            idx.cohort(all_of=["renal_cyst"])
        report = idx.verify()
        assert not report["ok"] and report["missing_schema"] == [idx.store.t.scores.name]
        assert idx.verify(repair=True)["ok"] and len(idx.cohort(all_of=["renal_cyst"])) == 0
    finally:
        idx.store.drop_all()
        idx.close()
