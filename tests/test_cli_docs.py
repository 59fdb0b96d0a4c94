"""Every CLI command and option is documented in docs/cli.md and has help text; cli.md is current."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from ctglip_sdk.cli import docgen
from ctglip_sdk.cli.main import COMMANDS, cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
REQUIRED = {"demo", "synth", "train", "eval", "ingest", "search", "similar", "score", "cohort", "export", "verify",
            "models", "parse-report"}


def _commands():
    ctx = click.Context(cli, info_name="ctglip")
    return [(n, cli.get_command(ctx, n)) for n in cli.list_commands(ctx)]


def test_required_commands_are_registered():
    assert REQUIRED <= set(COMMANDS)
    assert REQUIRED <= {n for n, _ in _commands()}


@pytest.mark.parametrize("name,cmd", _commands())
def test_command_documented_with_help(name, cmd):
    text = DOC.read_text(encoding="utf-8")
    assert f"## `ctglip {name}`" in text
    assert cmd.help and cmd.help.strip(), name
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden:
            assert p.help and p.help.strip(), f"{name} {p.opts} has no help"
            assert all(f"`{o}`" in text for o in p.opts), f"{name} {p.opts} missing from cli.md"
        if getattr(p, "name", None) == "as_json":
            assert "--json" in p.opts


def test_cli_md_is_generated_from_current_definitions():
    assert DOC.read_text(encoding="utf-8") == docgen.render(), (
        "docs/cli.md is stale: run `python -m ctglip_sdk.cli.docgen > docs/cli.md`")


def test_cli_md_shows_zero_defaults_required_options_and_quoted_filters():
    text = DOC.read_text(encoding="utf-8")
    # 0 == False: defaults of 0 were dropped although --help shows them.
    assert "| `--seed` | Archive seed. (≥ 0) (default: `0`) |" in text  # the range --help shows, then 0
    assert text.count("(same results; 2 on 2 cores). (≥ 0) (default: `0`)") == 2  # eval and calibrate --workers
    assert "| `--index` | Index folder. [required] |" in text
    assert "(e.g. ctglip-tiny-synthetic). [required] |" in text and "| `-h`, `--help` |" in text
    # Pasted into a shell, an unquoted age>=60 writes a file named "=60".
    assert '--where "age>=60"' in text and "--where age>=60" not in text
    # Exit codes, and the later paragraphs of a command's help, are in the reference.
    assert "3 when series failed in this run" in text and "130 interrupted by Ctrl-C" in text
    assert "| `--parse` |" in text
