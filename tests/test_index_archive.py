"""ArchiveIndex end to end on real files: ingest, idempotency, resume, bad studies, filters, verify, rebuild."""

from __future__ import annotations

import csv
import json
import logging
import os
import stat
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import ctglip_sdk as cg
from ctglip_sdk.errors import ConfigError, IndexStateError, QueryError
from ctglip_sdk.index import ArchiveIndex
from ctglip_sdk.index.planner import Planner
from ctglip_sdk.index.vectors import VectorStore

from test_index_common import (AFFINE, db_params, make_archive, phantom, pg_url, random_prefix, read_manifest,
                               tiny_model, write_manifest)


def _create(path, kind="sqlite", **kw):
    url = pg_url() if kind == "postgres" else None
    return ArchiveIndex.create(path, model=tiny_model(), database_url=url,
                               table_prefix=random_prefix() if url else "ctglip_", **kw)


def _drop(idx):
    if idx.store.dialect != "sqlite":
        idx.store.drop_all()
    idx.close()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("arch") / "a", n=8, seed=0)


@pytest.fixture(scope="module", params=db_params())
def built(request, tmp_path_factory, archive):
    idx = _create(tmp_path_factory.mktemp("idx") / "i", request.param)
    report = idx.ingest(archive, workers=2, batch_size=3)
    yield idx, report
    _drop(idx)


def _state(idx):
    """What must be identical between two indexes of the same archive: organs, metadata and vectors."""
    view = idx.mirror.view()
    df = pd.read_csv(idx.export(idx.folder.parent / f"{idx.folder.name}_organs_state.csv", what="organs"))
    vec = dict(zip(view.ids.tolist(), view.vecs))
    keyed = {(r.series_uid, r.organ): (r.age, r.sex, r.study_date, np.round(vec[r.crop_id], 3).tobytes())
             for r in df.itertuples()}
    # Pseudonyms differ between indexes (each has its own key); which series share a patient must not.
    by_patient = sorted(tuple(sorted(set(g.series_uid))) for _, g in df.groupby("patient"))
    return keyed, by_patient


def test_ingest_reports_and_is_idempotent(built, archive):
    idx, report = built
    assert report.ok == 8 and report.skipped == 0 and report.errors == []
    assert report.organs_added == 8 * 5 == len(idx)
    assert set(report.timings) >= {"read", "align", "preprocess", "encode", "write", "faiss"}
    assert all(v >= 0 for v in report.timings.values()) and report.timings["encode"] > 0
    before = _state(idx)
    again = idx.ingest(archive)
    assert again.ok == 0 and again.skipped == 8 and again.organs_added == 0
    assert _state(idx) == before and idx.verify()["ok"]
    stats = idx.stats()
    assert (stats["patients"], stats["studies"], stats["series"], stats["organs"]) == (4, 8, 8, 40)


def test_pseudonyms_key_and_metadata(built, archive):
    idx, _ = built
    rows = read_manifest(archive)
    mode = stat.S_IMODE(os.stat(idx.folder / "pseudonym.key").st_mode)
    assert mode == 0o600
    res = idx.search("liver", k=40)
    patients = {h.patient for h in res}
    assert len(patients) == 4 and not patients & {r["patient_id"] for r in rows}
    assert idx.pseudonym("PAT-0001") in patients
    by_series = {r["series_uid"]: r for r in rows}
    for h in res:
        r = by_series[h.series_uid]
        assert (h.age, h.sex, h.study_date, h.path) == (float(r["age"]), r["sex"], r["study_date"], r["image"])
        assert all(0 <= a < b for a, b in zip(h.bbox[:3], h.bbox[3:]))
    manifest = json.loads((idx.folder / "manifest.json").read_text())
    assert manifest["model"]["config_hash"] == tiny_model().config_hash and manifest["dim"] == idx.dim
    assert "PAT-" not in (idx.folder / "manifest.json").read_text()


WHERES = [
    (None, None), ("liver", None), ("kidney", {"sex": "F"}), (None, {"age": (50, None), "contrast": True}),
    ("spleen", {"study_date": ("2019-03-01", "2020-01-01")}), (None, {"split": ["val", "test"]}),
    ("liver", {"volume_ml": (0, 10_000)}), (None, {"study_uid": "1.2.826.0.1.0.3"}),
    ("liver", {"contrast": "no"}),  # a no-contrast word is the yes/no question, not a stored category
]


@pytest.mark.parametrize("organ,where", WHERES)
def test_search_filters_match_brute_force(built, organ, where, tmp_path):
    idx, _ = built
    organs = pd.read_csv(idx.export(tmp_path / "o.csv", what="organs"), dtype={"study_uid": str})
    ids, vecs = VectorStore.open(idx.folder / "vectors.f16", idx.dim).read()
    q = idx.model.encode_text("hypodense lesion")
    keep = np.ones(len(organs), bool)
    if organ == "kidney":
        keep &= organs.organ.isin(["kidney_left", "kidney_right"]).to_numpy()
    elif organ:
        keep &= (organs.organ == organ).to_numpy()
    for key, value in (where or {}).items():
        col = organs[key]
        if key == "contrast":
            without = col.fillna("none").str.lower().isin(["none", ""]).to_numpy()
            keep &= without if value == "no" else ~without
        elif isinstance(value, tuple):
            lo, hi = value
            keep &= ((col >= lo) if lo is not None else True) & ((col <= hi) if hi is not None else True)
        elif isinstance(value, list):
            keep &= col.isin(value).to_numpy()
        else:
            keep &= (col == value).to_numpy()
    cand = organs.crop_id[keep].to_numpy()
    rows = np.searchsorted(ids, cand)
    s = np.asarray(vecs[rows], np.float32) @ q
    expect = cand[np.argsort(-s, kind="stable")[:5]].tolist()
    for planner in (Planner(), Planner(exact_max=0, gather_cost=1e9)):  # exact path, then FAISS+bitmap path
        idx.planner = planner
        res = idx.search("hypodense lesion", k=5, organ=organ, where=where)
        assert res.crop_ids == expect, res.plan
    idx.planner = Planner()
    assert res.to_pandas().shape[0] == len(expect)


