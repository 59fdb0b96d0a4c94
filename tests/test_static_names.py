"""Every name the package's modules use is defined: pyflakes over the source, undefined names only.

Why: a branch no test reaches can still hold a NameError (eval's "matplotlib is not installed" warning called a
logger that a module split had left behind, and crashed on every install without the viz extra).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("ctglip_sdk", "index", "training", "cli", "benchmarks")


def test_no_undefined_names_in_the_package():
    api = pytest.importorskip("pyflakes.api")
    from pyflakes import messages
    from pyflakes.reporter import Reporter

    class Collect(Reporter):
        def __init__(self) -> None:
            self.found: list = []

        def unexpectedError(self, filename, msg):  # noqa: N802 - pyflakes' interface
            self.found.append(f"{filename}: {msg}")

        def syntaxError(self, filename, msg, lineno, offset, text):  # noqa: N802
            self.found.append(f"{filename}:{lineno}: {msg}")

        def flake(self, message):
            if isinstance(message, (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)):
                self.found.append(str(message))

    rep = Collect()
    files = sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))
    assert len(files) > 100
    for path in files:
        api.checkPath(str(path), rep)
    assert rep.found == []
