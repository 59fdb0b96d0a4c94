"""Stats standardisation: set from the training organs before the first step, saved with the model, optional on load."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import ctglip_sdk as cg
from ctglip_sdk.cli.main import cli
from ctglip_sdk.errors import CheckpointError
from ctglip_sdk.training.cache import PreprocessCache
from ctglip_sdk.training.data import read_manifest
from test_model_encode import TINY

#: The small test model with its stats on (histogram + descriptors), as the clamp needs.
STATS = {**TINY, "preprocess": {**TINY["preprocess"], "hu_histogram": [-100.0, 0.0, 100.0], "organ_descriptors": True}}


def _reseal(folder):
    """Record the edited weights' checksum, as a folder written by an older version would carry its own."""
    meta = json.loads((folder / "config.json").read_text())
    meta["weights_sha256"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "config.json").write_text(json.dumps(meta))


def test_training_standardises_the_stats_columns_and_saves_it(tmp_path):
    archive = tmp_path / "arch"
    cg.synth.generate_archive(archive, n_patients=5, seed=21, preset="small", fmt="nifti", progress=False)
    out, cache_dir = tmp_path / "run", tmp_path / "cache"
    res = CliRunner().invoke(cli, ["train", "--archive", str(archive), "--model", "ctglip-tiny", "--out", str(out),
                                   "--json", "--no-progress", "--set", "max_steps=1", "--set", "batch_size=2",
                                   "--set", f"cache_dir={cache_dir}", "--set", "organs_per_study=16",
                                   "--set", "warmup_steps=1", "--set", "calibrate=false"])
    assert res.exit_code == 0, res.output
    model, init = cg.load(out / "model"), cg.load(out / "model_init")
    # The run's starting point already holds the scaling (a resumed run starts from model_init), and the
    # buffers are not trained.
    assert torch.equal(model.stats_shift, init.stats_shift) and torch.equal(model.stats_scale, init.stats_scale)
    cache = PreprocessCache.for_model(model, cache_dir)
    cols = torch.cat([model.stats_columns(cache.load(r.image, r.mask).stats) for r in read_manifest(archive, "train")])
    z = (cols - model.stats_shift) / model.stats_scale
    assert torch.allclose(z.mean(0), torch.zeros(z.shape[1]), atol=1e-4)
    varying = cols.std(0) > 0.05  # columns below the floor keep scale 0.05, so their spread stays under 1
    assert torch.allclose(z.std(0)[varying], torch.ones(int(varying.sum())), atol=1e-4)
    assert (z.std(0)[~varying] < 1).all() and varying.sum() > z.shape[1] // 2


def test_a_model_saved_before_standardisation_loads_with_the_identity(tmp_path):
    model = cg.create("ctglip-tiny", seed=0)
    model.set_stats_norm(torch.randn(50, model.config.preprocess.n_stats) * 3 + 1)
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    save_file({k: v for k, v in state.items() if k not in ("stats_shift", "stats_scale")}, str(weights))
    _reseal(folder)
    old = cg.load(folder)
    assert torch.all(old.stats_shift == 0) and torch.all(old.stats_scale == 1)
    state = load_file(str(weights))
    state["extra"] = torch.zeros(1)  # anything else missing or extra is still refused
    save_file(state, str(weights))
    _reseal(folder)
    with pytest.raises(CheckpointError, match="unexpected keys"):
        cg.load(folder)


def test_standardised_stats_are_clamped_to_stats_clip_and_the_bound_is_validated():
    """A column that barely varied in training cannot outweigh every other input on an unusual scan."""
    model = cg.create("ctglip-tiny", overrides=STATS)
    assert model.config.stats_clip == 5.0                       # on in the registered config
    width = model.config.preprocess.n_stats
    pooled = torch.zeros(2, model.config.vision.out_channels)  # TINY pools by the mean
    with torch.no_grad():
        model.stats_scale.fill_(0.05)                          # the floor a near-constant column gets
    base = torch.zeros(2, width)
    far = base.clone()
    far[0, -1] = 10.0                                          # 200 "sigma" away from the training mean
    out = model._with_stats(pooled, far)[:, -width:]
    assert out[0, -1].item() == pytest.approx(5.0) and out[1, -1].item() == pytest.approx(0.0)
    # The vector moves with the clamped value only: 10 and 1 (both beyond 5 sigma) give the same embedding.
    near = base.clone()
    near[0, -1] = 1.0
    v_far = model.project_vision(model._with_stats(pooled, far))
    v_near = model.project_vision(model._with_stats(pooled, near))
    assert torch.allclose(v_far, v_near)
    unclamped = cg.create("ctglip-tiny", overrides={**STATS, "stats_clip": None})
    with torch.no_grad():
        unclamped.stats_scale.fill_(0.05)
    assert unclamped._with_stats(pooled, far)[0, -1].item() == pytest.approx(200.0)
    for bad in (0, -1.0, "5"):
        with pytest.raises(cg.ConfigError, match="stats_clip"):
            cg.create("ctglip-tiny", overrides={**TINY, "stats_clip": bad})