def test_search_inputs_are_validated(built):
    idx, _ = built
    for bad in (dict(query=""), dict(query="x", k=0), dict(query="x", organ="gizzard"),
                dict(query="x", where={"ssn": 1}), dict(query=np.ones(3))):
        with pytest.raises(QueryError):
            idx.search(**bad)
    vec_res = idx.search(idx.model.encode_text("renal cyst"), k=3, organ="kidney")
    assert vec_res.crop_ids == idx.search("renal cyst", k=3, organ="kidney", rank="cosine").crop_ids
    with pytest.raises(QueryError, match="rank"):
        idx.search("renal cyst", rank="best")


def test_text_naming_a_finding_ranks_by_its_zero_shot_margin(built):
    """'renal cyst' ranks kidneys by v·(p̄ − n̄) of the dictionary's renal_cyst prompts: the detect() margin."""
    idx, _ = built
    res = idx.search("renal cyst", k=50, organ="kidney")
    assert res.ranking == "finding:renal_cyst" and len(res) > 1
    zs = cg.ZeroShotClassifier(idx.model)
    pos, neg = zs.finding_prompts("renal_cyst")
    p = np.mean(idx.model.encode_text([*pos, "renal cyst"]), 0)
    n = np.mean(idx.model.encode_text(neg), 0)
    d = p / np.linalg.norm(p) - n / np.linalg.norm(n)
    d /= np.linalg.norm(d)
    # Scores are the margin along that direction, best first (stored vectors are float16: small tolerance).
    scores = np.array([h.score for h in res])
    assert np.all(np.diff(scores) <= 1e-6)
    plain = idx.search("renal cyst", k=50, organ="kidney", rank="cosine")
    assert plain.ranking == "cosine" and set(plain.crop_ids) == set(res.crop_ids)  # same organs, other order
    q = idx.search(d.astype(np.float32), k=50, organ="kidney")
    assert q.crop_ids[:5] == res.crop_ids[:5]
    # A text that names no finding, or two, stays plain cosine.
    assert idx.search("kidney", k=3).ranking == "cosine"
    assert idx.search("renal cyst and hydronephrosis", k=3).ranking == "cosine"
    assert "several findings (renal_cyst, hydronephrosis)" in idx.search("renal cyst and hydronephrosis", k=3).notes[0]


def test_a_negated_finding_ranks_by_the_reversed_margin(built):
    """'no renal cyst' asks for kidneys without one: the margin reversed, on the finding's organs."""
    idx, _ = built
    pos = idx.search("renal cyst", k=50)
    neg = idx.search("kidneys without renal cyst", k=50)
    assert neg.ranking == "absent:renal_cyst" and "without renal_cyst" in neg.notes[0]
    assert set(neg.crop_ids) == set(pos.crop_ids)
    assert neg.crop_ids == pos.crop_ids[::-1] or neg.crop_ids[0] == pos.crop_ids[-1]
    assert all(h.organ in ("kidney_left", "kidney_right") for h in neg)
    # A denial beside the asked finding is not applied by search, and the notes say so (it used to be silent).
    both = idx.search("renal cyst, no hydronephrosis", k=50)
    assert both.ranking == "finding:renal_cyst" and set(both.crop_ids) == set(pos.crop_ids)
    assert any("no hydronephrosis: search does not exclude it" in n for n in both.notes)


def test_texts_without_one_finding_stay_on_the_organs_they_name(built):
    idx, _ = built
    # Several findings: cosine, on the organs named, with a note that says so.
    res = idx.search("hepatomegaly and splenomegaly", k=20)
    assert res.ranking == "cosine" and {h.organ for h in res} <= {"liver", "spleen"}
    assert "several findings" in res.notes[0] and "within liver, spleen" in res.notes[0]
    # A bare organ: cosine on that organ (over every organ, ribs and muscles outranked it).
    assert {h.organ for h in idx.search("kidney", k=5)} <= {"kidney_left", "kidney_right"}
    # An explicit organ= still wins; rank="cosine" is plain cosine everywhere.
    spleen = idx.search("hepatomegaly and splenomegaly", k=5, organ="spleen")
    assert {h.organ for h in spleen} == {"spleen"}
    # ... and the note names the organ searched (it said "within liver, spleen", the text's organs)
    assert spleen.notes[0].endswith("within spleen")
    # A bilateral finding is searched on both sides, not the first side named.
    both = idx.search("bilateral renal cysts", k=50)
    assert both.ranking == "finding:renal_cyst" and {h.organ for h in both} == {"kidney_left", "kidney_right"}


