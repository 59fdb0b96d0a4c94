"""Review 28 of training: divergence, the data a resume continues on, run-folder files, config bounds, resumed LR."""

from __future__ import annotations

import csv
import datetime
import json
import logging
import math
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import ctglip_sdk as cg
from ctglip_sdk.errors import CheckpointError, ConfigError
from ctglip_sdk.training import train
from ctglip_sdk.training.checkpoint import latest_checkpoint, list_checkpoints
from ctglip_sdk.training.config import TrainConfig
from ctglip_sdk.training.trainer import Trainer, warmup_cosine


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as strict parsers (JavaScript, jq) do."""
    def refuse(name):
        raise ValueError(f"bare {name} in JSON")
    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------ a toy trainer (fast)
class ToyData(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(12, 6, generator=g), torch.randn(12, 3, generator=g)

    def __len__(self) -> int:
        return 12

    def __getitem__(self, key):
        return self.x[key[1]], self.y[key[1]]


class ToyObjective(nn.Module):
    """Linear regression whose loss turns NaN from optimizer step ``nan_from`` on (1-based), or whose weights are
    set to NaN there behind the optimizer's back (``poison``: a non-finite update with a finite loss)."""

    def __init__(self, nan_from: int = 0, poison: bool = False) -> None:
        super().__init__()
        self.net = nn.Linear(6, 3)
        self.other = nn.Parameter(torch.ones(2))
        self.nan_from, self.poison = nan_from, poison

    def forward(self, batch, step):
        x, y = batch
        loss = ((self.net(x) - y) ** 2).mean()
        if self.nan_from and step + 1 >= self.nan_from:
            if self.poison:
                with torch.no_grad():
                    self.net.weight.fill_(float("nan"))
                loss = (self.other ** 2).sum()
            else:
                loss = loss * float("nan")
        return loss, {"mse": float(loss.detach())}


def _toy(out, objective=None, until=None, resume=False, **kw):
    opts = dict(max_steps=6, batch_size=4, lr=0.05, warmup_steps=0, checkpoint_every=1, keep_checkpoints=1,
                log_every=1, seed=3, device="cpu")
    opts.update(kw)
    trainer = Trainer(objective or ToyObjective(), ToyData(), TrainConfig(**opts), out, progress=False)
    return trainer, trainer.fit(resume=resume, until=until)


def _finite_checkpoint(path) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in load_file(str(path / "model.safetensors")).values())


# ------------------------------------------------------------------ 1. divergence
def test_a_nan_loss_stops_at_its_step_and_keeps_the_finite_checkpoints(tmp_path):
    """The run used to go on, save NaN checkpoints and prune the finite ones (keep_checkpoints=1 here)."""
    with pytest.raises(ConfigError, match=r"diverged at step 3: the loss is nan") as err:
        _toy(tmp_path, ToyObjective(nan_from=3))
    assert "lower lr" in str(err.value) and "step_00000002" in str(err.value)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000002"]
    assert _finite_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [_strict_json(ln)["step"] for ln in lines] == [1, 2]


def test_non_finite_weights_with_a_finite_loss_are_never_checkpointed(tmp_path):
    """grad_clip=0 measures no gradient norm: the checkpoint guard catches weights gone non-finite."""
    with pytest.raises(ConfigError, match=r"diverged at step 2: 1 weight tensor\(s\) hold NaN"):
        _toy(tmp_path, ToyObjective(nan_from=2, poison=True), grad_clip=0.0)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000001"]
    assert _finite_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))


# ------------------------------------------------------------------ 7. damaged run-folder files
def test_a_damaged_train_config_or_state_on_resume_is_a_checkpoint_error_naming_the_file(tmp_path):
    _toy(tmp_path, max_steps=2)
    good = (tmp_path / "train_config.json").read_text()
    (tmp_path / "train_config.json").write_text('{"model": "ctgl')  # a kill mid-write, before writes were atomic
    with pytest.raises(CheckpointError, match="train_config.json is damaged"):
        _toy(tmp_path, max_steps=3, resume=True)
    (tmp_path / "train_config.json").write_text(good)
    state = latest_checkpoint(tmp_path / "checkpoints") / "state.json"
    doc = json.loads(state.read_text())
    del doc["trainer"]["epoch"]
    state.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"state.json lacks trainer.epoch") as err:
        _toy(tmp_path, max_steps=3, resume=True)
    assert err.value.path == str(state)


