"""Readout stage: refits only the vision projection, learns the reports' findings, and runs inside `ctglip train`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import ctglip_sdk as cg
from ctglip_sdk.cli.main import cli
from ctglip_sdk.errors import ConfigError
from ctglip_sdk.model.zeroshot import ZeroShotClassifier
from ctglip_sdk.training import TrainConfig
from ctglip_sdk.training.metrics import auc
from ctglip_sdk.training.readout import ReadoutInputs, fit_readout
from test_model_encode import TINY

#: The small test model with a hidden layer in its projections, as the bundled model has.
MLP = {**TINY, "projection": {"embed_dim": 16, "hidden": 32}}


def _inputs(model, n: int = 240, seed: int = 0) -> ReadoutInputs:
    """Liver and spleen rows; half the livers carry a cyst that shifts two input columns."""
    rng = np.random.default_rng(seed)
    width = next(m for m in model.vision_proj.modules() if isinstance(m, torch.nn.Linear)).in_features
    x = rng.normal(size=(n, width)).astype(np.float32)
    organs = ["liver" if i % 2 == 0 else "spleen" for i in range(n)]
    cyst = np.array([o == "liver" and rng.random() < 0.5 for o in organs])
    x[cyst, :2] += 2.5
    present = [("liver_cyst",) if c else () for c in cyst]
    return ReadoutInputs(torch.from_numpy(x), organs, present, [()] * n)


def _cyst_auc(model, data: ReadoutInputs) -> float:
    zs = ZeroShotClassifier(model)
    livers = [i for i, o in enumerate(data.organs) if o == "liver"]
    with torch.no_grad():
        vecs = model.project_vision(data.inputs[livers]).numpy()
    rows, _, logits = zs.detect_logits(["liver"] * len(livers), vecs, findings=["liver_cyst"])
    labels = ["liver_cyst" in data.present[livers[r]] for r in rows]
    return auc(logits, labels)


def test_fit_readout_changes_only_the_projection_and_learns_the_finding():
    model = cg.create(MLP, seed=0)
    data = _inputs(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    auc_before = _cyst_auc(model, data)
    out = fit_readout(model, data, None, epochs=60, lr=3e-3, batch_size=64, seed=0)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("vision_proj.") for k in changed)
    assert out["last_loss"] < out["first_loss"]
    assert _cyst_auc(model, data) > max(0.9, auc_before + 0.1)


def test_fit_readout_is_seeded():
    states = []
    for _ in range(2):
        model = cg.create(MLP, seed=0)
        fit_readout(model, _inputs(model), None, epochs=3, lr=1e-3, batch_size=64, seed=5)
        states.append(model.vision_proj.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("bad, match", [({"readout_epochs": -1}, "readout_epochs"),
                                        ({"readout_epochs": 5, "objective": "clip"}, "needs objective"),
                                        ({"readout_lr": 0}, "readout_lr")])
def test_readout_options_are_validated(bad, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**bad)


def test_train_runs_the_readout_stage_after_the_last_step(tmp_path):
    archive = tmp_path / "arch"
    cg.synth.generate_archive(archive, n_patients=4, seed=23, preset="small", fmt="nifti", progress=False)
    cfg = tmp_path / "model.json"
    cfg.write_text(json.dumps({"name": "tiny-mlp", **MLP}))
    common = ["--archive", str(archive), "--model", str(cfg), "--json", "--no-progress", "--set", "max_steps=1",
              "--set", "batch_size=2", "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "organs_per_study=12",
              "--set", "warmup_steps=1", "--set", "calibrate=false", "--set", "train_split=all"]
    runs = {}
    for name, extra in (("plain", []), ("readout", ["--set", "readout_epochs=3"])):
        res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / name), *common, *extra])
        assert res.exit_code == 0, res.output
        runs[name] = json.loads(res.output)
    info = runs["readout"]["readout"]
    assert info["epochs"] == 3 and info["organs"] > 4 * 10 and np.isfinite(info["last_loss"])
    assert "readout" not in runs["plain"]
    plain, tuned = cg.load(tmp_path / "plain" / "model"), cg.load(tmp_path / "readout" / "model")
    a, b = plain.state_dict(), tuned.state_dict()
    differ = {k for k in a if not torch.equal(a[k], b[k])}
    assert differ and all(k.startswith("vision_proj.") for k in differ)