def test_a_finding_query_searches_only_the_organs_of_that_finding(built):
    """Without organ=, a finding's margin ranked ribs and iliac vessels above livers: the finding bounds the organs."""
    idx, _ = built
    kidneys = set(cg.organs.lookup("kidney"))
    res = idx.search("renal cyst", k=len(idx))
    assert res.ranking == "finding:renal_cyst" and len(res) > 1 and {h.organ for h in res} <= kidneys
    assert {h.organ for h in idx.search("left renal cyst", k=len(idx))} == {"kidney_left"}
    # Case, hedges and typos do not change what is asked for; a corrected spelling is reported.
    assert idx.search("RENAL CYST", k=3).ranking == "finding:renal_cyst"
    assert idx.search("suspected renal cyst", k=3).ranking == "finding:renal_cyst"
    typo = idx.search("hydronephrosiss", k=3)
    assert typo.ranking == "finding:hydronephrosis" and typo.notes == ["read as 'hydronephrosis'"]
    assert {h.organ for h in typo} <= kidneys
    # An explicit organ that cannot carry the finding wins, ranked by cosine, with a note saying so.
    off = idx.search("renal cyst", k=5, organ="liver")
    assert off.ranking == "cosine" and {h.organ for h in off} == {"liver"}
    assert "renal_cyst is not a finding of liver" in off.notes[0]
    unknown = idx.search("appendicitis", k=3)
    assert unknown.ranking == "cosine" and "no single dictionary finding" in unknown.notes[0]
    assert idx.search("appendicitis", k=3, rank="cosine").notes == []  # cosine was asked for: nothing to say
    assert unknown[:2].notes == unknown.notes and all(g.notes == unknown.notes for g in unknown.group_by().values())


def test_similar_and_grouping(built):
    idx, _ = built
    hit = idx.search("spleen", k=1, organ="spleen")[0]
    sim = idx.similar(hit.crop_id, k=4)
    assert len(sim) == 4 and hit.crop_id not in sim.crop_ids and {h.organ for h in sim} == {"spleen"}
    assert [h.score for h in sim] == sorted([h.score for h in sim], reverse=True)
    anyorg = idx.similar(hit.crop_id, k=39, same_organ=False)
    assert len({h.organ for h in anyorg}) > 1
    groups = anyorg.group_by("patient")
    assert sum(len(g) for g in groups.values()) == 39 and len(groups) == 4
    with pytest.raises(QueryError):
        idx.similar(10 ** 9)


def test_export_formats(built, tmp_path):
    idx, _ = built
    out = idx.export(tmp_path / "organs.jsonl", what="organs")
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 40 and {"crop_id", "organ", "patient", "i0", "volume_ml"} <= set(lines[0])
    with open(idx.export(tmp_path / "ingest.csv", what="ingest")) as fh:
        assert [r["status"] for r in csv.DictReader(fh)].count("ok") == 8
    # one row per study, on PostgreSQL too (its GROUP BY rules refused this query before 2026-12-06)
    with open(idx.export(tmp_path / "studies.csv", what="studies")) as fh:
        studies = list(csv.DictReader(fh))
    assert len(studies) == 8 and sum(int(r["n_organs"]) for r in studies) == 40 and all(r["sex"] for r in studies)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pyarrow"):
            idx.export(tmp_path / "s.parquet")
    with pytest.raises(QueryError):
        idx.export(tmp_path / "s.xlsx")


def test_parquet_export_keeps_one_schema_across_batches_and_never_leaves_a_partial_file(tmp_path, monkeypatch):
    """A column empty in the first batch (no failed series yet) and filled later broke the export after the
    first batch and left a file that opened with only those rows."""
    pq = pytest.importorskip("pyarrow.parquet")
    from ctglip_sdk.index import export as export_mod

    archive, rows = _bad_archive(tmp_path / "bad")
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    idx.ingest(archive, workers=0)
    monkeypatch.setattr(export_mod, "_BATCH", 2)  # several batches; the first has no failure reason
    table = pq.read_table(idx.export(tmp_path / "ingest.parquet", what="ingest"))
    assert table.num_rows == 5 and table.schema.field("reason").type == "string"
    assert sum(r is not None for r in table.column("reason").to_pylist()) == 3
    organs = pq.read_table(idx.export(tmp_path / "organs.parquet", what="organs"))
    assert organs.num_rows == len(idx) and str(organs.schema.field("study_date").type) == "date32[day]"
    # A failure part way through leaves no file behind, and never a truncated one.
    calls = []

    def broken(*a, **k):
        for i, part in enumerate(real(*a, **k)):
            calls.append(i)
            if i == 1:
                raise RuntimeError("disk full")
            yield part

    real = export_mod._rows
    monkeypatch.setattr(export_mod, "_rows", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        idx.export(tmp_path / "half.parquet", what="ingest")
    assert calls == [0, 1] and not (tmp_path / "half.parquet").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".half")] == []
    idx.close()


def test_model_mismatch_is_refused(built):
    idx, _ = built
    other_weights = tiny_model(seed=1)
    with pytest.raises(IndexStateError, match="other weights"):
        ArchiveIndex.open(idx.folder, model=other_weights, database_url=pg_url() if idx.store.dialect != "sqlite" else None)
    import ctglip_sdk as cg

    other_config = cg.create("ctglip-tiny", overrides={"projection": {"embed_dim": 64}}, seed=0)
    with pytest.raises(IndexStateError, match="config"):
        ArchiveIndex.open(idx.folder, model=other_config)


