"""`ctglip manifest`: write ARCHIVE/manifest.csv from the images, masks and reports found in a folder."""

from __future__ import annotations

import click

from ctglip_sdk.cli.output import echo_json, print_table


def _fractions(value: str) -> tuple:
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected three numbers such as 0.7,0.15,0.15, got {value!r}") from None
    if len(parts) != 3:
        raise click.BadParameter(f"expected three numbers (train,val,test), got {value!r}")
    return parts


@click.command("manifest")
@click.argument("archive", type=click.Path(file_okay=False))
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Keys the per-patient split hash.")
@click.option("--fractions", default="0.7,0.15,0.15", show_default=True,
              help="Train,val,test shares of patients.")
@click.option("--force", is_flag=True, help="Replace an existing manifest.csv.")
@click.option("--reports-by-accession", is_flag=True,
              help="Pair a DICOM series without a report by name with the one .txt file under ARCHIVE named by its "
                   "AccessionNumber (ACC.txt, ACC_report.txt). The number is never printed or stored, but the "
                   "report column then holds that file name.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def manifest_command(archive: str, seed: int, fractions: str, force: bool, reports_by_accession: bool,
                     as_json: bool) -> None:
    """Write ARCHIVE/manifest.csv so that `ctglip train` and `ctglip eval` can read a folder of your own.

    Finds DICOM series and NIfTI images as `ctglip ingest` does, pairs each with its mask and report by name
    (docs/data.md, "Bringing your own data"), reads patient, age, sex, date and contrast from one DICOM header
    per series, and assigns train/val/test per patient. Localizers (scouts) and reformats get no row. Images
    without a mask, or whose mask lies on another grid, get no row and are listed; images without a report or
    with an empty report keep a row (listed) but training skips them.
    """
    from ctglip_sdk.index.archive_manifest import write_archive_manifest

    summary = write_archive_manifest(archive, seed=seed, fractions=_fractions(fractions), overwrite=force,
                                     reports_by_accession=reports_by_accession)
    if as_json:
        echo_json(summary.to_dict())
        return
    click.echo(f"Wrote {summary.rows} rows ({summary.patients} patients; {summary.trainable} with a usable "
               f"report) to {summary.path}")
    click.echo(f"splits (rows): {summary.splits}")
    if reports_by_accession:
        click.echo(f"{summary.reports_by_accession} report(s) paired by accession number")
    if summary.localizers:
        click.echo(f"left out {len(summary.localizers)} localizer/scout series")
    if summary.derived:
        click.echo(f"left out {len(summary.derived)} reformatted series (MPR, MIP, coronal/sagittal) beside their "
                   "study's axial series")
    if summary.orphan_masks or summary.orphan_reports:
        click.echo(f"{len(summary.orphan_masks)} mask(s) and {len(summary.orphan_reports)} .txt file(s) belong to "
                   "no image found (use --json to list them)")
    problems = ([{"image": p, "missing": "mask"} for p in summary.missing_mask] +
                [{"image": p, "missing": "report"} for p in summary.missing_report] +
                [{"image": p, "missing": "report text (the file is empty)"} for p in summary.empty_report] +
                [{"image": p, "missing": f"mask on its grid: {r}"} for p, r in summary.mask_mismatch] +
                [{"image": p, "missing": f"header: {r}"} for p, r in summary.unreadable])
    if problems:
        print_table(problems[:50])
        if len(problems) > 50:
            click.echo(f"... and {len(problems) - 50} more (use --json for all)")
