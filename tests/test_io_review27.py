"""Loader bugs a review reproduced (2026-12-27): each test writes real files with nibabel or pydicom."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ctglip_sdk.errors import ConfigError, GeometryError, InputError
from ctglip_sdk.io import load_segmentation, load_volume
from dicom_factory import write_series
from test_io_review_inputs import _caret_table

HU = np.arange(144, dtype=np.int16).reshape(3, 8, 6) - 100  # (slices, rows, columns), every value distinct


def _seg_with_extension(path: Path, content: bytes, labels: np.ndarray = None) -> Path:
    lab = np.zeros((4, 4, 4), np.uint8) if labels is None else labels
    img = nib.Nifti1Image(lab, np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(0, content))
    nib.save(img, path)
    return path


# --- 1. label table: linear scan, size cap ---------------------------------------------------------------------

@pytest.mark.parametrize("unit", [b'<Label Key="1"><![CDATA[x', b'<Label Key="1">x<y', b"<Label ",
                                  b'<Label Key="1"><![CDATA[x</Label>'])
def test_a_crafted_label_table_is_read_in_linear_time(tmp_path, unit):
    # The lazy CDATA regex rescanned to the end from every <Label: 160 kB took 7-8 s, the 1 MiB cap minutes.
    path = _seg_with_extension(tmp_path / "seg.nii.gz", b"<LabelTable>" + unit * (160_000 // len(unit)))
    start = time.perf_counter()
    seg = load_segmentation(path)
    assert time.perf_counter() - start < 1.0
    assert seg.meta["label_map"] in ("totalseg_v1", "file")


def test_real_label_tables_read_as_the_regular_expression_read_them(tmp_path):
    from ctglip_sdk.io.label_table import read_label_table
    from ctglip_sdk.organs import V1, V2

    old = re.compile(rb'<Label\b[^>]*?\bKey\s*=\s*"(\d+)"[^>]*>\s*(?:<!\[CDATA\[(.*?)\]\]>|([^<]*))\s*</Label>', re.S)
    variants = [_caret_table(V1), _caret_table(V2),
                _caret_table({0: "background", 1: " spaced ", 2: "h\u00e9patique"}),
                b'<LabelTable><Label Red="1" Key = "3">\n  plain name \n</Label><Label Key="4"><![CDATA[]]></Label>'
                b'<Label Key="x">no</Label><Label>no key</Label>\t<Label Alpha="1"\nKey="9"><![CDATA[a]b]]></Label>'
                b'</LabelTable>']
    for i, content in enumerate(variants):
        want = {int(k): (c if c else p).decode("utf-8", "replace").strip() for k, c, p in old.findall(content)}
        want = {k: v for k, v in want.items() if v and k != 0}
        img = nib.load(_seg_with_extension(tmp_path / f"t{i}.nii.gz", content))
        assert read_label_table(img) == want and want
    assert read_label_table(nib.load(_seg_with_extension(tmp_path / "v2.nii.gz", _caret_table(V2)))) == V2


def test_a_label_table_over_the_size_limit_is_refused_not_skipped(tmp_path):
    from ctglip_sdk.organs import V2

    # A v2 table padded past 1 MiB: skipped, the v2-order file was read as v1 with the wrong organs.
    content = _caret_table(V2).replace(b"<LabelTable>", b" " * (1 << 20) + b"<LabelTable>")
    lab = np.zeros((4, 4, 4), np.uint8)
    lab[1:3, 1:3, 1:3] = 7  # pancreas in v2, aorta in v1
    path = _seg_with_extension(tmp_path / "seg.nii.gz", content, lab)
    with pytest.raises(InputError, match=r"seg.nii.gz: the label table in the file's header is \d+ bytes, over the "
                                         r"1048576 byte limit"):
        load_segmentation(path)


# --- 2. custom label maps: ids 1 .. 2**31 - 1 -------------------------------------------------------------------

@pytest.fixture()
def liver_masks(tmp_path):
    m = np.zeros((6, 6, 4), np.uint8)
    m[1:3, 1:3, 1:3] = 1
    (tmp_path / "masks").mkdir()
    nib.save(nib.Nifti1Image(m, np.eye(4)), tmp_path / "masks" / "liver.nii.gz")
    nib.save(nib.Nifti1Image(m, np.eye(4)), tmp_path / "ml.nii.gz")
    return tmp_path / "masks", tmp_path / "ml.nii.gz"


@pytest.mark.parametrize("label_map, bad", [({0: "liver"}, "0"), ({2**32 + 7: "liver"}, "4294967303"),
                                            ({1: "spleen", 2**31: "liver"}, "2147483648"),
                                            ({-1: "liver", 1: "spleen"}, "-1"), ({"0": "air", 1: "liver"}, "0")])
def test_a_custom_label_map_with_background_or_out_of_range_ids_is_refused(liver_masks, label_map, bad):
    # {0: "liver"} reported every background voxel as liver; 2**32 + 7 was stored as id 7 after the int32 cast.
    for path in liver_masks:
        with pytest.raises(ConfigError, match=rf"label_map holds id\(s\) out of range: {re.escape(bad)}; ids must "
                                              r"be 1 to 2147483647 \(0 is background\)"):
            load_segmentation(path, label_map=label_map)


def test_a_custom_label_map_up_to_the_int32_limit_still_loads(liver_masks):
    folder, ml = liver_masks
    seg = load_segmentation(folder, label_map={2**31 - 1: "liver", 1: "spleen"})
    assert np.unique(seg.array).tolist() == [0, 2**31 - 1]
    assert load_segmentation(ml, label_map={"1": "liver"}).present() == {"liver": 8}


# --- 3. DICOM slices linked out of the series folder --------------------------------------------------------------

def test_slices_linked_out_of_the_series_folder_are_named_not_silently_dropped(tmp_path):
    spec = write_series(tmp_path / "elsewhere", np.zeros((5, 4, 4), np.int16), shuffle_names=False)
    (tmp_path / "archive" / "ct").mkdir(parents=True)
    for k, f in enumerate(spec.files):
        if k < 3:
            shutil.copy(f, tmp_path / "archive" / "ct" / f.name)
        else:  # a de-duplicating archive links identical files
            (tmp_path / "archive" / "ct" / f.name).symlink_to(f)
    with pytest.raises(InputError, match=r"ct: 2 file\(s\) are symlinks leading out of the folder, which are not "
                                         r"followed, so the series could be incomplete: slice_0003.dcm, "
                                         r"slice_0004.dcm; copy the files in instead") as err:
        load_volume(tmp_path / "archive" / "ct")  # was: loaded 3 of 5 slices with a logged warning
    assert "elsewhere" not in str(err.value)  # the links' targets are never shown
    for k in (3, 4):
        (tmp_path / "archive" / "ct" / spec.files[k].name).unlink()
        shutil.copy(spec.files[k], tmp_path / "archive" / "ct")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a slice")
    (tmp_path / "archive" / "ct" / "readme.txt").symlink_to(tmp_path / "notes" / "readme.txt")
    (tmp_path / "archive" / "ct" / "IM9999.dcm").symlink_to(tmp_path / "gone.dcm")
    (tmp_path / "priors").mkdir()
    (tmp_path / "archive" / "ct" / "priors").symlink_to(tmp_path / "priors")  # a folder, not a slice
    # A link the reader skips by name, a dangling one (nothing to read whatever the rule) and one to a folder
    # (refused the series in a first version of this rule) stay harmless.
    assert load_volume(tmp_path / "archive" / "ct").shape[2] == 5


# --- 4. negative PixelSpacing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", [(-0.5, -0.5), (-0.5, 0.7), (0.8, 0.0)])
def test_a_non_positive_pixel_spacing_is_named_as_such(tmp_path, spacing):
    # (-0.5, -0.5) was "mixed PixelSpacing: (-0.5, -0.5) mm (3 slices)", (-0.5, 0.7) a gantry tilt.
    write_series(tmp_path / "s", HU, pixel_spacing=spacing)
    with pytest.raises(GeometryError, match=r"s: non-positive PixelSpacing \("):
        load_volume(tmp_path / "s")


# --- 5. duplicate copies written with another number formatting -------------------------------------------------

def test_a_copy_of_the_series_with_other_position_formatting_is_read_once(tmp_path, caplog):
    spec = write_series(tmp_path / "s", HU, origin=(-125.0, -125.0, 0.0))
    plain = load_volume(tmp_path / "s").array.copy()
    (tmp_path / "s" / "copy").mkdir()
    for f in spec.files:  # the same instances exported again by a tool that writes the shortest form
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [f"{float(v):g}" for v in ds.ImagePositionPatient]
        ds.save_as(tmp_path / "s" / "copy" / f.name)
    copy = tmp_path / "s" / "copy" / spec.files[0].name
    first, again = (str(pydicom.dcmread(p).ImagePositionPatient) for p in (spec.files[0], copy))
    assert first != again  # "-125.000000" vs "-125"
    with caplog.at_level("INFO", logger="ctglip_sdk.io.dicom"):
        vol = load_volume(tmp_path / "s")  # was: "3 slice(s) share a position with another slice"
    assert "3 file(s) repeat an instance" in caplog.text
    np.testing.assert_array_equal(vol.array, plain)