def test_open_create_and_factory_errors(tmp_path, built):
    idx, _ = built
    with pytest.raises(IndexStateError, match="already"):
        ArchiveIndex.create(idx.folder, model=tiny_model())
    with pytest.raises(IndexStateError, match="no manifest"):
        ArchiveIndex.open(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="factory"):
        ArchiveIndex.create(tmp_path / "bad", model=tiny_model(), factory="Nope,Flat")


def _bad_archive(root):
    archive = make_archive(root, n=4, seed=5, fmt="dicom")
    rows = read_manifest(archive)
    # 1: a corrupted DICOM slice (truncated mid-header)
    first = sorted((archive / rows[1]["image"]).iterdir())[3]
    first.write_bytes(first.read_bytes()[:200])
    # 2: a mask of the wrong shape
    _, seg = phantom(np.random.default_rng(9))
    nib.save(nib.Nifti1Image(np.ascontiguousarray(seg[:30]), AFFINE), archive / rows[2]["mask"])
    # 3: a mask that does not exist
    rows.append({**rows[0], "series_uid": "1.2.826.9.9.1", "study_uid": "1.2.826.9.9", "mask": "nowhere/seg.nii.gz",
                 "patient_id": "PAT-SECRET"})
    write_manifest(archive, rows)
    return archive, rows


def test_bad_studies_are_recorded_and_skipped(tmp_path, caplog):
    archive, rows = _bad_archive(tmp_path / "bad")
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    with caplog.at_level(logging.DEBUG, logger="ctglip_sdk"):
        report = idx.ingest(archive, workers=2, batch_size=2)
    assert report.ok == 2 and report.n_errors == 3, report.errors
    reasons = {e["series"]: e["reason"] for e in report.errors}
    assert "mask mismatch" in reasons[rows[2]["series_uid"]]
    assert "DICOM" in reasons[rows[1]["series_uid"]] or "truncated" in reasons[rows[1]["series_uid"]]
    assert "no such file" in reasons["1.2.826.9.9.1"]
    text = json.dumps(report.errors) + caplog.text + (tmp_path / "idx" / "manifest.json").read_text()
    assert "PAT-SECRET" not in text and "PAT-0" not in text and str(tmp_path) not in json.dumps(report.errors)
    assert idx.verify()["ok"] and len(idx) == 2 * 5
    again = idx.ingest(archive)
    # failures are not retried by default, and count once, as errors: ok + skipped + errors == seen
    assert again.ok == 0 and again.skipped == 2 and again.n_errors == 3 and again.seen == 5
    retried = idx.ingest(archive, retry_errors=True)
    assert retried.n_errors == 3 and retried.ok == 0
    items = pd.read_csv(idx.export(tmp_path / "items.csv", what="ingest"))
    assert set(items.status) == {"ok", "error"} and items.reason.dropna().str.contains("PAT-").sum() == 0
    idx.close()


def test_a_shifted_mask_a_broken_link_and_escaping_paths_are_recorded_not_fatal(tmp_path):
    """Same-shape masks on another grid, dangling links and manifest paths out of the root: each series is
    recorded with its reason, the others are ingested, and nothing outside the root is walked."""
    archive = make_archive(tmp_path / "a", n=5, seed=6, fmt="dicom")
    rows = read_manifest(archive)
    # 0: the right labels written with an origin 40 mm away (same shape, other grid)
    seg = nib.load(archive / rows[0]["mask"])
    shifted = AFFINE.copy()
    shifted[2, 3] += 40.0
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj), shifted), archive / rows[0]["mask"])
    # 1: a dangling symlink among the DICOM files: it used to abort the plan of the whole archive; the reader
    # ignores it (with a warning) and the series loads from its real files
    (archive / rows[1]["image"] / "IM9999.dcm").symlink_to(archive / "gone.dcm")
    # 2, 3: manifest paths that leave the root; the outside folder holds a dangling link too
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.dcm").symlink_to(tmp_path / "nothing")
    rows[2]["image"] = "../outside"
    rows[3]["image"] = str(outside)
    write_manifest(archive, rows)
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    report = idx.ingest(archive, workers=2, batch_size=2)
    reasons = {e["series"]: e["reason"] for e in report.errors}
    assert report.ok == 2 and set(reasons) == {rows[i]["series_uid"] for i in (0, 2, 3)}, report.errors
    assert "mask mismatch" in reasons[rows[0]["series_uid"]] and "40.0 mm" in reasons[rows[0]["series_uid"]]
    assert "escapes the root" in reasons[rows[2]["series_uid"]]
    assert "absolute paths are not allowed" in reasons[rows[3]["series_uid"]]
    assert str(archive) not in json.dumps(report.errors)  # the archive root is redacted from stored reasons
    # Removing the link changes the series' fingerprint, so the series is read again.
    (archive / rows[1]["image"] / "IM9999.dcm").unlink()
    assert idx.ingest(archive).ok == 1
    idx.close()


def test_a_manifest_row_reads_its_own_series_from_a_folder_with_a_localizer(tmp_path):
    """docs/data.md: the manifest's series_uid tells series in one folder apart (it used to be refused)."""
    from dicom_factory import unique_hu, write_series

    archive = make_archive(tmp_path / "a", n=2, seed=8, fmt="dicom")
    rows = read_manifest(archive)
    write_series(archive / rows[0]["image"], unique_hu((1, 8, 8)), series_uid="1.2.826.0.1.8.99.1", prefix="LOC",
                 SeriesDescription="Topogram")
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    report = idx.ingest(archive, workers=0)
    assert report.ok == 2 and report.n_errors == 0, report.errors
    assert {h.series_uid for h in idx.search(np.ones(idx.dim, np.float32), k=len(idx))} == \
        {r["series_uid"] for r in rows}
    idx.close()


