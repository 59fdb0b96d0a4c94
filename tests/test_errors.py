"""One exception hierarchy, exported at the top level, with messages that name the file."""

from __future__ import annotations

import pytest

import ctglip_sdk as cg


@pytest.mark.parametrize("cls", [cg.InputError, cg.GeometryError, cg.ConfigError, cg.CheckpointError,
                                 cg.IndexStateError, cg.QueryError])
def test_every_error_derives_from_base(cls):
    assert issubclass(cls, cg.CTGlipError)
    assert cls is not IndexError


def test_geometry_error_is_an_input_error_and_names_the_file(tmp_path):
    err = cg.GeometryError("slice gap of 202.5 mm (expected 2.5 mm)", path=tmp_path / "series")
    assert isinstance(err, cg.InputError)
    assert str(err).startswith(str(tmp_path / "series")) and "202.5" in str(err)
    assert err.reason.startswith("slice gap")


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, ctglip_sdk; print(any(m in sys.modules for m in ('torch','faiss','pydicom','transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
