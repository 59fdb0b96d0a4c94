"""`ctglip models`: list registered model configs and bundled weights."""

from __future__ import annotations

import json

import click

from ctglip_sdk.cli.output import print_table


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for pipelines.")
def models_command(as_json: bool) -> None:
    """List registered model configs and bundled weights."""
    import ctglip_sdk as cg

    rows = cg.list_models(with_info=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        # Short hashes keep the table readable; --json has the full values.
        print_table([{**r, "config_hash": str(r.get("config_hash", ""))[:12]} for r in rows],
                    columns=["name", "has_weights", "arch", "embed_dim", "config_hash"])