def test_unreadable_manifest_values_are_stored_empty_and_reported(tmp_path):
    """Such a study drops out of every search filtered on that column: the report and the log say so."""
    archive = make_archive(tmp_path / "a", n=2, seed=4)
    rows = read_manifest(archive)
    rows[0].update(age="seventy", study_date="2020-13-40", sex="X")
    rows[1].update(age="999")
    write_manifest(archive, rows)
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    report = idx.ingest(archive, workers=0)
    assert report.ok == 2 and report.n_errors == 0
    said = {(w["series"], w["warning"].split(" ")[0]) for w in report.warnings}
    first, second = rows[0]["series_uid"], rows[1]["series_uid"]
    assert said == {(first, "age"), (first, "study_date"), (first, "sex"), (second, "age")}, report.warnings
    assert any(w["warning"].startswith("age from manifest.csv is not a number") for w in report.warnings)
    assert not any("seventy" in w["warning"] for w in report.warnings)  # values are never quoted (they may be names)
    assert "2 failed" not in report.summary() and "0 failed, 2 with unreadable metadata" in report.summary()
    assert len(idx.search(np.ones(idx.dim, np.float32), k=100, where={"age": (0, 150)})) == 0
    idx.close()


def test_a_patients_disagreeing_sex_is_reported_and_the_stored_one_kept(tmp_path):
    """Sex is stored per patient: a later study that says otherwise is a warning, not a silent overwrite."""
    archive = make_archive(tmp_path / "a", n=3, seed=6)
    rows = read_manifest(archive)
    rows[1].update(patient_id=rows[0]["patient_id"], sex="M" if rows[0]["sex"] == "F" else "F")
    rows[2].update(patient_id=rows[0]["patient_id"], sex=rows[0]["sex"])  # agrees: no warning
    write_manifest(archive, rows)
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    report = idx.ingest(archive, workers=0)
    assert report.ok == 3 and report.n_errors == 0
    sex_warnings = [w for w in report.warnings if w["warning"].startswith("sex ")]
    assert [w["series"] for w in sex_warnings] == [rows[1]["series_uid"]], report.warnings
    assert f"kept '{rows[0]['sex']}'" in sex_warnings[0]["warning"]
    assert rows[0]["patient_id"] not in json.dumps(report.warnings)  # the patient is not named
    assert {h.sex for h in idx.search(np.ones(idx.dim, np.float32), k=100)} == {rows[0]["sex"]}
    idx.close()


def test_dicom_and_nifti_archives_give_the_same_vectors(tmp_path):
    nii = make_archive(tmp_path / "nii", n=2, seed=3)
    dcm = make_archive(tmp_path / "dcm", n=2, seed=3, fmt="dicom")
    # DICOM stores whole HU (int16): give the NIfTI the same values, so that only the loaders differ. With the
    # phantom's fractional HU, a voxel rounded across a histogram bin edge moved a stats feature, and whether
    # that broke the tolerance depended on the random weights of the test model.
    for row in read_manifest(nii):
        img = nib.load(nii / row["image"])
        nib.save(nib.Nifti1Image(np.round(img.get_fdata()).astype(np.float32), img.affine), nii / row["image"])
    a = ArchiveIndex.create(tmp_path / "ia", model=tiny_model())
    b = ArchiveIndex.create(tmp_path / "ib", model=tiny_model())
    a.ingest(nii, workers=0)
    b.ingest(dcm, workers=1)
    va, vb = a.mirror.view(), b.mirror.view()
    assert va.n == vb.n == 10
    np.testing.assert_allclose(va.vecs, vb.vecs, atol=2e-3)  # the same HU through two loaders, stored as float16
    assert {h.study_date for h in b.search("liver", k=10)} == {h.study_date for h in a.search("liver", k=10)}


