"""write_archive_manifest / `ctglip manifest` on real files: DICOM and NIfTI layouts, splits, gaps, safety."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil

import pytest
from click.testing import CliRunner

from ctglip_sdk.cli.main import cli
from ctglip_sdk.errors import ConfigError, InputError
from ctglip_sdk.index.archive_manifest import write_archive_manifest
from ctglip_sdk.index.layout import plan_archive
from ctglip_sdk.synth import generate_archive
from ctglip_sdk.training.data import read_manifest


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def dicom_source(tmp_path_factory):
    """A synthetic DICOM archive: its manifest.csv is the reference the written one must agree with."""
    root = tmp_path_factory.mktemp("dcm") / "a"
    generate_archive(root, 5, seed=11, fmt="dicom", preset="small")
    return root


@pytest.fixture(scope="module")
def nifti_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("nii") / "a"
    generate_archive(root, 5, seed=12, fmt="nifti", preset="small")
    return root


def _site_layout(src, dst):
    """Rearrange a synthetic DICOM archive the way a site might keep one: site/<case>/ (series),
    site/<case>_seg.nii.gz, site/<case>.txt, and no manifest."""
    dst.mkdir()
    for row in _rows(src / "manifest.csv"):
        case = os.path.basename(os.path.dirname(row["image"]))
        shutil.copytree(src / row["image"], dst / case)
        shutil.copy(src / row["mask"], dst / f"{case}_seg.nii.gz")
        shutil.copy(src / row["report"], dst / f"{case}.txt")
    return dst


def test_dicom_site_layout_pairs_files_and_reads_headers(dicom_source, tmp_path):
    site = _site_layout(dicom_source, tmp_path / "site")
    summary = write_archive_manifest(site, seed=3)
    ref = {r["series_uid"]: r for r in _rows(dicom_source / "manifest.csv")}
    rows = _rows(site / "manifest.csv")
    assert summary.rows == len(rows) == len(ref) == summary.trainable
    assert not summary.missing_mask and not summary.missing_report and not summary.unreadable
    for r in rows:
        want = ref[r["series_uid"]]
        case = r["image"]
        assert (r["mask"], r["report"]) == (f"{case}_seg.nii.gz", f"{case}.txt")
        # Patient, study and demographics come from the DICOM headers the generator wrote.
        for col in ("patient_id", "study_uid", "age", "sex", "study_date"):
            assert r[col] == want[col], col
        assert (r["contrast"] == "none") == (want["contrast"] == "none")
        assert r["split"] in ("train", "val", "test")
    # Training reads it: every row resolves inside the root.
    recs = read_manifest(site)
    assert len(recs) == len(rows) and all(rec.report.is_file() and rec.mask.is_file() for rec in recs)
    # Nothing identifying is returned (the patient id stays in the file beside the headers that hold it).
    out = json.dumps(summary.to_dict())
    assert not any(r["patient_id"] in out for r in rows)


def test_nifti_sibling_folders_and_ingest_discovery_agree(nifti_source, tmp_path):
    arch = tmp_path / "n"
    shutil.copytree(nifti_source, arch)
    (arch / "manifest.csv").unlink()
    (arch / "truth.jsonl").unlink()
    # Without a manifest, ingest's discovery now pairs images/S.nii.gz with masks/S.nii.gz.
    items, errors = plan_archive(arch)
    assert not errors and all(it.mask == "masks/" + it.image.split("/")[-1] for it in items)
    summary = write_archive_manifest(arch)
    rows = _rows(arch / "manifest.csv")
    assert summary.trainable == len(rows) == 5
    for r in rows:
        stem = r["image"].split("/")[-1][: -len(".nii.gz")]
        assert r["report"] == f"reports/{stem}.txt" and r["mask"] == f"masks/{stem}.nii.gz"
        # NIfTI carries no patient: each image is its own pseudo-patient, demographics left empty.
        assert r["patient_id"] == f"path:{r['image']}" and r["age"] == "" and r["sex"] == ""


def test_missing_report_and_mask_are_listed_and_training_skips_them(nifti_source, tmp_path, caplog):
    arch = tmp_path / "gaps"
    shutil.copytree(nifti_source, arch)
    (arch / "manifest.csv").unlink()
    (arch / "reports" / "case00001.txt").unlink()
    (arch / "masks" / "case00002.nii.gz").unlink()
    summary = write_archive_manifest(arch)
    assert summary.missing_report == ["images/case00001.nii.gz"]
    assert summary.missing_mask == ["images/case00002.nii.gz"]
    assert summary.rows == 5 and summary.trainable == 3
    with caplog.at_level(logging.WARNING):
        recs = read_manifest(arch)
    assert len(recs) == 3
    assert "left out 2 row(s)" in caplog.text


def _copies(arch, names):
    for name in names:
        for sub, ext in (("images", ".nii.gz"), ("masks", ".nii.gz"), ("reports", ".txt")):
            shutil.copy(arch / sub / f"case00000{ext}", arch / sub / f"{name}{ext}")


def test_splits_are_per_patient_and_stable_when_the_archive_grows(nifti_source, tmp_path):
    arch = tmp_path / "grow"
    shutil.copytree(nifti_source, arch)
    (arch / "manifest.csv").unlink()
    _copies(arch, [f"old{i:02d}" for i in range(20)])
    write_archive_manifest(arch, seed=5)
    before = {r["image"]: r["split"] for r in _rows(arch / "manifest.csv")}
    assert set(before.values()) == {"train", "val", "test"}
    _copies(arch, [f"new{i:02d}" for i in range(10)])
    write_archive_manifest(arch, seed=5, overwrite=True)
    after = {r["image"]: r["split"] for r in _rows(arch / "manifest.csv")}
    assert len(after) == 35 and all(after[k] == v for k, v in before.items())
    write_archive_manifest(arch, seed=6, overwrite=True)
    assert {r["image"]: r["split"] for r in _rows(arch / "manifest.csv")} != after


def test_a_tiny_archive_still_gets_val_and_test(nifti_source, tmp_path):
    arch = tmp_path / "tiny"
    shutil.copytree(nifti_source, arch)
    (arch / "manifest.csv").unlink()
    for seed in range(6):
        write_archive_manifest(arch, seed=seed, overwrite=True)
        splits = [r["split"] for r in _rows(arch / "manifest.csv")]
        assert {"val", "test"} <= set(splits) and len(splits) == 5


def test_refusals_name_the_problem(nifti_source, tmp_path):
    with pytest.raises(ConfigError, match="exists"):
        write_archive_manifest(nifti_source)  # a curated manifest is never replaced silently
    with pytest.raises(ConfigError, match="sum"):
        write_archive_manifest(nifti_source, fractions=(0.5, 0.5, 0.5), overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    with pytest.raises(InputError, match="no DICOM series or NIfTI image") as exc:
        write_archive_manifest(empty)
    assert str(empty) in str(exc.value)
    assert not (empty / "manifest.csv").exists()
    with pytest.raises(ConfigError):
        write_archive_manifest(None)


def test_a_report_link_leaving_the_root_is_not_used(nifti_source, tmp_path):
    arch = tmp_path / "link"
    shutil.copytree(nifti_source, arch)
    (arch / "manifest.csv").unlink()
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("Liver: hepatic cyst.")
    (arch / "reports" / "case00003.txt").unlink()
    os.symlink(outside, arch / "reports" / "case00003.txt")
    summary = write_archive_manifest(arch)
    assert "images/case00003.nii.gz" in summary.missing_report


def test_cli_json_and_exit_codes(nifti_source, tmp_path):
    arch = tmp_path / "cli"
    shutil.copytree(nifti_source, arch)
    (arch / "manifest.csv").unlink()
    runner = CliRunner()
    res = runner.invoke(cli, ["manifest", str(arch), "--json", "--fractions", "0.6,0.2,0.2"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["rows"] == 5 and data["trainable"] == 5 and sum(data["splits"].values()) == 5
    again = runner.invoke(cli, ["manifest", str(arch)])
    assert again.exit_code == 1 and "--force" in again.output
    bad = runner.invoke(cli, ["manifest", str(arch), "--fractions", "0.7,0.3"])
    assert bad.exit_code == 2
