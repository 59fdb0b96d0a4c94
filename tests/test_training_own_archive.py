"""Training, calibration and evaluation on a hospital's own archive: report encodings, a broken study, empty
reports and patients in two splits, each reproduced on real files (a synthetic DICOM archive, then altered)."""

from __future__ import annotations

import codecs
import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import ctglip_sdk as cg
from ctglip_sdk.cli.main import cli
from ctglip_sdk.errors import InputError
from ctglip_sdk.reports import read_report_text
from ctglip_sdk.training import calibrate, evaluate
from ctglip_sdk.training.cache import PreprocessCache
from ctglip_sdk.training.data import annotate_report, build_cache, cached_study, is_cached, read_manifest, read_reports
from ctglip_sdk.training.evaluation import encode_split
from test_model_encode import TINY

LATIN1_LINE = "Liver: Läsion im Segment VII, Größe 12 mm; Befund unverändert. Hypodense liver lesion.\n"


@pytest.fixture(scope="module")
def dicom_archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dicom")
    cg.synth.generate_archive(root, n_patients=6, seed=5, preset="small", fmt="dicom", progress=False,
                              overwrite=True)
    return root


def _copy(src: Path, dst: Path) -> List[Dict[str, str]]:
    shutil.copytree(src, dst)
    with open(dst / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _write_manifest(root: Path, rows: List[Dict[str, str]]) -> None:
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _truncate_a_slice(root: Path, row: Dict[str, str]) -> Path:
    """Cut one slice of the study's DICOM series in half, as an interrupted transfer leaves it."""
    slices = sorted((root / row["image"]).rglob("*.dcm"))
    victim = slices[len(slices) // 2]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return victim


# ---------------------------------------------------------------------------------------------- report files
def test_read_report_text_reads_the_encodings_hospital_exports_use(tmp_path, caplog):
    text = "FINDINGS:\r\nLiver: Läsion, Größe 12 mm – “stable”.\r\nSpleen: normal.\r\n"
    want = text.replace("\r\n", "\n")
    files = {"utf8.txt": text.encode("utf-8"), "bom.txt": codecs.BOM_UTF8 + text.encode("utf-8"),
             "utf16le.txt": text.encode("utf-16"),  # Python writes the platform's BOM first
             "utf16be.txt": codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
             "cp1252.txt": text.encode("cp1252")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    caplog.set_level(logging.WARNING)
    for name in files:
        assert read_report_text(tmp_path / name) == want, name
    # Only the file that needed a guess is warned about, once, naming the file and the encoding used.
    warned = [r.getMessage() for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert len(warned) == 1 and str(tmp_path / "cp1252.txt") in warned[0] and "cp1252" in warned[0]
    read_report_text(tmp_path / "cp1252.txt")
    assert len([r for r in caplog.records if "not UTF-8" in r.getMessage()]) == 1  # one warning per file

    # Latin-1 bytes that cp1252 leaves undefined (0x81) still read, as Latin-1.
    (tmp_path / "latin1.txt").write_bytes("Läsion \x81".encode("latin-1"))
    assert read_report_text(tmp_path / "latin1.txt") == "Läsion \x81"
    assert "read as latin-1" in caplog.text and str(tmp_path / "latin1.txt") in caplog.text


def test_an_unreadable_report_is_an_input_error_naming_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.txt.*cannot read the report"):
        read_report_text(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="cannot read the report"):
        read_report_text(tmp_path)  # a folder where a file should be
    (tmp_path / "odd.txt").write_bytes(codecs.BOM_UTF16_LE + "ab".encode("utf-16-le") + b"\x00\xd8")
    with pytest.raises(InputError, match="odd.txt.*UTF-16 byte-order mark"):
        read_report_text(tmp_path / "odd.txt")


def test_latin1_and_utf16_reports_give_the_labels_of_their_utf8_text(dicom_archive, tmp_path):
    rows = _copy(dicom_archive, tmp_path / "a")
    root = tmp_path / "a"
    originals = [read_report_text(root / r["report"]) + LATIN1_LINE for r in rows[:2]]
    (root / rows[0]["report"]).write_bytes(originals[0].encode("latin-1"))
    (root / rows[1]["report"]).write_bytes(originals[1].replace("\n", "\r\n").encode("utf-16"))
    got = read_reports(read_manifest(root)[:2])
    assert [r.study_uid for r in got.records] == [r["study_uid"] for r in rows[:2]] and got.skipped == []
    for st, text in zip(got.texts, originals):
        want = annotate_report(text)
        assert st.present == want.present and st.uncertain == want.uncertain and "Läsion" in st.report


def test_a_manifest_saved_with_a_bom_reads(dicom_archive, tmp_path):
    rows = _copy(dicom_archive, tmp_path / "a")
    path = tmp_path / "a" / "manifest.csv"
    path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())
    recs = read_manifest(tmp_path / "a")
    assert [r.study_uid for r in recs] == [r["study_uid"] for r in rows]
    assert recs[0].patient_id == rows[0]["patient_id"] and rows[0]["patient_id"] not in repr(recs[0])


# ---------------------------------------------------------------------------------------------- cache build
def test_the_cache_build_skips_a_broken_study_and_retries_it_once_fixed(dicom_archive, tmp_path, caplog):
    rows = _copy(dicom_archive, tmp_path / "a")
    root = tmp_path / "a"
    victim = _truncate_a_slice(root, rows[1])
    (root / rows[2]["mask"]).unlink()  # a mask file gone missing
    records = read_manifest(root)[:3]
    cache = PreprocessCache.for_model(cg.create("ctglip-tiny", overrides=TINY, seed=0), tmp_path / "cache")
    done = build_cache(records, cache, workers=1, progress=False)  # a worker process: its errors come back too
    assert done.built == 1
    assert [u for u, _ in done.skipped] == [rows[1]["study_uid"], rows[2]["study_uid"]]
    assert victim.name in done.skipped[0][1] and "truncated" in done.skipped[0][1]
    assert Path(rows[2]["mask"]).name in done.skipped[1][1] and "FileNotFoundError" not in done.skipped[1][1]
    assert f"study {rows[1]['study_uid']} cannot be preprocessed" in caplog.text
    # Nothing about the failure is stored: once the slice is restored, the next build makes the entry.
    shutil.copy2(dicom_archive / victim.relative_to(root), victim)
    again = build_cache(records, cache, progress=False)
    assert again.built == 1 and [u for u, _ in again.skipped] == [rows[2]["study_uid"]]
    assert is_cached(cache, records[1])


def _add_reconstruction(folder: Path, shift_hu: float) -> str:
    """Copy a DICOM series into a second one in the same folder (new UIDs, HU shifted): a second kernel's
    reconstruction on the same grid, which shares the CT's mask. Returns its SeriesInstanceUID."""
    import pydicom
    from pydicom.uid import generate_uid

    uid = generate_uid()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.RescaleIntercept = float(ds.RescaleIntercept) + shift_hu
        ds.save_as(f.with_name(f"B{f.name}"))
    return uid


def test_a_folder_holding_two_series_trains_each_manifest_row_on_its_own_series(dicom_archive, tmp_path, caplog):
    """A manifest row's series_uid picks its series in a folder of several, as ingest does (it used to be
    skipped with 'folder holds 2 series'); two series sharing one mask get separate cache entries."""
    rows = _copy(dicom_archive, tmp_path / "a")
    root = tmp_path / "a"
    twin = _add_reconstruction(root / rows[0]["image"], shift_hu=100.0)
    rows.insert(1, {**rows[0], "series_uid": twin, "study_uid": rows[0]["study_uid"] + ".2"})
    _write_manifest(root, rows)
    records = read_manifest(root)[:2]
    assert records[1].series == twin and records[0].image == records[1].image and records[0].mask == records[1].mask
    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    cache = PreprocessCache.for_model(model, tmp_path / "cache")
    done = build_cache(records, cache, progress=False)
    assert done.built == 2 and done.skipped == []
    ct, kernel_b = cached_study(cache, records[0]), cached_study(cache, records[1])
    clean_rec = read_manifest(dicom_archive)[0]  # the same study before the second series was added
    clean_cache = PreprocessCache.for_model(model, tmp_path / "clean")
    build_cache([clean_rec], clean_cache, progress=False)
    assert torch.equal(ct.image, cached_study(clean_cache, clean_rec).image)  # the row's own series, not its twin
    assert not torch.equal(ct.image, kernel_b.image) and ct.names == kernel_b.names
    # Evaluation reads each row's own series too (it does not go through the cache).
    emb = encode_split(model, records, workers=0)
    assert emb.skipped == [] and len(set(emb.study.tolist())) == 2
    assert not np.allclose(emb.vectors[emb.study == 0], emb.vectors[emb.study == 1])
    # A row whose series_uid is not in the folder is left out, and the reason names the folder's series.
    rows[0]["series_uid"] = "1.2.826.0.1.99999.1"
    _write_manifest(root, rows)
    stale = read_manifest(root)[:1]
    got = build_cache(stale, PreprocessCache.for_model(model, tmp_path / "stale"), progress=False)
    assert got.built == 0 and "folder holds 2 series" in got.skipped[0][1] and twin in got.skipped[0][1]


# ---------------------------------------------------------------------------------------------- ctglip train
def _train(archive: Path, out: Path, cache: Path, *extra: str):
    args = ["train", "--archive", str(archive), "--model", "ctglip-tiny", "--out", str(out), "--json",
            "--no-progress", "--set", "max_steps=2", "--set", "batch_size=2", "--set", "checkpoint_every=1",
            "--set", f"cache_dir={cache}", "--set", "organs_per_study=20", "--set", "warmup_steps=1",
            "--set", "threads=1", *extra]
    return CliRunner().invoke(cli, args)


@pytest.fixture(scope="module")
def hospital(dicom_archive, tmp_path_factory):
    """The archive as a hospital exports it: in the train split a Latin-1 report, a UTF-16 report, a study with
    a truncated slice and an empty report; a patient of the train split also in the val split."""
    root = tmp_path_factory.mktemp("hospital") / "a"
    rows = _copy(dicom_archive, root)
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 4
    latin1, utf16, broken, empty = train
    (root / latin1["report"]).write_bytes((read_report_text(root / latin1["report"]) + LATIN1_LINE).encode("latin-1"))
    (root / utf16["report"]).write_bytes(read_report_text(root / utf16["report"]).encode("utf-16"))
    slice_ = _truncate_a_slice(root, broken)
    (root / empty["report"]).write_text("  \n\n")
    val = next(r for r in rows if r["split"] == "val")
    val["patient_id"] = latin1["patient_id"]
    _write_manifest(root, rows)
    return {"root": root, "rows": rows, "latin1": latin1, "utf16": utf16, "broken": broken, "empty": empty,
            "slice": slice_}


@pytest.mark.slow
def test_train_reads_any_report_encoding_skips_broken_and_empty_studies_and_resumes(hospital, dicom_archive,
                                                                                     tmp_path, caplog):
    root, h = hospital["root"], hospital
    out, cache = tmp_path / "run", tmp_path / "cache"
    res = _train(root, out, cache)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)  # --json prints the summary: no traceback before it
    assert summary["steps"] == 2 and summary["n_train"] == 2
    assert summary["skipped_studies"] == json.loads((out / "summary.json").read_text())["skipped_studies"]
    [skipped] = summary["skipped_studies"]
    assert skipped["study_uid"] == h["broken"]["study_uid"] and h["slice"].name in skipped["reason"]
    assert f"study {h['broken']['study_uid']} cannot be preprocessed" in caplog.text
    # The Latin-1 report is read (warned about by name), the UTF-16 one silently: its BOM says what it is.
    assert f"{root / h['latin1']['report']}: the report is not UTF-8" in caplog.text and "cp1252" in caplog.text
    assert str(root / h["utf16"]["report"]) not in caplog.text
    # The empty report's study is left out with one warning naming it.
    assert "training: left out 1 study whose report is empty" in caplog.text and h["empty"]["study_uid"] in caplog.text
    # The train patient also in the val split is counted, never named.
    assert summary["patients_shared"] == {"split 'val'": 1}
    assert "patient leakage: 1 of the 4 patients of training split 'train'" in caplog.text
    for row in h["rows"]:
        assert row["patient_id"] not in caplog.text and row["patient_id"] not in res.output

    # The slice is restored before resuming: the resumed run keeps the study out (same data, exact resume)...
    shutil.copy2(dicom_archive / h["slice"].relative_to(root), h["slice"])
    try:
        res = _train(root, out, cache, "--set", "max_steps=3", "--resume")
        assert res.exit_code == 0, res.output
        resumed = json.loads(res.output)
        assert resumed["resumed_from"] == 2 and resumed["steps"] == 3 and resumed["n_train"] == 2
        assert [s["study_uid"] for s in resumed["skipped_studies"]] == [h["broken"]["study_uid"]]
        assert resumed["cache_built"] == 0
        # ... and a new run re-tries it.
        res = _train(root, tmp_path / "new", cache, "--set", "max_steps=1")
        assert res.exit_code == 0, res.output
        fresh = json.loads(res.output)
        assert fresh["n_train"] == 3 and fresh["skipped_studies"] == [] and fresh["cache_built"] == 1
    finally:
        _truncate_a_slice(root, h["broken"])  # the module's other tests see the archive as exported


def test_train_with_no_readable_study_is_a_clear_error(dicom_archive, tmp_path):
    rows = _copy(dicom_archive, tmp_path / "a")
    for row in rows:
        if row["split"] == "train":
            _truncate_a_slice(tmp_path / "a", row)
    res = _train(tmp_path / "a", tmp_path / "run", tmp_path / "cache")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "none of the studies of split 'train' could be read (4 left out" in res.output
    assert "manifest.csv" in res.output and not (tmp_path / "run" / "checkpoints").exists()

    for row in rows:
        if row["split"] == "train":
            (tmp_path / "a" / row["report"]).write_text("")
    res = _train(tmp_path / "a", tmp_path / "run", tmp_path / "cache")
    assert res.exit_code == 1 and "no study of split 'train' has a readable, non-empty report" in res.output


# ---------------------------------------------------------------------------------------------- eval, calibrate
def test_eval_with_report_labels_reads_every_encoding_and_leaves_empty_reports_out(hospital, tmp_path, caplog):
    root, h = hospital["root"], hospital
    cg.create("ctglip-tiny", overrides=TINY, seed=0).save_pretrained(tmp_path / "model")
    res = CliRunner().invoke(cli, ["eval", "--model", str(tmp_path / "model"), "--archive", str(root), "--split",
                                   "all", "--val-split", "none", "--labels", "reports", "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    # 6 studies: the empty report's study is left out of every metric, the broken one is listed as skipped.
    assert m["n_studies"] == 4
    assert [s["study_uid"] for s in m["skipped_studies"]] == [h["broken"]["study_uid"]]
    assert "evaluation: left out 1 study whose report is empty" in caplog.text and h["empty"]["study_uid"] in caplog.text
    # The Latin-1 and UTF-16 reports were read (the Latin-1 file is warned about once per process: maybe by an
    # earlier test), and their studies are scored.
    assert "UnicodeDecodeError" not in res.output and "UnicodeDecodeError" not in caplog.text
    # Scoring every study: no other split to share patients with.
    assert m["patients_shared"] == {}


def test_eval_warns_when_the_scored_split_shares_patients_with_the_threshold_split(hospital, caplog):
    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    m = evaluate(model, hospital["root"], split="val", val_split="test")
    assert m["patients_shared"] == {"split 'train'": 1}
    assert "patient leakage: 1 of the 1 patients of scored split 'val'" in caplog.text
    assert hospital["latin1"]["patient_id"] not in caplog.text
    # In-sample thresholds on the same studies are not patient leakage.
    caplog.clear()
    m = evaluate(model, hospital["root"], split="all", val_split="all", val_archive=hospital["root"])
    assert m["patients_shared"] == {} and "patient leakage" not in caplog.text


def test_eval_refuses_a_val_split_whose_reports_are_all_empty(hospital, tmp_path):
    rows = _copy(hospital["root"], tmp_path / "a")
    for row in rows:
        if row["split"] == "val":
            (tmp_path / "a" / row["report"]).write_bytes(b"")
    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    with pytest.raises(InputError, match="no study of split 'val' has a readable, non-empty report"):
        evaluate(model, tmp_path / "a", split="test", val_split="val", labels="reports")


def test_calibrate_on_reports_leaves_out_empty_reports_and_lists_unreadable_studies(hospital, tmp_path, caplog):
    rows = _copy(hospital["root"], tmp_path / "a")
    gone = next(r for r in rows if r["split"] == "test")
    (tmp_path / "a" / gone["report"]).unlink()  # the report file is missing: its study is listed, not fatal
    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    rep = calibrate(model, tmp_path / "a", split="all")
    assert rep["n_studies"] == 3  # 6 - empty report - missing report - truncated slice
    uids = [s["study_uid"] for s in rep["skipped_studies"]]
    assert uids == [gone["study_uid"], hospital["broken"]["study_uid"]]
    assert Path(gone["report"]).name in rep["skipped_studies"][0]["reason"]
    assert "calibration: left out 1 study whose report is empty" in caplog.text


def test_skipped_reasons_carry_archive_relative_paths(tmp_path):
    from ctglip_sdk.training.data import relative_reason

    root = tmp_path / "site" / "ward 7"
    reason = f"{root}/P01/ct: truncated slice {root.resolve()}/P01/ct/IM2.dcm"
    assert relative_reason(reason, root) == "P01/ct: truncated slice P01/ct/IM2.dcm"
    assert relative_reason("no organ in the mask", root) == "no organ in the mask"
    # A relative root only strips its absolute form, never a same-named folder inside another path.
    import os

    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        other = f"{tmp_path}/elsewhere/site/x.dcm: bad"
        assert relative_reason(f"{tmp_path}/site/a.dcm: bad; {other}", "site") == f"a.dcm: bad; {other}"
    finally:
        os.chdir(here)


# ---------------------------------------------------------------------------------------------- the mask's grid
def _resave(path: Path, affine, data=None, dst: Path = None) -> None:
    import nibabel as nib
    import numpy as np

    img = nib.load(str(path))
    out = np.asarray(img.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(out, affine), str(dst or path))


def _per_class_folder(mask: Path, folder: Path, step: int = 1) -> None:
    """TotalSegmentator's default layout: one <class>.nii.gz per organ of ``mask``; ``step=2`` writes every other
    voxel with twice the spacing (a --fast run never resampled back onto the image)."""
    import nibabel as nib
    import numpy as np

    from ctglip_sdk.organs import label_map

    img = nib.load(str(mask))
    lab = np.asarray(img.dataobj)[::step, ::step, ::step]
    affine = img.affine @ np.diag([step, step, step, 1.0])
    folder.mkdir()
    names = label_map("totalseg_v1")
    for i in np.unique(lab[lab > 0]).tolist():
        nib.save(nib.Nifti1Image((lab == i).astype(np.uint8), affine), str(folder / f"{names[int(i)]}.nii.gz"))


@pytest.fixture(scope="module")
def misaligned(tmp_path_factory):
    """A NIfTI archive whose masks ingest refuses as a mask mismatch, in three training studies: one written 40 mm
    further up, one with its LPS affine read as RAS (organs flipped), one per-class folder on a grid twice as
    coarse; a fourth training study has a per-class folder on the image's own grid (accepted)."""
    import numpy as np

    base = tmp_path_factory.mktemp("grid")
    clean = base / "clean"
    cg.synth.generate_archive(clean, n_patients=8, seed=5, preset="small", fmt="nifti", progress=False,
                              overwrite=True)
    root = base / "a"
    rows = _copy(clean, root)
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 6
    shifted, lps, coarse, folder = train[:4]
    import nibabel as nib

    affine = nib.load(str(root / shifted["mask"])).affine.copy()
    affine[2, 3] += 40.0
    _resave(root / shifted["mask"], affine)
    _resave(root / lps["mask"], np.diag([-1.0, -1.0, 1.0, 1.0]) @ nib.load(str(root / lps["mask"])).affine)
    for row, step in ((coarse, 2), (folder, 1)):
        mask = Path(row["mask"])
        row["mask"] = (mask.parent / mask.name.removesuffix(".nii.gz")).as_posix()  # masks/case00002 (a folder)
        _per_class_folder(root / mask, root / row["mask"], step)
    _write_manifest(root, rows)
    return {"root": root, "clean": clean, "rows": rows, "shifted": shifted, "lps": lps, "coarse": coarse,
            "folder": folder}


def _check_grid_reasons(skipped, m) -> None:
    """Each of the three studies is left out with a reason naming its mask (archive-relative) and both grids."""
    reasons = {s["study_uid"]: s["reason"] for s in skipped}
    assert set(reasons) == {m[k]["study_uid"] for k in ("shifted", "lps", "coarse")}, skipped
    image = "(96, 96, 67) voxels of 4 x 4 x 10 mm"
    assert reasons[m["shifted"]["study_uid"]] == (
        f"{m['shifted']['mask']}: mask mismatch: same shape as the image but another grid (corners up to 4.0 voxels "
        f"apart; origins differ by 40.0 mm): the mask's grid is {image}, the image's {image}")
    assert reasons[m["lps"]["study_uid"]].startswith(
        f"{m['lps']['mask']}: mask mismatch: same shape as the image but another grid (corners up to ")
    assert reasons[m["coarse"]["study_uid"]] == (f"{m['coarse']['mask']}/: mask mismatch: the mask's grid is "
                                                 f"(48, 48, 34) voxels of 8 x 8 x 20 mm, the image's {image}")
    assert str(m["root"]) not in json.dumps(skipped)


@pytest.mark.slow
def test_train_leaves_out_masks_on_another_grid_as_ingest_does(misaligned, tmp_path):
    """Training resampled these masks silently onto their images (misaligned organ labels) while ingest refused
    them; now the cache build refuses them too, and the run goes on without them."""
    m = misaligned
    res = _train(m["root"], tmp_path / "run", tmp_path / "cache")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["n_train"] == 3 and summary["steps"] == 2  # 6 - 3 refused; the right-grid folder is used
    _check_grid_reasons(summary["skipped_studies"], m)
    assert json.loads((tmp_path / "run" / "skipped_studies.json").read_text()) == {
        "skipped_studies": summary["skipped_studies"]}
    # The archive as generated (every mask on its image's grid) is unaffected: nothing is left out.
    res = _train(m["clean"], tmp_path / "clean", tmp_path / "cache")
    assert res.exit_code == 0, res.output
    clean = json.loads(res.output)
    assert clean["n_train"] == 6 and clean["skipped_studies"] == []


def test_evaluate_and_calibrate_leave_out_masks_on_another_grid(misaligned):
    m = misaligned
    model = cg.create("ctglip-tiny", overrides=TINY, seed=0)
    got = evaluate(model, m["root"], split="all", val_split=None)
    assert got["n_studies"] == 5 and got["n_organs"] > 0
    _check_grid_reasons(got["skipped_studies"], m)
    rep = calibrate(model, m["root"], split="all", labels="truth", min_positives=1)
    assert rep["n_studies"] == 5
    _check_grid_reasons(rep["skipped_studies"], m)
    # The archive as generated is unaffected.
    clean = evaluate(model, m["clean"], split="all", val_split=None)
    assert clean["n_studies"] == 8 and clean["skipped_studies"] == []