def test_interrupted_run_resumes_to_the_same_state(tmp_path, archive, monkeypatch, built):
    from ctglip_sdk.index import ingest as ingest_mod

    ref, _ = built
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    real = ingest_mod.write_batch
    calls = {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of a run
        return real(*a, **kw)

    monkeypatch.setattr(ingest_mod, "write_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        idx.ingest(archive, workers=1, batch_size=2)
    monkeypatch.setattr(ingest_mod, "write_batch", real)
    assert len(idx) == 2 * 2 * 5
    reopened = ArchiveIndex.open(idx.folder)
    resumed = reopened.ingest(archive, workers=1, batch_size=2)
    assert resumed.skipped == 4 and resumed.ok == 4
    assert _state(reopened) == _state(ref) and reopened.verify()["ok"]


def test_changed_series_is_replaced_and_lost_vectors_repaired(tmp_path):
    archive = make_archive(tmp_path / "a", n=3, seed=2)
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    idx.ingest(archive, workers=0)
    rows = read_manifest(archive)
    old = {h.crop_id for h in idx.search("x", k=15) if h.series_uid == rows[0]["series_uid"]}
    vol, _ = phantom(np.random.default_rng(99))
    nib.save(nib.Nifti1Image(vol, AFFINE), archive / rows[0]["image"])
    os.utime(archive / rows[0]["image"], (2_000_000_000, 2_000_000_000))
    rep = idx.ingest(archive, workers=0)
    assert rep.ok == 1 and rep.organs_removed == 5 and rep.organs_added == 5
    now = {h.crop_id for h in idx.search("x", k=15)}
    assert len(now) == 15 and not old & now and not old & set(idx.ann.ids().tolist())
    assert idx.verify()["ok"] and idx.verify()["orphan_vectors"] == 5
    # Lose the newest vectors (e.g. a restored backup of the vector file): open refuses and names the fix.
    vs = VectorStore.open(idx.folder / "vectors.f16", idx.dim)
    idx.close()
    with open(vs.path, "r+b") as fh:
        fh.truncate(vs.path.stat().st_size - 2 * vs.dtype.itemsize)
    with pytest.raises(IndexStateError, match="ctglip verify.*--repair"):
        ArchiveIndex.open(tmp_path / "idx")
    fixed = ArchiveIndex.open(tmp_path / "idx", repair=True)
    report = fixed.verify(repair=True)
    assert report["ok"] and report["orphan_vectors"] == 0 and len(fixed) == 10
    # The deletion the repair made on open is reported, with what the next ingest has to re-embed.
    removed = [r for r in report["repaired"] if r.startswith("removed 1 series (5 organs")]
    assert removed and rows[0]["series_uid"] in removed[0], report["repaired"]
    assert not any(r.startswith("removed") for r in fixed.verify(repair=True)["repaired"])  # said once
    assert fixed.ingest(archive, workers=0).ok == 1 and len(fixed) == 15 and fixed.verify()["ok"]


def test_missing_faiss_file_is_derived_and_rebuild_changes_factory(tmp_path, archive, built):
    ref, _ = built
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    idx.ingest(archive, workers=0)
    idx.close()
    (tmp_path / "idx" / "vectors.faiss").unlink()
    idx = ArchiveIndex.open(tmp_path / "idx")
    assert idx.verify()["problems"] == ["FAISS file is missing"]
    assert idx.verify(repair=True)["ok"]
    top = idx.search("liver cyst", k=5).crop_ids
    out = idx.rebuild("HNSW16")
    assert out["kind"] == "hnsw" and out["ntotal"] == 40
    idx.planner = Planner(exact_max=0, gather_cost=1e9)  # force the FAISS path
    assert idx.search("liver cyst", k=5).crop_ids == top
    again = ArchiveIndex.open(tmp_path / "idx")
    assert again.ann.kind == "hnsw" and json.loads((tmp_path / "idx" / "manifest.json").read_text())["factory"] == "HNSW16"
    again.rebuild(None)
    assert again.ann.kind == "flat"


def test_readers_search_while_a_writer_ingests(tmp_path):
    first = make_archive(tmp_path / "a1", n=3, seed=11)
    second = make_archive(tmp_path / "a2", n=6, seed=12)
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    idx.ingest(first, workers=0)
    other = ArchiveIndex.open(tmp_path / "idx", model=tiny_model())  # a second handle, as another process would
    other.refresh_interval = 0.0
    errors, counts = [], []
    stop = threading.Event()

    def reader(handle):
        try:
            while not stop.is_set():
                res = handle.search("kidney", k=50, organ="kidney", where={"age": (None, 200)})
                counts.append(len(res))
                assert all(h.organ.startswith("kidney") for h in res)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(h,)) for h in (idx, idx, other)]
    for t in threads:
        t.start()
    report = idx.ingest(second, workers=1, batch_size=1)
    stop.set()
    for t in threads:
        t.join()
    assert not errors and report.ok == 6
    assert min(counts) >= 6 and max(counts) <= 18
    assert len(other.search("kidney", k=50, organ="kidney")) == 18  # the reader picked up the writer's rows
    with pytest.raises(IndexStateError, match="another process"):
        from ctglip_sdk.index.lock import WriterLock

        with idx.writer_lock:
            WriterLock(tmp_path / "idx", timeout=0.2).acquire()


def test_a_study_the_encoder_or_database_refuses_does_not_stop_the_run(tmp_path, monkeypatch):
    import sqlalchemy.exc

    from ctglip_sdk.index import ingest as ingest_mod
    from ctglip_sdk.index.store import Store

    archive = make_archive(tmp_path / "a", n=5, seed=8)
    rows = read_manifest(archive)
    bad_encode, bad_sql = rows[1]["series_uid"], rows[3]["series_uid"]
    real_encode, real_insert = ingest_mod._encode, Store.insert_series

    def encode(model, batch, batch_size):
        if any(p.item.key == bad_encode for p in batch):
            raise RuntimeError("out of memory")
        return real_encode(model, batch, batch_size)

    def insert_series(self, conn, values):
        if values["series_uid"] == bad_sql:
            raise sqlalchemy.exc.DataError("INSERT ...", {"secret": "PAT-0003"}, ValueError("value too long"))
        return real_insert(self, conn, values)

    monkeypatch.setattr(ingest_mod, "_encode", encode)
    monkeypatch.setattr(Store, "insert_series", insert_series)
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    report = idx.ingest(archive, workers=1, batch_size=3)
    reasons = {e["series"]: e["reason"] for e in report.errors}
    assert report.ok == 3 and set(reasons) == {bad_encode, bad_sql}
    assert "out of memory" in reasons[bad_encode] and "value too long" in reasons[bad_sql]
    assert "PAT-0003" not in reasons[bad_sql] and "INSERT" not in reasons[bad_sql]
    assert len(idx) == 15 and idx.verify()["ok"]
    monkeypatch.undo()
    assert idx.ingest(archive, retry_errors=True).ok == 2 and len(idx) == 25


