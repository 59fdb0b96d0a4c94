"""The `ctglip` group: version, lazy commands, exit codes (1 user error, 2 usage)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import click
from click.testing import CliRunner

import ctglip_sdk as cg
from ctglip_sdk.cli.main import cli


def test_version_and_help():
    runner = CliRunner()
    res = runner.invoke(cli, ["--version"])
    assert res.exit_code == 0 and cg.__version__ in res.output
    res = runner.invoke(cli, ["--help"])
    assert res.exit_code == 0 and "models" in res.output


def test_library_error_becomes_exit_1_without_traceback():
    @cli.command("_boom", hidden=True)
    def _boom() -> None:
        raise cg.InputError("not a DICOM file", path="/archive/x.dcm")

    try:
        res = CliRunner().invoke(cli, ["_boom"])
        assert res.exit_code == 1
        assert "/archive/x.dcm: not a DICOM file" in res.output and "Traceback" not in res.output
        res = CliRunner().invoke(cli, ["--debug", "_boom"])
        assert isinstance(res.exception, cg.InputError)
    finally:
        cli.commands.pop("_boom", None)


def test_interrupts_exit_128_plus_the_signal_with_one_line():
    from ctglip_sdk.cli.interrupts import Terminated, sigterm_as_interrupt

    @cli.command("_ctrl_c", hidden=True)
    @click.option("--json", "as_json", is_flag=True)
    def _ctrl_c(as_json: bool) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Python's own SIGINT handler raises KeyboardInterrupt

    @cli.command("_term", hidden=True)
    @click.option("--json", "as_json", is_flag=True)
    def _term(as_json: bool) -> None:
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    try:
        res = CliRunner().invoke(cli, ["_ctrl_c"])
        assert res.exit_code == 130 and res.stderr == "Interrupted\n" and "Aborted" not in res.output
        res = CliRunner().invoke(cli, ["_term"])
        assert res.exit_code == 143 and res.stderr == "Terminated (SIGTERM)\n"
        assert signal.getsignal(signal.SIGTERM) is before  # only within the block
        # under --json, stdout holds one JSON document saying so (it was empty)
        res = CliRunner().invoke(cli, ["_ctrl_c", "--json"])
        assert res.exit_code == 130 and json.loads(res.stdout) == {"error": "Interrupted", "type": "Interrupted",
                                                                     "path": None}
        res = CliRunner().invoke(cli, ["_term", "--json"])
        assert res.exit_code == 143 and json.loads(res.stdout)["type"] == "Terminated"
        assert issubclass(Terminated, KeyboardInterrupt)  # so cleanup written for Ctrl-C runs for SIGTERM
    finally:
        cli.commands.pop("_ctrl_c", None)
        cli.commands.pop("_term", None)


def test_usage_error_is_exit_2():
    res = CliRunner().invoke(cli, ["no-such-command"])
    assert res.exit_code == 2


def test_console_script_runs():
    res = subprocess.run([sys.executable, "-m", "ctglip_sdk.cli.main", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and cg.__version__ in res.stdout


def test_json_after_double_dash_is_text_not_the_option(tmp_path):
    # `ctglip search -- --json` searches the text "--json": its errors stay plain (stdout was a JSON document)
    res = CliRunner().invoke(cli, ["search", "--index", str(tmp_path / "none"), "--", "--json"])
    assert res.exit_code == 1 and res.stdout == "" and "not an archive index" in res.stderr
    res = CliRunner().invoke(cli, ["search", "--index", str(tmp_path / "none"), "--json", "--", "liver"])
    assert res.exit_code == 1 and json.loads(res.stdout)["type"] == "IndexStateError"
