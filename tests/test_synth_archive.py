"""The archive on disk: layout, manifest, truth.jsonl, DICOM tags and read-back, NIfTI, determinism, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

import ctglip_sdk as cg
from ctglip_sdk.organs import V1
from ctglip_sdk.synth import FINDINGS, MANIFEST_COLUMNS


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "arch"
    summary = cg.synth.generate_archive(root, 3, seed=5, fmt="dicom", preset="small", progress=False,
                                        prevalence={"renal_stone": 1.0, "liver_cyst": 1.0})
    return root, summary


def rows(root: Path) -> list:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_layout_manifest_and_truth(archive):
    root, summary = archive
    assert summary.n_patients == 3 and summary.manifest == root / "manifest.csv"
    rs = rows(root)
    assert list(rs[0]) == MANIFEST_COLUMNS and len(rs) == 3
    assert sorted(r["split"] for r in rs) == ["test", "train", "val"]
    truth = [json.loads(line) for line in (root / "truth.jsonl").read_text().splitlines()]
    assert [t["study_uid"] for t in truth] == [r["study_uid"] for r in rs]
    for r, t in zip(rs, truth):
        assert (root / r["image"]).is_dir() and r["image"].endswith(f"/{r['study_uid']}")
        assert r["patient_id"] not in r["image"]  # no MRN in paths
        assert (root / r["mask"]).is_file() and (root / r["report"]).is_file()
        assert r["contrast"] in ("portal_venous", "none") and r["sex"] in ("F", "M") and 18 <= int(r["age"]) <= 95
        assert t["patient_id"] == r["patient_id"] and t["split"] == r["split"]
        assert int(r["n_findings"]) == len(t["findings"]) >= 2
        for f in t["findings"]:
            assert f["organ"] in V1.values() and f["finding"] in FINDINGS
            assert set(f) >= {"organ", "finding", "side", "size_mm", "location", "hu"}
        assert {"renal_stone", "liver_cyst"} <= {f["finding"] for f in t["findings"]}
    assert json.loads((root / "synth.json").read_text())["seed"] == 5


def test_dicom_tags_and_fake_identifiers(archive):
    root, _ = archive
    r = rows(root)[0]
    files = sorted((root / r["image"]).glob("*.dcm"))
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.Modality == "CT" and ds.StudyInstanceUID == r["study_uid"] and ds.SeriesInstanceUID == r["series_uid"]
    assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == -1024
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert float(ds.SliceThickness) == 10 and [float(v) for v in ds.PixelSpacing] == [4, 4]
    assert ds.KVP and ds.BodyPartExamined and ds.FrameOfReferenceUID
    # Fake identifiers, there to be removed by de-identification.
    assert ds.PatientID == r["patient_id"] and "^" in str(ds.PatientName)
    assert len(ds.PatientBirthDate) == 8 and ds.AccessionNumber and ds.InstitutionName
    assert ("ContrastBolusAgent" in ds) == (r["contrast"] == "portal_venous")
    zs = sorted(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files)
    assert np.allclose(np.diff(zs), 10.0)
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert len(uids) == len(files)


def test_dicom_read_back_equals_generated_volume(archive):
    root, _ = archive
    for i, r in enumerate(rows(root)):
        vol = cg.load_volume(root / r["image"])
        ref = cg.synth.generate_patient(5, "small", prevalence={"renal_stone": 1.0, "liver_cyst": 1.0}, index=i,
                                        archive_seed=5)
        assert vol.array.shape == ref.volume.array.shape
        assert np.array_equal(vol.array, ref.volume.array)
        assert np.allclose(vol.affine, ref.volume.affine, atol=1e-3)
        # The mask NIfTI is on the same grid, with the same (RAS) affine.
        img = nib.load(root / r["mask"])
        assert np.allclose(img.affine, vol.affine, atol=1e-3) and img.get_data_dtype() == np.uint8
        seg = cg.load_segmentation(root / r["mask"], like=vol)
        assert np.array_equal(seg.array, ref.segmentation.array)
        assert (root / r["report"]).read_text(encoding="utf-8") == ref.report


def test_nifti_format_and_per_class_masks(tmp_path):
    s = cg.synth.generate_archive(tmp_path / "n", 1, seed=2, fmt="nifti", preset="small", progress=False,
                                  per_class_masks=True)
    (r,) = rows(s.root)
    assert r["image"].startswith("images/case") and r["image"].endswith(".nii.gz")
    assert r["patient_id"] not in r["image"] + r["mask"] + r["report"]  # no MRN in paths
    img = nib.load(s.root / r["image"])
    ref = cg.synth.generate_patient(2, "small", index=0, archive_seed=2)
    assert np.array_equal(np.asanyarray(img.dataobj), ref.volume.array.astype(np.int16))
    assert np.array_equal(cg.load_volume(s.root / r["image"]).array, ref.volume.array)
    per_class = s.root / r["mask"].removesuffix(".nii.gz")
    files = sorted(per_class.glob("*.nii.gz"))
    assert len(files) == 104
    multi = np.asanyarray(nib.load(s.root / r["mask"]).dataobj)
    liver = np.asanyarray(nib.load(per_class / "liver.nii.gz").dataobj)
    assert np.array_equal(liver.astype(bool), multi == 5)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = cg.synth.generate_archive(tmp_path / "a", 2, seed=9, preset="small", progress=False, workers=2)
    # Same seed, smaller archive: patient 0 comes out byte for byte the same (each patient has its own seed).
    b = cg.synth.generate_archive(tmp_path / "b", 1, seed=9, preset="small", progress=False)
    c = cg.synth.generate_archive(tmp_path / "c", 1, seed=10, preset="small", progress=False)
    ra, rb, rc = rows(a.root)[0], rows(b.root)[0], rows(c.root)[0]
    assert {k: v for k, v in ra.items() if k != "split"} == {k: v for k, v in rb.items() if k != "split"}
    assert ra["study_uid"] != rc["study_uid"]
    fa = sorted((a.root / ra["image"]).glob("*.dcm"))
    fb = sorted((b.root / rb["image"]).glob("*.dcm"))
    assert [f.read_bytes() for f in fa] == [f.read_bytes() for f in fb]
    assert (a.root / ra["report"]).read_text() == (b.root / rb["report"]).read_text()
    assert (a.root / ra["mask"]).read_bytes() == (b.root / rb["mask"]).read_bytes()
    va, vc = cg.load_volume(a.root / ra["image"]), cg.load_volume(c.root / rc["image"])
    assert va.array.shape != vc.array.shape or not np.array_equal(va.array, vc.array)
    ta = json.loads((a.root / "truth.jsonl").read_text().splitlines()[0])
    tb = json.loads((b.root / "truth.jsonl").read_text().splitlines()[0])
    assert ta["findings"] == tb["findings"]


def test_refuses_to_overwrite_and_validates(tmp_path, archive):
    root, _ = archive
    with pytest.raises(cg.InputError, match="overwrite"):
        cg.synth.generate_archive(root, 1, preset="small", progress=False)
    with pytest.raises(cg.ConfigError):
        cg.synth.generate_archive(tmp_path / "x", 1, fmt="png", progress=False)
    with pytest.raises(cg.ConfigError):
        cg.synth.generate_archive(tmp_path / "x", 0, progress=False)
    with pytest.raises(cg.ConfigError):
        cg.synth.generate_archive(tmp_path / "x", 1, preset="huge", progress=False)
    for bad in (None, 7):  # was a raw TypeError from pathlib
        with pytest.raises(cg.ConfigError, match=f"out_dir: expected an output folder path, got {type(bad).__name__}"):
            cg.synth.generate_archive(bad, 1, preset="small", progress=False)
    assert not (tmp_path / "x").exists()


def test_cases_fix_chosen_patients_and_leave_the_others_drawn(tmp_path):
    plain = tmp_path / "plain"
    cg.synth.generate_archive(plain, 3, seed=9, preset="small", progress=False)
    planted = tmp_path / "planted"
    cg.synth.generate_archive(planted, 3, seed=9, preset="small", progress=False,
                              cases={1: {"findings": ["hepatic_steatosis"], "sex": "F", "age": 67}})
    a, b = rows(plain), rows(planted)
    assert (b[1]["sex"], b[1]["age"]) == ("F", "67")
    truth = [json.loads(x) for x in (planted / "truth.jsonl").read_text().splitlines()]
    assert [f["finding"] for f in truth[1]["findings"]] == ["hepatic_steatosis"]
    labels = cg.reports.labels((planted / b[1]["report"]).read_text())  # the report says what the truth says
    assert str(labels.get(("liver", "hepatic_steatosis"))) == "present"
    for i in (0, 2):  # the other patients are the ones the seed gives without cases
        assert {k: a[i][k] for k in ("age", "sex", "n_findings")} == {k: b[i][k] for k in ("age", "sex", "n_findings")}
    with pytest.raises(cg.ConfigError, match=r"cases\[1\].*nope"):
        cg.synth.generate_archive(tmp_path / "x", 3, preset="small", progress=False, cases={1: {"findings": ["nope"]}})
    with pytest.raises(cg.ConfigError, match="0..2"):
        cg.synth.generate_archive(tmp_path / "y", 3, preset="small", progress=False, cases={7: {"sex": "F"}})
    assert not (tmp_path / "x" / "manifest.csv").exists()


def test_cli_synth_json(tmp_path):
    from ctglip_sdk.cli.synth import synth_command

    out = tmp_path / "cli"
    res = CliRunner().invoke(synth_command, [str(out), "--patients", "1", "--seed", "3", "--format", "nifti",
                                             "--preset", "small", "--prevalence", "renal_cyst=1", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["n_patients"] == 1 and info["fmt"] == "nifti" and info["finding_counts"].get("renal_cyst", 0) >= 1
    assert (out / "manifest.csv").is_file() and (out / "truth.jsonl").is_file()
    res = CliRunner().invoke(synth_command, [str(out), "--patients", "1", "--preset", "small"])
    assert res.exit_code != 0  # existing archive without --overwrite
    res = CliRunner().invoke(synth_command, [str(tmp_path / "bad"), "--prevalence", "{not json"])
    # a user error (exit 1 through the `ctglip` group), as a bad --set or --where value is
    assert res.exit_code == 1 and "--prevalence" in str(res.exception)


def test_montage_command_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from ctglip_sdk.synth.montage import main

    out = tmp_path / "m.png"
    main([str(out), "--seed", "1", "--preset", "small", "--findings", "renal_stone,emphysema", "--dpi", "40"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_uids_differ_across_seeds_indices_and_presets():
    from ctglip_sdk.synth.writers import make_identity

    def uids(seed, index, preset="default"):
        ident = make_identity(seed, index, "F", 60, np.random.default_rng(0), preset=preset)
        return ident.study_uid, ident.series_uid, ident.frame_uid

    # pydicom joins entropy sources with no separator: patient 23 of seed 1 was patient 3 of seed 12.
    assert uids(1, 23) != uids(12, 3) and uids(1, 10) != uids(11, 0)
    assert uids(5, 0, "small") != uids(5, 0, "default")
    assert uids(5, 0) == uids(5, 0)


def test_a_custom_preset_is_used_not_its_builtin_namesake(tmp_path):
    from dataclasses import replace

    from ctglip_sdk.synth.presets import PRESETS

    custom = replace(PRESETS["small"], slice_mm=PRESETS["small"].slice_mm * 2)
    cg.synth.generate_archive(tmp_path / "a", n_patients=1, seed=2, preset=custom, fmt="nifti", progress=False)
    row = next(csv.DictReader(open(tmp_path / "a" / "manifest.csv")))
    zooms = nib.load(tmp_path / "a" / row["image"]).header.get_zooms()
    assert zooms[2] == pytest.approx(custom.slice_mm)  # was the built-in small preset's slices


@pytest.mark.parametrize("case,match", [({"sex": "female"}, "sex"), ({"age": -5}, "age"), ({"age": 5000}, "age"),
                                        ({"contrast": "yes"}, "contrast")])
def test_bad_cases_are_refused_before_an_existing_archive_is_touched(tmp_path, case, match):
    from ctglip_sdk.errors import ConfigError

    cg.synth.generate_archive(tmp_path / "a", n_patients=1, seed=2, preset="small", fmt="nifti", progress=False)
    before = (tmp_path / "a" / "manifest.csv").read_bytes()
    with pytest.raises(ConfigError, match=match):
        cg.synth.generate_archive(tmp_path / "a", n_patients=2, seed=3, preset="small", fmt="nifti", progress=False,
                                  overwrite=True, cases={1: case})
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == before  # was deleted, then half rewritten


def test_finding_counts_count_studies_not_truth_entries(tmp_path):
    summary = cg.synth.generate_archive(tmp_path / "a", n_patients=3, seed=4, preset="small", fmt="nifti",
                                        progress=False, cases={i: {"findings": ["emphysema"]} for i in range(3)})
    truth = [json.loads(line) for line in open(tmp_path / "a" / "truth.jsonl")]
    assert sum(f["finding"] == "emphysema" for t in truth for f in t["findings"]) > 3  # one entry per lobe
    assert summary.finding_counts["emphysema"] == 3


def test_generate_patient_refuses_a_contrast_that_is_not_a_bool():
    from ctglip_sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="contrast"):  # "yes" was truthy: a contrast study nobody asked for
        cg.synth.generate_patient(3, "small", contrast="yes")