def test_train_config_is_written_atomically(tmp_path, monkeypatch):
    """A failure while writing (here fsync, as on a full disk) leaves the previous file whole and no temp file."""
    path = tmp_path / "train_config.json"
    TrainConfig(max_steps=5).save(path)
    before = path.read_text()

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        TrainConfig(max_steps=9).save(path)
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["train_config.json"]


# ------------------------------------------------------------------ 10. resumed learning rate
def test_a_resume_with_another_max_steps_uses_the_new_schedule_from_its_first_step(tmp_path):
    _toy(tmp_path, max_steps=4, until=2, keep_checkpoints=5)
    _toy(tmp_path, max_steps=40, resume=True, keep_checkpoints=5)
    log = {r["step"]: r["lr"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    new = warmup_cosine(0, 40, TrainConfig().min_lr_ratio)
    assert log[3] == pytest.approx(0.05 * new(2), rel=1e-12)  # the old schedule (total 4) gave ~0.026
    assert log[4] == pytest.approx(0.05 * new(3), rel=1e-12)


# ------------------------------------------------------------------ 9. config values refused up front
@pytest.mark.parametrize("opts, words", [
    ({"seed": 2 ** 64}, "seed=18446744073709551616: must be <="),
    ({"threads": 10 ** 8}, "threads=100000000: must be <= 1024"),
    ({"num_workers": 10 ** 5}, "num_workers=100000: must be <="),
    ({"cache_workers": 10 ** 5}, "cache_workers=100000: must be <="),
    ({"model": ""}, "model='': must name"),
    ({"extra": {"a": [1, {"b": float("nan")}]}}, "extra.a[1].b=nan"),
    ({"extra": {"started": datetime.date(2026, 12, 1)}}, "extra.started=datetime.date(2026, 12, 1): a date cannot"),
])
def test_values_that_crashed_later_are_refused_naming_the_key(opts, words):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**opts)
    assert words in str(err.value)


def test_the_largest_seed_is_accepted_and_model_empty_via_set_is_refused():
    assert TrainConfig(seed=2 ** 63 - 1).seed == 2 ** 63 - 1
    with pytest.raises(ConfigError, match="model=''"):
        TrainConfig().with_overrides(["model="])


def test_config_files_yaml_dates_encodings_and_bom(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "d.yaml").write_text("max_steps: 1\nextra:\n  started: 2026-12-01\n")
    with pytest.raises(ConfigError, match="extra.started=.*quote it") as err:
        TrainConfig.from_file(tmp_path / "d.yaml")
    assert str(tmp_path / "d.yaml") in str(err.value)
    (tmp_path / "latin1.json").write_bytes('{"save_name": "café"}'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as err:
        TrainConfig.from_file(tmp_path / "latin1.json")
    assert str(tmp_path / "latin1.json") in str(err.value)
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + b'{"max_steps": 7}')
    assert TrainConfig.from_file(tmp_path / "bom.json").max_steps == 7
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbf" + b"max_steps: 8\n")
    assert TrainConfig.from_sources(tmp_path / "bom.yaml").max_steps == 8


# ------------------------------------------------------------------ real runs on a small synthetic archive
RUN = dict(batch_size=2, threads=1, calibrate=False, organs_per_study=20, checkpoint_every=1, keep_checkpoints=10,
           progress=False)


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch28") / "a"
    cg.synth.generate_archive(root, n_patients=6, seed=28, preset="small", fmt="nifti", progress=False,
                              overwrite=True)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache28"))


@pytest.fixture(scope="module")
def base_run(arch, cache, tmp_path_factory):
    """A 2-step run of the archive (checkpoints at steps 1 and 2) that tests copy before resuming."""
    out = tmp_path_factory.mktemp("run28") / "run"
    summary = train(arch, out, max_steps=2, cache_dir=cache, **RUN)
    assert summary["steps"] == 2
    return out, summary


def _copy_run(base_run, dest):
    shutil.copytree(base_run[0], dest)
    return dest


def _rows(root):
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _write_rows(root, rows):
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.mark.slow
def test_a_diverged_real_run_exits_1_without_a_model_and_keeps_finite_checkpoints(arch, cache, tmp_path):
    from click.testing import CliRunner

    from ctglip_sdk.cli.main import cli

    out = tmp_path / "rn"
    args = ["train", "--archive", str(arch), "--out", str(out), "--json", "--no-progress", "--set", "max_steps=4",
            "--set", "lr=1e4", "--set", "warmup_steps=0", "--set", "keep_checkpoints=1", "--set", "log_every=1",
            "--set", f"cache_dir={cache}"] + [f"--set={k}={v}" for k, v in RUN.items() if k != "progress"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    error = _strict_json(res.stdout)
    assert error["type"] == "DivergenceError" and "diverged at step" in error["error"] and "lower lr" in error["error"]
    assert not (out / "model").exists() and not (out / "summary.json").exists()
    ckpts = list_checkpoints(out / "checkpoints")
    assert ckpts and all(_finite_checkpoint(p) for p in ckpts)
    for line in (out / "metrics.jsonl").read_text().splitlines():
        assert math.isfinite(_strict_json(line)["loss"])


@pytest.mark.slow
def test_resume_refuses_another_archive_before_preprocessing_it(base_run, cache, tmp_path):
    other = tmp_path / "other"
    cg.synth.generate_archive(other, n_patients=6, seed=99, preset="small", fmt="nifti", progress=False)
    out = _copy_run(base_run, tmp_path / "run")
    with pytest.raises(CheckpointError) as err:
        train(other, out, max_steps=3, resume=True, cache_dir=str(tmp_path / "c2"), **RUN)
    msg = str(err.value)
    assert "train_data.json" in msg and "the training data differ" in msg and str(other) in msg
    assert "start a new --out" in msg
    assert not (tmp_path / "c2").exists()  # refused before the cache build


@pytest.mark.slow
def test_resume_refuses_a_training_study_that_became_unreadable(arch, cache, tmp_path):
    root = tmp_path / "a"
    shutil.copytree(arch, root)
    out = tmp_path / "run"
    train(root, out, max_steps=2, cache_dir=cache, **RUN)
    gone = next(r for r in _rows(root) if r["split"] == "train")
    (root / gone["mask"]).unlink()
    with pytest.raises(CheckpointError) as err:
        train(root, out, max_steps=3, resume=True, cache_dir=cache, **RUN)
    msg = str(err.value)
    assert f"1 of the run's 4 training rows is not in this resume's data (study {gone['study_uid']}" in msg
    assert os.path.basename(gone["mask"]) in msg and gone["patient_id"] not in msg


@pytest.mark.slow
def test_resume_keeps_out_the_unreadable_series_only_not_its_study(arch, cache, tmp_path):
    """Two rows (series) of one study, one unreadable: the resume dropped both, by study_uid."""
    root = tmp_path / "h"
    shutil.copytree(arch, root)
    rows = _rows(root)
    i, row = next((i, r) for i, r in enumerate(rows) if r["split"] == "train")
    second = dict(row, image=row["image"].replace(".nii.gz", "_bone.nii.gz"), series_uid=row["series_uid"] + ".9")
    shutil.copy(root / row["image"], root / second["image"])
    rows.insert(i + 1, second)
    _write_rows(root, rows)
    data = (root / row["image"]).read_bytes()
    (root / row["image"]).write_bytes(data[: len(data) // 2])
    out = tmp_path / "run"
    first = train(root, out, max_steps=3, cache_dir=cache, **RUN)
    assert first["n_train"] == 4 and [s["study_uid"] for s in first["skipped_studies"]] == [row["study_uid"]]
    shutil.rmtree(out / "checkpoints" / "step_00000003")
    resumed = train(root, out, max_steps=3, resume=True, cache_dir=cache, **RUN)
    assert resumed["resumed_from"] == 2 and resumed["n_train"] == 4
    assert resumed["skipped_studies"] == first["skipped_studies"]


def test_a_run_folder_from_before_the_records_still_resumes_with_a_warning(base_run, arch, cache, tmp_path, caplog):
    out = _copy_run(base_run, tmp_path / "run")
    for name in ("train_data.json", "model_init/init_options.json"):
        (out / name).unlink(missing_ok=True)
    (out / "skipped_studies.json").write_text(json.dumps({"skipped_studies": []}))
    with caplog.at_level(logging.WARNING):
        summary = train(arch, out, max_steps=3, resume=True, cache_dir=cache, **RUN)
    assert summary["resumed_from"] == 2 and summary["steps"] == 3
    assert "no record of the run's training data" in caplog.text
    assert "no record of the options that built it" in caplog.text
    assert json.loads((out / "train_data.json").read_text())["n_rows"] == 4  # later resumes are checked


def test_resume_without_checkpoint_rebuilds_a_model_init_built_with_another_seed(base_run, arch, cache, tmp_path):
    """A run killed before its first checkpoint, resumed with another seed, trained the stale model_init/."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(base_run[0] / "model_init", out / "model_init")
    stale = load_file(str(out / "model_init" / "model.safetensors"))
    train(arch, out, max_steps=1, seed=7, resume=True, cache_dir=cache, **RUN)
    fresh = load_file(str(out / "model_init" / "model.safetensors"))
    assert any(not torch.equal(stale[k], fresh[k]) for k in stale)
    assert json.loads((out / "model_init" / "init_options.json").read_text())["seed"] == 7
    # With a checkpoint the run continues model_init/: another seed is refused before anything is rebuilt.
    out2 = _copy_run(base_run, tmp_path / "run2")
    with pytest.raises(CheckpointError, match=r"model_init/ was built with seed=0 .* asks for seed=7") as err:
        train(arch, out2, max_steps=3, seed=7, resume=True, cache_dir=cache, **RUN)
    assert err.value.path.endswith("init_options.json")


def test_a_checkpoint_is_on_disk_before_it_is_renamed_and_older_ones_pruned(tmp_path, monkeypatch):
    """Every file and the folder are fsynced before the rename, and the parent after it, before pruning: a power cut
    must not leave a newest checkpoint of empty files with the finite older ones already deleted."""
    import os

    import torch

    from ctglip_sdk.training import checkpoint as ck

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    events = []
    real_fsync, real_replace, real_rmtree = os.fsync, os.replace, ck.shutil.rmtree

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    monkeypatch.setattr(ck.os, "fsync", fsync)
    monkeypatch.setattr(ck.os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    monkeypatch.setattr(ck.shutil, "rmtree", lambda p, **kw: events.append(("prune", str(p))) or real_rmtree(p, **kw))
    for step in (1, 2, 3):
        ck.save_checkpoint(tmp_path, step, model=model, optimizer=opt, scheduler=None, state={"step": step},
                           rank_rng={}, keep=2)
    final = str(tmp_path / "step_00000003")
    at = events.index(("replace", final))
    before = [p for kind, p in events[:at] if kind == "fsync"]
    tmp = str(tmp_path / ".tmp_step_00000003")
    for name in ("model.safetensors", "optimizer.safetensors", "state.json"):
        assert f"{tmp}/{name}" in before
    assert tmp in before and ("fsync", str(tmp_path)) in events[at:]
    assert events.index(("fsync", str(tmp_path)), at) < events.index(("prune", str(tmp_path / "step_00000001")))
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]


def test_a_cuda_device_past_the_machines_count_is_a_config_error(monkeypatch):
    import torch

    from ctglip_sdk.errors import ConfigError
    from ctglip_sdk.training.distributed import init_distributed

    # a one-GPU machine, simulated (these machines have none): cuda:3 is named, not a raw "invalid device ordinal"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: (_ for _ in ()).throw(RuntimeError("invalid ordinal")))
    with pytest.raises(ConfigError, match="device='cuda:3'.*1 CUDA device"):
        init_distributed("cuda:3")
