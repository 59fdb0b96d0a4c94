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
from ctglip_sdk.index import ArchiveIndex
from ctglip_sdk.index.layout import plan_archive
from ctglip_sdk.privacy import pseudonymize
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
        # Study and demographics come from the DICOM headers the generator wrote; the patient is the keyed
        # pseudonym of the header's PatientID (never the raw id).
        for col in ("study_uid", "age", "sex", "study_date"):
            assert r[col] == want[col], col
        assert r["patient_id"] == pseudonymize(want["patient_id"]) != want["patient_id"]
        assert (r["contrast"] == "none") == (want["contrast"] == "none")
        assert r["split"] in ("train", "val", "test")
    # Training reads it: every row resolves inside the root.
    recs = read_manifest(site)
    assert len(recs) == len(rows) and all(rec.report.is_file() and rec.mask.is_file() for rec in recs)
    # Nothing identifying is written or returned.
    out = json.dumps(summary.to_dict()) + (site / "manifest.csv").read_text()
    assert not any(r["patient_id"] in out for r in _rows(dicom_source / "manifest.csv"))


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
    # The image without a mask gets no row (neither ingest nor training could use it); the one without a report
    # keeps its row (ingest can search it) and training leaves it out with a warning.
    assert summary.rows == 4 and summary.trainable == 3
    assert "images/case00002.nii.gz" not in (arch / "manifest.csv").read_text()
    with caplog.at_level(logging.WARNING):
        recs = read_manifest(arch)
    assert len(recs) == 3
    assert "left out 1 row(s)" in caplog.text
    for sub in ("masks",):
        shutil.rmtree(arch / sub)
    with pytest.raises(InputError, match="a mask for none of them"):
        write_archive_manifest(arch, overwrite=True)


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


def _pacs_layout(src, dst, scout=True):
    """PATIENT/STUDY/SERIES/ with a scout series beside the axial one, the study's mask and report one level up."""
    import pydicom
    import pydicom.uid

    for row in _rows(src / "manifest.csv"):
        study = dst / row["patient_id"][-4:] / row["study_date"].replace("-", "")
        shutil.copytree(src / row["image"], study / "AXIAL")
        shutil.copytree(src / row["mask"].replace(".nii.gz", ""), study / "segmentations") \
            if (src / row["mask"].replace(".nii.gz", "")).is_dir() else shutil.copy(src / row["mask"], study / "seg.nii.gz")
        shutil.copy(src / row["report"], study / "report.txt")
        if scout:  # one slice of the series as a topogram: its own series UID, ImageType LOCALIZER
            first = sorted((study / "AXIAL").iterdir())[0]
            ds = pydicom.dcmread(first)
            ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[ds.SeriesInstanceUID, "scout"])
            ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[ds.SOPInstanceUID, "scout"])
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            (study / "TOPOGRAM").mkdir()
            ds.save_as(study / "TOPOGRAM" / "IM0001.dcm")
    return dst


def test_pacs_export_with_scouts_pairs_the_study_files_with_the_ct(dicom_source, tmp_path):
    pacs = _pacs_layout(dicom_source, tmp_path / "pacs")
    summary = write_archive_manifest(pacs)
    rows = _rows(pacs / "manifest.csv")
    assert summary.rows == len(rows) == 5 and summary.trainable == 5 and len(summary.localizers) == 5
    for r in rows:
        study = r["image"].rsplit("/", 1)[0]
        assert r["image"].endswith("/AXIAL") and r["mask"] == f"{study}/seg.nii.gz"
        assert r["report"] == f"{study}/report.txt"
    # Ingest discovers the same pairs and leaves the scouts out (before, each scout became a failed series).
    items, errors = plan_archive(pacs)
    assert not errors and sorted(it.image for it in items) == sorted(r["image"] for r in rows)


def test_a_dicom_folder_owns_the_mask_and_report_inside_it(dicom_source, tmp_path):
    flat = tmp_path / "flat"
    for row in _rows(dicom_source / "manifest.csv")[:2]:
        case = flat / os.path.basename(os.path.dirname(row["image"]))
        shutil.copytree(dicom_source / row["image"], case)
        shutil.copy(dicom_source / row["mask"], case / "segmentations.nii.gz")
        shutil.copy(dicom_source / row["report"], case / "report.txt")
    write_archive_manifest(flat)
    for r in _rows(flat / "manifest.csv"):
        assert (r["mask"], r["report"]) == (f"{r['image']}/segmentations.nii.gz", f"{r['image']}/report.txt")