@pytest.mark.parametrize("db", db_params())
def test_two_indexes_cannot_share_a_table_prefix(tmp_path, db):
    url = pg_url() if db == "postgres" else f"sqlite:///{tmp_path}/shared.db"
    prefix = random_prefix()
    first = ArchiveIndex.create(tmp_path / "one", model=tiny_model(), database_url=url, table_prefix=prefix)
    try:
        with pytest.raises(IndexStateError, match="another index"):
            ArchiveIndex.create(tmp_path / "two", model=tiny_model(), database_url=url, table_prefix=prefix)
        second = ArchiveIndex.create(tmp_path / "two", model=tiny_model(), database_url=url,
                                     table_prefix=random_prefix())
        assert ArchiveIndex.open(tmp_path / "one").manifest["index_uid"] != second.manifest["index_uid"]
        _drop(second)
    finally:
        first.store.drop_all()
        first.close()


def test_ingest_warns_when_the_index_holds_vectors_of_other_stats_code(tmp_path, caplog):
    """The model's config hash cannot tell an SDK upgrade changed its stats; the manifest's stats_version can."""
    from ctglip_sdk.model.preprocess import STATS_VERSION

    archive = make_archive(tmp_path / "a", n=2, seed=3)
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    assert read_json(tmp_path / "idx" / "manifest.json")["stats_version"] == STATS_VERSION
    with caplog.at_level(logging.WARNING, logger="ctglip_sdk"):
        idx.ingest(archive, workers=0)
    assert "organ-stats version" not in caplog.text          # same code: silent
    idx.close()
    manifest = read_json(tmp_path / "idx" / "manifest.json")
    manifest["stats_version"] = STATS_VERSION - 1            # as an index built by the previous release
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    idx = ArchiveIndex.open(tmp_path / "idx")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ctglip_sdk"):
        report = idx.ingest(make_archive(tmp_path / "b", n=1, seed=4), workers=0)
    assert report.ok == 1                                    # a warning, not a refusal: nothing is lost
    assert f"organ-stats version {STATS_VERSION - 1}" in caplog.text and "new index" in caplog.text
    idx.close()


def read_json(path):
    return json.loads(path.read_text())


def test_a_second_archive_with_the_same_file_names_does_not_replace_the_first(tmp_path):
    """Without series UIDs (NIfTI, no manifest) a series is known by its path: ingesting another archive whose
    files share those names used to replace the first archive's studies without a word (review, 2026-12-06)."""
    first = make_archive(tmp_path / "a1", n=3, seed=21)
    second = make_archive(tmp_path / "a2", n=3, seed=22)  # same file names, other images
    for root in (first, second):
        (root / "manifest.csv").unlink()
    idx = _create(tmp_path / "idx")
    assert idx.ingest(first, workers=0).ok == 3
    before = np.sort(idx.search(np.ones(idx.dim, np.float32), k=1000).crop_ids)
    report = idx.ingest(second, workers=0)
    assert report.ok == 0 and report.n_errors == 3 and report.organs_removed == 0
    assert all("another archive folder" in e["reason"] for e in report.errors)
    assert np.array_equal(np.sort(idx.search(np.ones(idx.dim, np.float32), k=1000).crop_ids), before)
    # The first archive itself, changed in place, is still re-ingested as before (new bytes: the header's
    # description; a file only touched keeps its bytes, and is skipped).
    nib_img = first / "s000" / "ct.nii.gz"
    img = nib.load(nib_img)
    img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
    img.header["descrip"] = b"edited"
    nib.save(img, nib_img)
    touched = first / "s001" / "ct.nii.gz"
    os.utime(touched, (touched.stat().st_atime, touched.stat().st_mtime + 10))
    again = idx.ingest(first, workers=0)
    assert again.ok == 1 and again.skipped == 2
    idx.close()


