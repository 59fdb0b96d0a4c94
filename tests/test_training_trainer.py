"""Trainer: exact resume (bit-identical weights), schedule, checkpoint files free of pickle, metrics log."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ctglip_sdk.errors import CheckpointError
from ctglip_sdk.training.checkpoint import latest_checkpoint, list_checkpoints
from ctglip_sdk.training.config import TrainConfig
from ctglip_sdk.training.trainer import EpochBatchSampler, Trainer, warmup_cosine


class ToyData(torch.utils.data.Dataset):
    """12 fixed (x, y) pairs; each item adds noise drawn from (seed, epoch, index) like the real dataset."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(12, 6, generator=g)
        self.y = torch.randn(12, 3, generator=g)

    def __len__(self) -> int:
        return 12

    def __getitem__(self, key):
        epoch, i = key
        noise = np.random.default_rng([0, epoch, i]).normal(size=6).astype(np.float32) * 0.1
        return self.x[i] + torch.from_numpy(noise), self.y[i]


class ToyObjective(nn.Module):
    """Linear -> dropout -> linear regression; dropout makes the global torch RNG part of the state."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))

    def forward(self, batch, step):
        x, y = batch
        loss = ((self.net(x) - y) ** 2).mean()
        return loss, {"mse": float(loss.detach())}


def _run(out, until=None, resume=False, max_steps=8, **kw):
    torch.manual_seed(123)  # different init each call would be overwritten on resume anyway
    cfg = TrainConfig(max_steps=max_steps, batch_size=5, grad_accum=2, lr=0.05, warmup_steps=2, checkpoint_every=2,
                      log_every=1, seed=3, device="cpu", keep_checkpoints=3, **kw)
    trainer = Trainer(ToyObjective(), ToyData(), cfg, out, progress=False)
    result = trainer.fit(resume=resume, until=until)
    return trainer, result


def test_resume_is_bit_identical(tmp_path):
    straight, res = _run(tmp_path / "a")
    assert res.steps == 8 and res.resumed_from is None
    _run(tmp_path / "b", until=3)   # interrupted after step 3 (not a checkpoint multiple: saved on stop)
    torch.manual_seed(999)          # a different RNG state before resuming must not matter
    resumed, res_b = _run(tmp_path / "b", resume=True)
    assert res_b.resumed_from == 3 and res_b.steps == 8
    for (name, a), b in zip(straight.objective.state_dict().items(), resumed.objective.state_dict().values()):
        assert torch.equal(a, b), name
    # Optimizer moments and the schedule match too.
    sa, sb = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    for pid in sa["state"]:
        assert torch.equal(sa["state"][pid]["exp_avg_sq"], sb["state"][pid]["exp_avg_sq"])
    assert straight.scheduler.get_last_lr() == resumed.scheduler.get_last_lr()
    # The metrics log of the resumed run has each step once, identical losses to the straight run.
    la = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == list(range(1, 9))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_checkpoint_files_are_safetensors_and_json(tmp_path):
    _run(tmp_path, max_steps=6)
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000002", "step_00000004", "step_00000006"]
    last = latest_checkpoint(tmp_path / "checkpoints")
    assert sorted(p.name for p in last.iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                       "rng_rank0.safetensors", "state.json"]
    state = json.loads((last / "state.json").read_text())
    assert state["trainer"]["step"] == 6 and state["scheduler"]["last_epoch"] == 6
    opt = load_file(str(last / "optimizer.safetensors"))
    assert any(k.endswith("exp_avg") for k in opt)
    for f in last.iterdir():  # no pickle anywhere: pickle streams start with 0x80
        assert f.read_bytes()[:1] != b"\x80"


def test_resume_rejects_changed_run_and_corrupt_state(tmp_path):
    _run(tmp_path, max_steps=2)
    with pytest.raises(CheckpointError, match="batch_size"):
        cfg = TrainConfig(max_steps=4, batch_size=3, device="cpu", seed=3, grad_accum=2)
        Trainer(ToyObjective(), ToyData(), cfg, tmp_path, progress=False).fit(resume=True)
    last = latest_checkpoint(tmp_path / "checkpoints")
    (last / "state.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="state.json"):
        _run(tmp_path, max_steps=4, resume=True)


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    _, res = _run(tmp_path, max_steps=2, resume=True)
    assert res.resumed_from is None and res.steps == 2


def test_sampler_covers_each_epoch_and_shards():
    s = EpochBatchSampler(10, 3, seed=1)
    flat = [i for b in s.batches(0) for _, i in b]
    assert sorted(flat) == list(range(10)) and len(s) == 4
    assert flat != [i for b in s.batches(1) for _, i in b]          # reshuffled per epoch
    assert s.batches(0, start=2) == s.batches(0)[2:]
    r0, r1 = EpochBatchSampler(10, 3, 1, 0, 2), EpochBatchSampler(10, 3, 1, 1, 2)
    both = set(r0.order(0)) | set(r1.order(0))
    assert both == set(range(10)) and len(r0.order(0)) == len(r1.order(0)) == 5


def test_warmup_cosine_shape():
    f = warmup_cosine(4, 20, 0.1)
    values = [f(s) for s in range(21)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0] and abs(values[20] - 0.1) < 1e-9
    assert all(a >= b for a, b in zip(values[4:], values[5:]))


# --- A review of config and resume (2026-12-07) ------------------------------------------------------------------

def test_resume_refuses_changed_optimizer_or_loss_settings_and_allows_speed_ones(tmp_path, caplog):
    _run(tmp_path, until=3)
    with pytest.raises(CheckpointError, match=r"option\(s\) adam_eps, weight_decay differ"):
        _run(tmp_path, resume=True, adam_eps=1e-3, weight_decay=0.5)  # was ignored silently, yet recorded as used
    with pytest.raises(CheckpointError, match=r"option\(s\) w_identity differ"):
        _run(tmp_path, resume=True, w_identity=0.0)
    _, res = _run(tmp_path, resume=True, threads=1, cache_workers=1)  # speed and storage options may change
    assert res.resumed_from == 3 and res.steps == 8
    with caplog.at_level("WARNING"):
        _, res = _run(tmp_path, resume=True, max_steps=10, threads=1)
    assert res.steps == 10 and "schedule is recomputed" in caplog.text


def test_the_logged_lr_is_the_one_the_step_used(tmp_path):
    trainer, _ = _run(tmp_path, max_steps=4)
    logged = [json.loads(x)["lr"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    fn = warmup_cosine(2, 4, trainer.cfg.min_lr_ratio)
    assert logged == pytest.approx([0.05 * fn(s) for s in range(4)])  # was the next step's rate


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path):
    _run(tmp_path, until=4)
    log_path = tmp_path / "metrics.jsonl"
    log_path.write_text(log_path.read_text() + '{"step": 5, "epoch": 0, "lr": 0.0')  # killed mid-write
    _, res = _run(tmp_path, resume=True)
    assert res.steps == 8  # was a raw JSONDecodeError
    assert [json.loads(x)["step"] for x in log_path.read_text().splitlines()] == list(range(1, 9))


@pytest.mark.parametrize("key", ["grad_clip", "w_identity", "lr", "weight_decay"])
def test_non_finite_options_are_refused(key):
    from ctglip_sdk.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{key}=nan: must be a finite number"):
        TrainConfig.from_dict({key: float("nan")})


def test_yaml_exponents_and_near_miss_keys(tmp_path):
    from ctglip_sdk.errors import ConfigError

    (tmp_path / "c.yaml").write_text("lr: 1e-3\nmax_steps: 5\n")
    cfg = TrainConfig.from_sources(tmp_path / "c.yaml")
    assert cfg.lr == 0.001 and cfg.max_steps == 5  # was "lr='1e-3': expected a number"
    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        TrainConfig.from_sources(overrides=["max_step=5"])


def test_time_s_counts_the_whole_run_across_resume(tmp_path):
    _run(tmp_path, until=4)
    last = latest_checkpoint(tmp_path / "checkpoints")
    doc = json.loads((last / "state.json").read_text())
    assert doc["trainer"]["elapsed_s"] >= 0.0
    # Stand in for a first process that ran its 4 steps for 1000 s: the resumed steps continue from there.
    doc["trainer"]["elapsed_s"] = 1000.0
    (last / "state.json").write_text(json.dumps(doc))
    _run(tmp_path, resume=True)
    times = [json.loads(x)["time_s"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(times) == 8 and all(t < 1000.0 for t in times[:4]) and all(t >= 1000.0 for t in times[4:])
    assert times == sorted(times)  # was: restarted at 0 after the resume
