"""Archive layout helpers: redaction of stored error reasons."""

from __future__ import annotations

import os

import pytest

from ctglip_sdk.errors import InputError
from ctglip_sdk.index.layout import redact


@pytest.mark.parametrize("given", ["a", "a/", "ABS"])
def test_the_root_is_removed_only_where_it_starts_a_path(tmp_path, monkeypatch, given):
    """A root named "a" used to turn "cannot read" into "c.nnot re.d"; which of the two forms of the root was
    stripped first depended on set order (PYTHONHASHSEED), leaving a wrong absolute path half the time."""
    (tmp_path / "a" / "masks").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "a" if given == "ABS" else type(tmp_path)(given)
    full = os.path.join(str(tmp_path), "a", "masks", "case00005.nii.gz")
    assert redact(InputError("cannot read a label", path=full), root) == "masks/case00005.nii.gz: cannot read a label"
    escaped = redact(InputError(f"path escapes the root folder {tmp_path / 'a'}", path="../x"), root)
    assert escaped == "../x: path escapes the root folder ."


def test_the_patient_identifier_is_removed_before_an_item_exists(tmp_path):
    err = InputError("path escapes the root folder", path="../../etc/SYN7483048")
    assert "SYN7483048" not in redact(err, tmp_path, identifier="SYN7483048")
