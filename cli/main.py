"""Entry point of the `ctglip` command: a lazily loaded click group that turns library errors into exit codes."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import Any, Dict, List, Optional

import click

from ctglip_sdk._version import __version__
from ctglip_sdk.cli.interrupts import TERMINATED_EXIT, exit_code, message
from ctglip_sdk.errors import CTGlipError

# name -> "module:attribute". Commands load on first use so that `ctglip --help` does not import torch.
COMMANDS: Dict[str, str] = {
    "demo": "ctglip_sdk.cli.demo:demo_command",
    "synth": "ctglip_sdk.cli.synth:synth_command",
    "parse-report": "ctglip_sdk.cli.reports:parse_report_command",
    "models": "ctglip_sdk.cli.models:models_command",
    "doctor": "ctglip_sdk.cli.doctor:doctor_command",
    "train": "ctglip_sdk.cli.train:train_command",
    "eval": "ctglip_sdk.cli.train:eval_command",
    "calibrate": "ctglip_sdk.cli.train:calibrate_command",
    "ingest": "ctglip_sdk.cli.index_cmds:ingest",
    "search": "ctglip_sdk.cli.index_cmds:search",
    "similar": "ctglip_sdk.cli.index_cmds:similar",
    "score": "ctglip_sdk.cli.index_cmds:score",
    "cohort": "ctglip_sdk.cli.index_cmds:cohort",
    "export": "ctglip_sdk.cli.index_cmds:export",
    "verify": "ctglip_sdk.cli.index_cmds:verify",
    "remove": "ctglip_sdk.cli.index_cmds:remove",
    "manifest": "ctglip_sdk.cli.manifest:manifest_command",
}


def _available() -> Dict[str, str]:
    """Commands whose module is present (a partial checkout still gets a working CLI)."""
    out = {}
    for name, target in COMMANDS.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            out[name] = target
    return out


def _echo_error(message: str, kind: str, path: Optional[str]) -> None:
    """``{"error", "type", "path"}`` on stdout: the failure of a ``--json`` command, for a pipeline to read (unless
    the command already printed its result there: stdout stays one JSON document)."""
    from ctglip_sdk.cli.output import PRINTED, echo_json  # noqa: PLC0415

    if not PRINTED["json"]:
        echo_json({"error": message, "type": kind, "path": None if path is None else str(path)})


class LazyGroup(click.Group):
    """A click group that imports each command on demand, maps CTGlipError (and any database error the library left
    unexplained) to exit code 1 and interrupts to 130 (Ctrl-C) or 143 (SIGTERM)."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(set(super().list_commands(ctx)) | set(_available()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            return cmd
        target = _available().get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context) -> Any:
        # The subcommand's own arguments, read before click consumes them: under --json a pipeline parses stdout,
        # so a user error is also printed there as one JSON document (the one-line message still goes to stderr).
        # click ≥ 8.2 keeps them in _protected_args (reading protected_args warns); older versions in protected_args.
        protected = ctx._protected_args if hasattr(ctx, "_protected_args") else getattr(ctx, "protected_args", [])
        args = [*protected, *ctx.args]
        # options end at "--": `ctglip search -- --json` searches the text "--json" and keeps plain errors
        as_json = "--json" in (args[:args.index("--")] if "--" in args else args)
        from ctglip_sdk.cli.output import PRINTED  # noqa: PLC0415

        PRINTED["json"] = False  # one invocation at a time (tests invoke the group many times in one process)
        try:
            return super().invoke(ctx)
        except CTGlipError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            if as_json:
                _echo_error(str(exc), type(exc).__name__, exc.path)
            # One clear line, no traceback: the message names the file/value and the reason.
            raise click.ClickException(str(exc)) from None
        except click.ClickException as exc:
            # Usage errors too (exit 2 all the same): a missing --archive folder is one, and a pipeline reading
            # stdout must get a JSON document whatever went wrong.
            if as_json:
                _echo_error(exc.format_message(), type(exc).__name__, None)
            raise
        except click.exceptions.Abort:
            # A confirmation prompt answered no, or with no terminal to answer it (stdin closed): exit 1, and under
            # --json a JSON document saying so rather than nothing.
            if as_json:
                _echo_error("aborted: a confirmation was not given (pass --yes in scripts)", "Abort", None)
            raise
        except KeyboardInterrupt as exc:
            # click would print "Aborted!" and exit 1, the code of a user error; a pipeline needs to tell the two
            # apart, so print one line and exit 128 + the signal number, as a shell does.
            click.echo(message(exc), err=True)
            if as_json:  # an interrupt is a failure too: stdout stays one JSON document, never empty
                _echo_error(message(exc), "Terminated" if exit_code(exc) == TERMINATED_EXIT else "Interrupted", None)
            raise click.exceptions.Exit(exit_code(exc)) from None
        except Exception as exc:
            # A database failure the library does not explain (index/engine.py explains the known ones): one line
            # with the driver's first line, never the statement or its values, and the JSON document under --json.
            if not type(exc).__module__.startswith("sqlalchemy.") or (ctx.obj and ctx.obj.get("debug")):
                raise
            orig = getattr(exc, "orig", None) or exc
            first = (str(orig).strip().splitlines() or [""])[0][:200]
            text = (f"database error ({type(orig).__name__}{': ' + first if first else ''}); `ctglip verify --index "
                    "DIR` checks the index, --debug shows the traceback")
            if as_json:
                _echo_error(text, "DatabaseError", None)
            raise click.ClickException(text) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ctglip")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress messages (INFO level).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """ctglip: CT-GLIP organ embeddings, archive search and zero-shot scoring.

    Exit status: 0 on success, 1 on a user error (one line on stderr; with --json also {"error", "type",
    "path"} on stdout), 2 on a usage error, 130/143 when interrupted.

    Shell completion: eval "$(_CTGLIP_COMPLETE=bash_source ctglip)" (zsh_source, fish_source likewise).
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="ctglip")


if __name__ == "__main__":  # pragma: no cover
    main()
