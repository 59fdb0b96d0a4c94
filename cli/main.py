"""Entry point of the `ctglip` command: the click group and error translation."""

from __future__ import annotations

import click

from ctglip_sdk._version import __version__


@click.group()
@click.version_option(__version__, prog_name="ctglip")
def cli() -> None:
    """ctglip: CT-GLIP organ embeddings, archive search and zero-shot scoring."""


def main() -> None:
    cli()
