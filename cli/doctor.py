"""`ctglip doctor`: report the installed stack (versions, FAISS build, GPUs) to debug a set-up."""

from __future__ import annotations

import platform
from importlib import metadata

import click

from ctglip_sdk.cli.output import echo_json, print_table

_PACKAGES = ("ctglip-sdk", "torch", "transformers", "tokenizers", "safetensors", "monai", "pydicom", "nibabel",
             "sqlalchemy", "click", "numpy", "psycopg", "pylibjpeg")


def collect() -> dict:
    """Versions of the stack, the FAISS build and the accelerators visible to torch and FAISS."""
    from ctglip_sdk.faiss_backend import backend_info

    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "faiss": backend_info(),
        "torch_cuda": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
    }


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for pipelines.")
def doctor_command(as_json: bool) -> None:
    """Show versions, the FAISS build (cpu/gpu) and usable GPUs."""
    info = collect()
    if as_json:
        echo_json(info)
        return
    rows = [{"item": k, "value": v} for k, v in info["packages"].items()]
    rows += [{"item": f"faiss.{k}", "value": v} for k, v in info["faiss"].items()]
    rows += [{"item": k, "value": info[k]} for k in ("python", "torch_cuda", "torch_threads")]
    print_table(rows)
