"""A PNG montage of synthetic findings (axial + coronal with mask contours): ``python -m ctglip_sdk.synth.montage``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from ctglip_sdk.errors import ConfigError
from ctglip_sdk.organs import V1
from ctglip_sdk.synth.archive import SyntheticPatient, generate_patient
from ctglip_sdk.synth.findings import FINDINGS

__all__ = ["make_montage", "main"]

log = logging.getLogger(__name__)
_ID = {v: k for k, v in V1.items()}
_LUNG = (-1350.0, 150.0)   # lung window (W1500 / L-600)
_SOFT = (-160.0, 240.0)    # abdomen window (W400 / L40)


def _focus(p: SyntheticPatient, entry: Optional[dict]) -> np.ndarray:
    """Voxel index to centre the views on: the lesion centre, else the organ's centroid."""
    if entry is not None and entry.get("center_ras_mm"):
        ijk = np.linalg.solve(p.volume.affine, np.array(list(entry["center_ras_mm"]) + [1.0]))[:3]
        return np.clip(np.rint(ijk), 0, np.array(p.volume.shape) - 1).astype(int)
    organ = entry["organ"] if entry else "kidney_left"
    idx = np.argwhere(p.segmentation.array == _ID[organ])
    if not len(idx):
        return np.array(p.volume.shape) // 2
    c = idx.mean(0)
    if entry and entry["finding"] == "pleural_effusion":
        c[2] = np.percentile(idx[:, 2], 15)  # the dependent fluid sits at the base
    return np.rint(c).astype(int)


def _axial(a: np.ndarray, k: int) -> np.ndarray:
    return np.flipud(np.fliplr(a[:, :, k].T))  # radiological: patient right on the left, anterior up


def _coronal(a: np.ndarray, j: int) -> np.ndarray:
    return np.flipud(np.fliplr(a[:, j, :].T))


def _panel(ax, img, lab, organ_id, window, aspect, title, mark=None) -> None:
    ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="bilinear")
    if lab.max() > 0:
        ax.contour(lab > 0, levels=[0.5], colors="deepskyblue", linewidths=0.4, alpha=0.6)
    if organ_id is not None and (lab == organ_id).any():
        ax.contour(lab == organ_id, levels=[0.5], colors="gold", linewidths=0.9)
    if mark is not None:
        ax.plot(mark[1], mark[0], marker="o", ms=12, mfc="none", mec="red", mew=1.0)
    ax.set_title(title, fontsize=7)
    ax.set_axis_off()


def make_montage(out: Union[str, Path], seed: int = 0, preset: str = "default",
                 findings: Optional[Iterable[str]] = None, columns: int = 4, dpi: int = 80) -> Path:
    """Render one axial + one coronal panel pair per finding (each from its own synthetic patient) to a PNG.

    Example:
        >>> make_montage("docs/img/synth_montage.png", seed=0)  # doctest: +SKIP
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("the montage needs matplotlib: pip install 'ctglip-sdk[viz]'") from exc
    keys: Sequence[str] = list(findings) if findings else list(FINDINGS)
    unknown = sorted(set(keys) - set(FINDINGS))
    if unknown:
        raise ConfigError(f"unknown finding keys {unknown}; known: {sorted(FINDINGS)}")
    items = [None] + list(keys)  # first pair: a normal study
    rows = int(np.ceil(len(items) / columns))
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(2.2 * 2 * columns, 2.5 * rows))
    axes = np.atleast_2d(axes)
    for n, key in enumerate(items):
        p = generate_patient(seed, preset, findings=[key] if key else [], index=n)
        entry = next((e for e in p.findings if e["finding"] == key), None) if key else None
        i, j, k = _focus(p, entry)
        hu, lab = p.volume.array, p.segmentation.array
        sx, _, sz = p.volume.spacing
        organ_id = _ID[entry["organ"]] if entry else None
        window = _LUNG if key in ("lung_nodule", "emphysema") else _SOFT
        if key is None:
            title = "normal study"
        else:
            size = f" {entry['size_mm']:.0f} mm" if entry and entry.get("size_mm") else ""
            side = f" {entry['side']}" if entry and entry.get("side") else ""
            title = f"{key}{side}{size}" + ("" if entry else " (not placed)")
        ax_a = axes[n // columns, 2 * (n % columns)]
        ax_c = axes[n // columns, 2 * (n % columns) + 1]
        ni, nj, nk = hu.shape
        mark_a = (nj - 1 - j, ni - 1 - i) if entry and entry.get("center_ras_mm") else None
        mark_c = (nk - 1 - k, ni - 1 - i) if mark_a else None
        _panel(ax_a, _axial(hu, k), _axial(lab, k), organ_id, window, 1.0, f"{title} · axial", mark_a)
        _panel(ax_c, _coronal(hu, j), _coronal(lab, j), organ_id, window, sz / sx, "coronal", mark_c)
    for ax in axes.ravel()[2 * len(items):]:
        ax.set_axis_off()
    fig.suptitle(f"ctglip-sdk synthetic CT ({preset} preset, seed {seed}): one patient per finding; gold = the "
                 "finding's organ mask, blue = all TotalSegmentator labels, red circle = lesion", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    log.info("wrote montage %s", out)
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line: ``python -m ctglip_sdk.synth.montage OUT.png --seed 0 [--preset default]``."""
    ap = argparse.ArgumentParser(prog="python -m ctglip_sdk.synth.montage", description=__doc__)
    ap.add_argument("out", help="PNG file to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="default", choices=["small", "default", "clinical"])
    ap.add_argument("--findings", default=None, help="comma-separated finding keys (default: all)")
    ap.add_argument("--dpi", type=int, default=80)
    args = ap.parse_args(argv)
    keys = args.findings.split(",") if args.findings else None
    make_montage(args.out, seed=args.seed, preset=args.preset, findings=keys, dpi=args.dpi)


if __name__ == "__main__":  # pragma: no cover
    main()
