"""The distribution installs one namespace: ctglip_sdk with index/, training/, cli/ mapped inside it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"ctglip_sdk": "ctglip_sdk", "ctglip_sdk.index": "index", "ctglip_sdk.training": "training",
          "ctglip_sdk.cli": "cli"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _source_packages() -> set:
    """Every folder with an __init__.py under the four source roots, as its installed dotted name."""
    found = set()
    for dotted, folder in MAPPED.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([dotted, *rel.parts]) if rel.parts else dotted)
    return found


def test_every_source_package_is_listed():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    assert _source_packages() <= listed, f"add to pyproject packages: {_source_packages() - listed}"
    assert _pyproject()["tool"]["setuptools"]["package-dir"] == MAPPED


def test_torch_is_not_pinned_in_package_requirements():
    deps = _pyproject()["project"]["dependencies"]
    torch = [d for d in deps if d.startswith("torch")]
    assert torch and "==" not in torch[0]


def test_editable_install_maps_top_level_folders():
    import ctglip_sdk.cli.main as cli_main
    import ctglip_sdk.index as index
    import ctglip_sdk.training as training

    assert Path(index.__file__).resolve().parent == ROOT / "index"
    assert Path(training.__file__).resolve().parent == ROOT / "training"
    assert Path(cli_main.__file__).resolve().parent == ROOT / "cli"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True)
    (whl,) = out.glob("ctglip_sdk-*.whl")
    return whl


def test_wheel_has_one_namespace_and_data(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"ctglip_sdk", next(t for t in tops if t.endswith(".dist-info"))}
    for required in ("ctglip_sdk/index/__init__.py", "ctglip_sdk/training/__init__.py", "ctglip_sdk/cli/main.py",
                     "ctglip_sdk/data/totalsegmentator_classes.json", "ctglip_sdk/py.typed"):
        assert required in names
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "ctglip = ctglip_sdk.cli.main:main" in entry


def test_wheel_imports_from_a_plain_install(wheel: Path, tmp_path: Path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import ctglip_sdk, ctglip_sdk.index, ctglip_sdk.cli.main, ctglip_sdk.organs as o;"
            "print(ctglip_sdk.__file__); print(len(o.ORGANS))")
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    file_line, n = res.stdout.split()
    assert file_line.startswith(str(target)) and n == "104"
    assert not (target / "index").exists() and not (target / "cli").exists()
