"""`ctglip synth`: write a synthetic CT archive (images, masks, reports, manifest, truth)."""

from __future__ import annotations

import json

import click

from ctglip_sdk.cli.output import echo_json, print_table
from ctglip_sdk.errors import ConfigError


def _prevalence(value: str | None) -> dict | None:
    """``--prevalence`` as JSON ('{"renal_stone": 0.5}') or key=value pairs ('renal_stone=0.5,emphysema=0.3')."""
    if not value:
        return None
    try:
        if value.strip().startswith("{"):
            out = json.loads(value)
        else:
            out = {k.strip(): float(v) for k, v in (item.split("=", 1) for item in value.split(",") if item.strip())}
        if not isinstance(out, dict):
            raise ConfigError(f"--prevalence: expected a mapping of finding key to probability, got {value!r}")
        # The conversion inside the try: '{"renal_stone": "abc"}' or null used to end in a traceback.
        return {str(k): float(v) for k, v in out.items()}
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise ConfigError(f"--prevalence: expected JSON or key=value pairs of numbers, got {value!r} "
                          f"({exc})") from None


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--patients", "-n", type=click.IntRange(min=1), default=40, show_default=True,
              help="Number of patients (one study each).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Archive seed.")
@click.option("--format", "fmt", type=click.Choice(["dicom", "nifti"]), default="dicom", show_default=True,
              help="Image format: DICOM series folders or NIfTI files.")
@click.option("--preset", type=click.Choice(["small", "default", "clinical"]), default="default", show_default=True,
              help="Acquisition preset (see docs/data.md).")
@click.option("--prevalence", default=None, help='Finding probabilities: JSON or "key=p,key=p".')
@click.option("--per-class-masks", is_flag=True, help="Also write TotalSegmentator's per-class mask layout.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes.")
@click.option("--overwrite", is_flag=True, help="Replace an existing archive in OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (no progress bar).")
def synth_command(out: str, patients: int, seed: int, fmt: str, preset: str, prevalence: str | None,
                  per_class_masks: bool, workers: int, overwrite: bool, as_json: bool) -> None:
    """Generate a synthetic chest-abdomen-pelvis CT archive in OUT.

    Writes images/ (DICOM or NIfTI), masks/ (TotalSegmentator v1 labels), reports/, manifest.csv and
    truth.jsonl. The same seed gives the same bytes.
    """
    from ctglip_sdk.synth import generate_archive

    summary = generate_archive(out, patients, seed=seed, fmt=fmt, preset=preset, prevalence=_prevalence(prevalence),
                               per_class_masks=per_class_masks, progress=not as_json, workers=workers,
                               overwrite=overwrite)
    if as_json:
        echo_json(summary.to_dict())
        return
    click.echo(f"Wrote {summary.n_patients} studies ({summary.fmt}, preset {summary.preset}) to {summary.root} "
               f"in {summary.seconds:.1f} s")
    click.echo(f"splits: {summary.splits}")
    print_table([{"finding": k, "studies": v} for k, v in summary.finding_counts.items()])
