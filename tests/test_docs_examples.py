"""The Python examples of README.md and docs/ run (on the small synthetic preset, in a temporary folder)."""

from __future__ import annotations

import doctest
import os
import re
from pathlib import Path

import pytest

import ctglip_sdk as cg

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks(doc: str) -> list:
    return [b for b in BLOCK.findall((ROOT / doc).read_text(encoding="utf-8")) if not b.lstrip().startswith(">>>")]


def _shrink(code: str) -> str:
    """Same calls on a smaller archive: fewer patients and the fast preset, so the test takes seconds."""
    code = re.sub(r"n_patients=\d+", "n_patients=3", code)
    code = code.replace('preset="default"', 'preset="small"')
    return re.sub(r"(generate_archive\([^)]*?)\)", lambda m: m.group(1) + (
        "" if "preset=" in m.group(1) else ', preset="small"') + ", progress=False)", code)


@pytest.fixture
def model_name(tmp_path_factory) -> str:
    """The bundled model when it is installed; otherwise a freshly initialised tiny model saved to a folder."""
    names = cg.list_models()
    if "ctglip-tiny-synthetic" in names and cg.model.model_info("ctglip-tiny-synthetic").get("has_weights"):
        return "ctglip-tiny-synthetic"
    folder = tmp_path_factory.mktemp("model") / "tiny"
    cg.create("ctglip-tiny", seed=0).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("doc", ["README.md", "docs/quickstart.md"])
def test_python_examples_run(doc, tmp_path, model_name, monkeypatch):
    blocks = _blocks(doc)
    assert blocks, f"{doc} has no python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        code = _shrink(code).replace('cg.load("ctglip-tiny-synthetic")', f"cg.load({model_name!r})")
        exec(compile(code, doc, "exec"), {"__name__": "__docs__"})  # noqa: S102 - our own docs
    assert (tmp_path / "idx" / "manifest.json").exists()


@pytest.mark.parametrize("doc", ["docs/quickstart.md"])
def test_doctest_snippets(doc):
    res = doctest.testfile(str(ROOT / doc), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0 and res.attempted > 0