def test_nnunet_names_pair_case_0000_with_its_label(nifti_source, tmp_path):
    nn = tmp_path / "nn"
    for sub in ("imagesTr", "labelsTr", "reports"):
        (nn / sub).mkdir(parents=True)
    for row in _rows(nifti_source / "manifest.csv"):
        case = os.path.basename(row["image"])[: -len(".nii.gz")]
        shutil.copy(nifti_source / row["image"], nn / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.copy(nifti_source / row["mask"], nn / "labelsTr" / f"{case}.nii.gz")
        shutil.copy(nifti_source / row["report"], nn / "reports" / f"{case}.txt")
    summary = write_archive_manifest(nn)
    rows = _rows(nn / "manifest.csv")
    # labelsTr/ files are masks, not CT images; each case_0000 finds case's label and report.
    assert summary.rows == len(rows) == 5 == summary.trainable
    for r in rows:
        case = os.path.basename(r["image"])[: -len("_0000.nii.gz")]
        assert (r["mask"], r["report"]) == (f"labelsTr/{case}.nii.gz", f"reports/{case}.txt")


def test_an_empty_report_is_listed_not_trainable(nifti_source, tmp_path):
    arch = tmp_path / "empty_report"
    shutil.copytree(nifti_source, arch)
    (arch / "manifest.csv").unlink()
    (arch / "reports" / "case00004.txt").write_text("  \n")
    summary = write_archive_manifest(arch)
    assert summary.empty_report == ["images/case00004.nii.gz"] and summary.trainable == 4


def test_ingest_groups_patients_alike_with_or_without_the_manifest(dicom_source, tmp_path):
    """The manifest's patient_id is what ingest starts from without a manifest: the same pseudonyms either way."""
    from test_index_common import tiny_model

    site = _site_layout(dicom_source, tmp_path / "site2")
    model = tiny_model()
    without = ArchiveIndex.create(tmp_path / "i1", model=model)
    without.ingest(site, workers=0)
    write_archive_manifest(site)
    with_manifest = ArchiveIndex.create(tmp_path / "i2", model=model)
    # Same site key for both indexes (each index makes its own), so that equal inputs give equal pseudonyms.
    shutil.copy(tmp_path / "i1" / "pseudonym.key", tmp_path / "i2" / "pseudonym.key")
    with_manifest._key = None
    with_manifest.ingest(site, workers=0)
    pa = {r["study_uid"]: r["patient"] for r in _rows(without.export(tmp_path / "a.csv", what="studies"))}
    pb = {r["study_uid"]: r["patient"] for r in _rows(with_manifest.export(tmp_path / "b.csv", what="studies"))}
    assert pa == pb and len(pa) == 5
    # find_patient takes the raw PatientID either way (pseudonym(raw) matched nothing read from headers)
    raw = {r["study_uid"]: r["patient_id"] for r in _rows(dicom_source / "manifest.csv")}
    for idx, got in ((without, pa), (with_manifest, pb)):
        assert all(idx.find_patient(raw[uid]) == pseudo for uid, pseudo in got.items())
        assert idx.find_patient("NOT-A-PATIENT") is None


def test_every_command_prints_its_user_error_as_json_under_json(tmp_path):
    """A pipeline parsing stdout reads why a --json command failed (exit 1); the message also goes to stderr."""
    missing = tmp_path / "nowhere"
    res = CliRunner().invoke(cli, ["manifest", str(missing), "--json"])
    assert res.exit_code == 1
    body = json.loads(res.stdout)
    assert body["type"] == "InputError" and "no such folder" in body["error"] and body["path"] == str(missing)
    assert "no such folder" in res.stderr
    plain = CliRunner().invoke(cli, ["manifest", str(missing)])
    assert plain.exit_code == 1 and plain.stdout == ""
    usage = CliRunner().invoke(cli, ["manifest", "--json"])  # a usage error stays a usage error (exit 2) ...
    assert usage.exit_code == 2 and "error" in json.loads(usage.stdout)  # ... and is JSON too (2026-12-07)


def _nifti_flat(src, dst, names):
    """images as dst/<name>.nii.gz (names may use any case), masks and reports by the given name patterns."""
    dst.mkdir(parents=True)
    rows = _rows(src / "manifest.csv")
    for row, (image, mask, report) in zip(rows, names):
        shutil.copy(src / row["image"], dst / image)
        if mask.endswith("/"):
            (dst / mask).mkdir()
            shutil.copy(src / row["mask"], dst / mask / "liver.nii.gz")
            shutil.copy(src / row["mask"], dst / mask / "spleen.nii.gz")
        else:
            shutil.copy(src / row["mask"], dst / mask)
        shutil.copy(src / row["report"], dst / report)
    return dst


def test_per_class_folders_named_by_suffix_and_upper_case_names_pair(nifti_source, tmp_path):
    arch = _nifti_flat(nifti_source, tmp_path / "flat", [
        ("K0.nii.gz", "K0_seg/", "K0.txt"),                       # per-class folder: its files are not CT images
        ("K1.nii.gz", "K1_segmentations/", "K1.txt"),
        ("CT_C.NII.GZ", "CT_C_seg.NII.GZ", "CT_C.TXT"),          # written on Windows
    ])
    summary = write_archive_manifest(arch)
    rows = {r["image"]: r for r in _rows(arch / "manifest.csv")}
    assert set(rows) == {"K0.nii.gz", "K1.nii.gz", "CT_C.NII.GZ"} and not summary.missing_mask
    assert (rows["K0.nii.gz"]["mask"], rows["K1.nii.gz"]["mask"]) == ("K0_seg", "K1_segmentations")
    assert (rows["CT_C.NII.GZ"]["mask"], rows["CT_C.NII.GZ"]["report"]) == ("CT_C_seg.NII.GZ", "CT_C.TXT")
    items, errors = plan_archive(arch)  # ingest's discovery agrees: three studies, no mask taken for a CT
    assert not errors and sorted(it.image for it in items) == sorted(rows)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_a_tiny_archive_never_gets_an_empty_train_split(nifti_source, tmp_path, n):
    arch = tmp_path / f"tiny{n}"
    shutil.copytree(nifti_source, arch)
    (arch / "manifest.csv").unlink()
    for i in range(n, 5):
        for sub, ext in (("images", ".nii.gz"), ("masks", ".nii.gz"), ("reports", ".txt")):
            (arch / sub / f"case0000{i}{ext}").unlink()
    for seed in range(10):
        write_archive_manifest(arch, seed=seed, overwrite=True)
        splits = [r["split"] for r in _rows(arch / "manifest.csv")]
        assert "train" in splits and len(splits) == n
        if n >= 3:
            assert {"val", "test"} <= set(splits)


def test_header_values_ingest_refuses_are_left_empty_with_a_warning(dicom_source, tmp_path, monkeypatch, caplog):
    import pydicom

    site = _site_layout(dicom_source, tmp_path / "bad")
    case = sorted(p for p in site.iterdir() if p.is_dir())[0]
    for f in case.iterdir():
        ds = pydicom.dcmread(f)
        ds.PatientSex, ds.PatientAge = "X", "999Y"
        ds.save_as(f)
    (site / f"{sorted(p.name for p in site.iterdir() if p.is_dir())[1]}.txt").write_bytes(b"\xef\xbb\xbf\r\n")
    monkeypatch.delenv("CTGLIP_PSEUDONYM_KEY", raising=False)
    with caplog.at_level(logging.WARNING):
        summary = write_archive_manifest(site)
    row = next(r for r in _rows(site / "manifest.csv") if r["image"] == case.name)
    assert row["sex"] == "" and row["age"] == ""
    assert any("sex from the image header" in w for w in summary.warnings)
    assert any("age from the image header" in w for w in summary.warnings)
    assert not any("'X'" in w or "999" in w for w in summary.warnings)  # values are never quoted
    assert len(summary.empty_report) == 1  # a byte-order mark and a line break say nothing
    assert any("public fallback key" in w for w in summary.warnings) and "public fallback key" in caplog.text
    monkeypatch.setenv("CTGLIP_PSEUDONYM_KEY", "site-secret")
    assert not any("fallback" in w for w in write_archive_manifest(site, overwrite=True).warnings)


def test_unreadable_slices_of_one_folder_are_one_planning_error(dicom_source, tmp_path):
    site = _site_layout(dicom_source, tmp_path / "cut")
    case = sorted(p for p in site.iterdir() if p.is_dir())[0]
    for f in sorted(case.iterdir())[:3]:  # three slices cut short: their headers cannot be read
        f.write_bytes(f.read_bytes()[:200])
    items, errors = plan_archive(site)
    assert len(errors) == 1
    key, reason = errors[0]
    assert key == f"path:{case.name}/" and reason.startswith("3 unreadable files, e.g. ")


def _accession_layout(src, dst):
    """site/<case>/ (series), site/<case>_seg.nii.gz, and reports exported from the RIS as reports/<ACC>.txt."""
    import pydicom

    dst.mkdir()
    (dst / "ris").mkdir()
    accessions = {}
    for row in _rows(src / "manifest.csv"):
        case = os.path.basename(os.path.dirname(row["image"]))
        shutil.copytree(src / row["image"], dst / case)
        shutil.copy(src / row["mask"], dst / f"{case}_seg.nii.gz")
        first = sorted((dst / case).iterdir())[0]
        acc = str(pydicom.dcmread(first, stop_before_pixels=True).AccessionNumber)
        shutil.copy(src / row["report"], dst / "ris" / f"{acc}_report.txt")
        accessions[case] = acc
    return dst, accessions


def test_reports_named_by_accession_number_pair_only_when_asked(dicom_source, tmp_path, caplog):
    site, accessions = _accession_layout(dicom_source, tmp_path / "site")
    plain = write_archive_manifest(site)
    assert len(plain.missing_report) == 5 and plain.reports_by_accession == 0  # off by default
    with caplog.at_level(logging.DEBUG):
        summary = write_archive_manifest(site, overwrite=True, reports_by_accession=True)
    rows = _rows(site / "manifest.csv")
    assert summary.reports_by_accession == 5 and not summary.missing_report and summary.trainable == 5
    for r in rows:
        assert r["report"] == f"ris/{accessions[r['image']]}_report.txt"
    recs = read_manifest(site)  # training reads the pairs: each report is its own study's text
    ref = {r["series_uid"]: (dicom_source / r["report"]).read_text() for r in _rows(dicom_source / "manifest.csv")}
    assert all(rec.report.read_text() == ref[row["series_uid"]] for rec, row in zip(recs, rows))
    # The number is read for the match only: not in the summary, the log or the CLI output.
    out = json.dumps(summary.to_dict()) + caplog.text
    assert not any(acc in out for acc in accessions.values())
    # Two files named by one accession number: that series is not paired, and the warning names the image only.
    case, acc = sorted(accessions.items())[0]
    (site / "other").mkdir()
    shutil.copy(site / "ris" / f"{acc}_report.txt", site / "other" / f"{acc}.TXT")
    res = CliRunner().invoke(cli, ["manifest", str(site), "--force", "--reports-by-accession", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["reports_by_accession"] == 4 and got["missing_report"] == [case]
    assert any(w.startswith(f"{case}: 2 report files") for w in got["warnings"]) and acc not in res.output


def test_reports_by_accession_ignore_links_out_of_the_archive_and_fifos(dicom_source, tmp_path):
    import os as _os

    site, accessions = _accession_layout(dicom_source, tmp_path / "site")
    case, acc = sorted(accessions.items())[0]
    outside = tmp_path / "outside.txt"
    outside.write_text("Liver: hepatic cyst.")
    (site / "ris" / f"{acc}_report.txt").unlink()
    (site / "ris" / f"{acc}_report.txt").symlink_to(outside)  # a link out of the archive
    case2, acc2 = sorted(accessions.items())[1]
    (site / "ris" / f"{acc2}_report.txt").unlink()
    _os.mkfifo(site / "ris" / f"{acc2}_report.txt")  # would block a read
    summary = write_archive_manifest(site, reports_by_accession=True)
    assert sorted(summary.missing_report) == sorted([case, case2]) and summary.reports_by_accession == 3


def test_synth_dicom_layout_pairs_by_the_study_folder_name(dicom_source, tmp_path):
    """images/S/<series>/ with masks/S.nii.gz and reports/S.txt (what ``ctglip synth --format dicom`` writes): the
    study folder's name pairs them when the series is its only image, and not when the folder holds two."""
    import pydicom
    import pydicom.uid

    arch = tmp_path / "d"
    shutil.copytree(dicom_source, arch)
    ref = {r["series_uid"]: r for r in _rows(arch / "manifest.csv")}
    (arch / "manifest.csv").unlink()
    items, errors = plan_archive(arch)
    assert not errors and len(items) == len(ref)
    for it in items:
        assert it.mask == ref[it.key]["mask"] and it.named_by == it.image.rsplit("/", 1)[0]
    summary = write_archive_manifest(arch)
    assert summary.trainable == len(ref) and not summary.missing_mask and not summary.missing_report
    for r in _rows(arch / "manifest.csv"):
        assert (r["mask"], r["report"]) == (ref[r["series_uid"]]["mask"], ref[r["series_uid"]]["report"])
    # A second series in one study folder: the folder's name could be either's, so neither takes its mask.
    first = sorted(ref.values(), key=lambda r: r["image"])[0]
    case = arch / first["image"].rsplit("/", 1)[0]
    other = case / "SECOND"
    shutil.copytree(arch / first["image"], other)
    for f in sorted(other.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[first["series_uid"], "second"])
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[ds.SOPInstanceUID, "second"])
        ds.save_as(f)
    summary = write_archive_manifest(arch, overwrite=True)
    assert summary.trainable == len(ref) - 1 and len(summary.missing_mask) == 2
    assert all(case.name in name for name in summary.missing_mask)
