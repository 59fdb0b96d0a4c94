"""discover(): headers-only listing of DICOM series and NIfTI files, root confinement, and resolve_within."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ctglip_sdk import InputError
from ctglip_sdk.io import SeriesInfo, discover, load_volume, resolve_within
from ctglip_sdk.io.paths import is_within, require_path, walk_files
from dicom_factory import unique_hu, write_series


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "archive"
    a = write_series(root / "p001" / "study1" / "ct", unique_hu((4, 5, 6)), SeriesDescription="abdomen")
    b = write_series(root / "p001" / "study1" / "ct", unique_hu((2, 5, 6)), prefix="loc", SeriesDescription="scout")
    c = write_series(root / "p002" / "deep" / "er" / "series", unique_hu((3, 4, 4)), shuffle_names=False)
    (root / "p003").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((7, 8, 9), np.float32), np.diag([-1.0, 1.0, 1.0, 1.0])),
             root / "p003" / "ct.nii.gz")
    (root / "p002" / "report.txt").write_text("No acute findings.")
    (root / "p002" / "junk.bin").write_bytes(os.urandom(300))
    return root, a, b, c


def test_discover_lists_series_and_nifti(tree):
    root, a, b, c = tree
    found = discover(root)
    by_uid = {s.series_uid: s for s in found if s.kind == "dicom"}
    assert set(by_uid) == {a.series_uid, b.series_uid, c.series_uid}
    assert by_uid[a.series_uid] == SeriesInfo("dicom", "p001/study1/ct", a.series_uid, a.study_uid, 4, (6, 5, 4),
                                              "CT", "abdomen")
    assert by_uid[b.series_uid].n_files == 2 and by_uid[b.series_uid].description == "scout"
    assert by_uid[c.series_uid].path == "p002/deep/er/series"
    nifti = [s for s in found if s.kind == "nifti"]
    assert nifti == [SeriesInfo("nifti", "p003/ct.nii.gz", None, None, 1, (7, 8, 9), None, None)]
    assert found.refused == [] and found.unreadable == []
    # Each entry loads as described.
    for info in found:
        vol = load_volume(resolve_within(root, info.path), series_uid=info.series_uid)
        assert vol.shape == info.shape


def test_discover_reads_each_header_once_and_no_pixels(tree, monkeypatch):
    root, a, b, c = tree
    calls = []
    original = pydicom.dcmread

    def counting(path, *args, **kwargs):
        calls.append((str(path), kwargs.get("stop_before_pixels")))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    discover(root)
    paths = [path for path, _stop in calls]
    assert len(set(paths)) == len(paths)  # one header read per file
    assert all(stop for _path, stop in calls)  # never the pixels
    dicom = {str(p) for p in a.files + b.files + c.files}
    assert dicom <= set(paths) and set(paths) - dicom == {str(root / "p002" / "junk.bin")}  # .txt/.nii skipped


def test_symlink_escaping_root_is_refused(tree, tmp_path, caplog):
    root, *_ = tree
    outside = tmp_path / "outside"
    secret = write_series(outside, unique_hu((2, 3, 3)))
    os.symlink(outside, root / "p001" / "link_dir")
    os.symlink(secret.files[0], root / "p002" / "link_file")
    caplog.set_level(logging.WARNING)
    for follow in (False, True):
        found = discover(root, follow_symlinks=follow)
        assert secret.series_uid not in {s.series_uid for s in found}
        assert found.refused == ["p001/link_dir", "p002/link_file"]
    assert any("refused symlink p001/link_dir" in r.getMessage() for r in caplog.records)
    with pytest.raises(InputError, match="escapes the root"):
        resolve_within(root, "p001/link_dir/" + secret.files[0].name)


def test_symlink_inside_root_followed_only_on_request(tree):
    root, a, *_ = tree
    os.symlink(root / "p001" / "study1", root / "p004_alias")
    plain = discover(root)
    followed = discover(root, follow_symlinks=True)
    assert [s.n_files for s in plain] == [s.n_files for s in followed]  # no double counting via the alias
    assert plain.refused == followed.refused == []


def test_unreadable_files_are_reported_not_raised(tree):
    root, a, *_ = tree
    broken = root / "p001" / "study1" / "ct" / "broken"
    broken.write_bytes(a.files[0].read_bytes()[:400])
    (root / "p003" / "bad.nii.gz").write_bytes(b"garbage")
    found = discover(root)
    assert {path for path, _ in found.unreadable} == {"p001/study1/ct/broken", "p003/bad.nii.gz"}
    assert a.series_uid in {s.series_uid for s in found}


def test_resolve_within(tmp_path):
    (tmp_path / "a").mkdir()
    assert resolve_within(tmp_path, "a/../a/x.nii.gz") == (tmp_path / "a" / "x.nii.gz").resolve()
    for bad in ("../x", "a/../../x", "/etc/passwd", str(tmp_path / "a")):
        with pytest.raises(InputError):
            resolve_within(tmp_path, bad)
    with pytest.raises(InputError):
        resolve_within(tmp_path, "")
    with pytest.raises(InputError, match="not a folder"):
        discover(tmp_path / "missing")


def test_a_corrupt_gzip_is_listed_from_its_header_and_refused_on_load(tree):
    root, *_ = tree
    raw = bytearray((root / "p003" / "ct.nii.gz").read_bytes())
    raw[-8] ^= 0xFF  # the trailer's CRC-32: the header still reads, the voxels do not check out
    (root / "p003" / "crc.nii.gz").write_bytes(bytes(raw))
    (root / "p003" / "cut.nii.gz").write_bytes(bytes(raw[:20]))  # not even a header
    found = discover(root)
    assert "p003/crc.nii.gz" in {s.path for s in found}  # listing reads headers only (docs/inputs.md)
    assert dict(found.unreadable)["p003/cut.nii.gz"] == \
        "truncated or corrupt gzip stream (it ends before the end-of-stream marker)"
    with pytest.raises(InputError, match=r"crc\.nii\.gz: corrupt gzip stream \(CRC check failed\)"):
        load_volume(root / "p003" / "crc.nii.gz")


def test_none_and_other_non_paths_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="root: expected an archive folder path, got NoneType"):
        discover(None)
    with pytest.raises(InputError, match="root: expected a folder path, got int"):
        walk_files(3)
    with pytest.raises(InputError, match="root: expected a root folder path, got NoneType"):
        resolve_within(None, "a/x.nii.gz")
    with pytest.raises(InputError, match="relative_path: expected a path relative to the root folder, got NoneType"):
        resolve_within(tmp_path, None)
    with pytest.raises(InputError, match="is_within: expected two resolved Paths, got NoneType and PosixPath"):
        is_within(None, tmp_path)
    with pytest.raises(InputError, match="x: expected a file path, got bytes"):
        require_path(b"ct.nii.gz", "x", "a file path")
    assert require_path(Path("a") / "b", "x") == os.path.join("a", "b")