def test_manifest_corrections_reach_the_index_and_a_study_stays_with_one_patient(tmp_path):
    """The fingerprint covered only the image and mask, so a corrected age or split never reached the index;
    and a series re-ingested under another patient split its study between two (review, 2026-12-06)."""
    from sqlalchemy import select

    root = make_archive(tmp_path / "a", n=3, seed=23)
    idx = _create(tmp_path / "idx")
    assert idx.ingest(root, workers=0).ok == 3
    rows = read_manifest(root)
    rows[0].update(age="99", split="test", patient_id="PAT-9999")
    write_manifest(root, rows)
    report = idx.ingest(root, workers=0)
    assert (report.ok, report.skipped) == (1, 2)
    with open(idx.export(tmp_path / "studies.csv", what="studies")) as fh:
        studies = {r["study_uid"]: r for r in csv.DictReader(fh)}
    s0 = studies[rows[0]["study_uid"]]
    assert (float(s0["age"]), s0["split"], s0["patient"]) == (99.0, "test", idx.pseudonym("PAT-9999"))
    # organs, filters and patients agree with the study (the mirror was re-read)
    hits = idx.search(np.ones(idx.dim, np.float32), k=1000, where={"age": (99, 99)})
    assert len(hits) and {h.study_uid for h in hits} == {rows[0]["study_uid"]}
    assert {h.patient for h in hits} == {idx.pseudonym("PAT-9999")}
    t = idx.store.t
    orphans = idx.store.read(lambda c: c.execute(select(t.patients.c.id).where(
        ~t.patients.c.id.in_(select(t.studies.c.patient_id)))).all())
    assert orphans == []
    # An index written before the row entered the fingerprint re-embeds nothing, and learns the new format.
    legacy = {k: v.split(":")[0] for k, v in idx.store.series_fingerprints().items()}
    idx.store.set_fingerprints(legacy)
    again = idx.ingest(root, workers=0)
    assert (again.ok, again.skipped) == (0, 3)
    assert all(":" in v for v in idx.store.series_fingerprints().values())
    # ... unless its row was corrected before the upgrade: then that series is re-ingested (and only it)
    idx.store.set_fingerprints(legacy)
    rows[1].update(age="77")
    write_manifest(root, rows)
    fixed = idx.ingest(root, workers=0)
    assert (fixed.ok, fixed.skipped) == (1, 2)
    assert {h.study_uid for h in idx.search(np.ones(idx.dim, np.float32), k=1000, where={"age": (77, 77)})} == \
        {rows[1]["study_uid"]}
    # The row's part is keyed with the index's own key: another index stores another value for the same row, so
    # the database alone does not let anyone test a guessed patient_id against it (security review).
    other = _create(tmp_path / "idx2")
    other.ingest(root, workers=0)
    mine, theirs = idx.store.series_fingerprints(), other.store.series_fingerprints()
    assert all(mine[k].split(":")[0] == theirs[k].split(":")[0] and mine[k] != theirs[k] for k in mine)
    other.close()
    idx.close()


def test_malformed_header_age_and_date_are_reported_not_dropped_silently(tmp_path):
    import pydicom

    root = make_archive(tmp_path / "a", n=2, seed=24, fmt="dicom")
    (root / "manifest.csv").unlink()
    for f in (root / "s000" / "ct").iterdir():
        ds = pydicom.dcmread(f)
        ds.PatientAge, ds.PatientBirthDate, ds.StudyDate = "0A5Y", "19991399", "20211399"
        ds.save_as(f)
    idx = _create(tmp_path / "idx")
    report = idx.ingest(root, workers=0)
    assert report.ok == 2
    said = [w["warning"] for w in report.warnings]
    assert any(w.startswith("age from the image header: PatientAge is not a DICOM age string") for w in said)
    assert any(w.startswith("study_date from the image header: StudyDate is not a date") for w in said)
    assert not any("19991399" in w or "20211399" in w for w in said)  # a birth date is never echoed
    idx.close()


def test_a_moved_archive_is_skipped_and_its_new_folder_recorded(tmp_path):
    import shutil

    from sqlalchemy import select

    root = make_archive(tmp_path / "a", n=2, seed=26)
    idx = _create(tmp_path / "idx")
    idx.ingest(root, workers=0)
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)  # copy2 keeps modification times, as cp -a and rsync -a do
    shutil.rmtree(root)
    report = idx.ingest(moved, workers=0)
    assert (report.ok, report.skipped) == (0, 2)
    s = idx.store.t.series
    roots = set(idx.store.read(lambda c: c.execute(select(s.c.archive_root)).scalars().all()))
    assert roots == {str(moved.resolve())}  # montages read the images from where they are now
    idx.close()


def test_a_reader_in_another_process_sees_rewritten_metadata_and_moved_series_leave_no_empty_study(tmp_path):
    """A search process that was open kept the old age after a re-ingest rewrote a study (it only appended new
    ids), and a series moved to another study_uid left its old study and patient behind (review, 2026-12-06)."""
    import subprocess
    import sys as _sys

    from sqlalchemy import select

    root = make_archive(tmp_path / "a", n=3, seed=27)
    idx = _create(tmp_path / "idx")
    idx.ingest(root, workers=0)
    idx.close()
    reader = ArchiveIndex.open(tmp_path / "idx")
    reader.refresh_interval = 0.0
    rows = read_manifest(root)
    age0 = float(rows[0]["age"])
    before = len(reader.search(np.ones(reader.dim, np.float32), k=1000, where={"age": (age0, age0)}))
    assert before > 0
    # a second series of study 0 joins with a corrected age: no organ is removed, the first series' are rewritten
    import shutil

    shutil.copy(root / rows[0]["image"], root / "second.nii.gz")
    rows.append({**rows[0], "series_uid": rows[0]["series_uid"] + ".2", "image": "second.nii.gz", "age": "12"})
    write_manifest(root, rows)
    code = ("import sys; sys.path.insert(0, 'tests'); from ctglip_sdk.index import ArchiveIndex; "
            f"i = ArchiveIndex.open({str(tmp_path / 'idx')!r}); r = i.ingest({str(root)!r}, workers=0); "
            "i.close(); assert r.ok == 1, r.errors")
    subprocess.run([_sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert len(reader.search(np.ones(reader.dim, np.float32), k=1000, where={"age": (12, 12)})) == 2 * before
    assert len(reader.search(np.ones(reader.dim, np.float32), k=1000, where={"age": (age0, age0)})) == 0
    rows[1]["study_uid"] = rows[1]["study_uid"] + ".9"  # a series moves to a new study
    write_manifest(root, rows)
    subprocess.run([_sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    t = reader.store.t
    uids = set(reader.store.read(lambda c: c.execute(select(t.studies.c.study_uid)).scalars().all()))
    assert uids == {r["study_uid"] for r in rows}  # the emptied study is gone
    reader.close()
