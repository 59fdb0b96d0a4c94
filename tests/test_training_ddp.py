"""The distributed path on CPU: 2 gloo processes give the single-process loss, gradients and trained weights."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from ctglip_sdk.training.config import TrainConfig
from ctglip_sdk.training.distributed import gather, gather_with_grad
from ctglip_sdk.training.losses import abnormality_text_loss, info_nce, organ_identity_loss
from ctglip_sdk.training.trainer import Trainer

N, DIM, BANK, NAMES = 12, 8, 5, 3


def _data():
    g = torch.Generator().manual_seed(7)
    return {"organ": torch.randn(N, DIM, generator=g), "text": torch.randn(N, DIM, generator=g),
            "ids": torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 6, 7]),
            "targets": torch.randint(-1, 2, (N, BANK), generator=g),
            "name": torch.randint(0, NAMES, (N,), generator=g)}


class Items(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.d = _data()

    def __len__(self) -> int:
        return N

    def __getitem__(self, key):
        _, i = key
        return {k: v[i] for k, v in self.d.items()}


class ContrastiveToy(nn.Module):
    """Organ/text encoders + a learnable text bank and name prompts: the three CT-GLIP losses, gathered."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.organ_enc = nn.Linear(DIM, 4)
        self.text_enc = nn.Linear(DIM, 4)
        self.bank = nn.Parameter(torch.randn(BANK, 4))
        self.names = nn.Parameter(torch.randn(NAMES, 4))

    def forward(self, batch, step=0):
        o = gather_with_grad(self.organ_enc(batch["organ"]))
        t = gather_with_grad(self.text_enc(batch["text"]))
        ids, targets, name = gather(batch["ids"]), gather(batch["targets"]), gather(batch["name"])
        loss = (info_nce(o, t, 5.0, ids, "mask") + abnormality_text_loss(o, self.bank, targets, 5.0)
                + organ_identity_loss(o, self.names, name, 5.0))
        return loss, {}


def _collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ctglip_sdk.training.distributed import init_distributed

    ctx = init_distributed("cpu")
    try:
        # 1) One step on uneven shards (rank 0: rows 0-4, rank 1: rows 5-11) through DDP.
        d = _data()
        rows = slice(0, 5) if rank == 0 else slice(5, N)
        model = ContrastiveToy()
        ddp = DDP(model)
        loss, _ = ddp({k: v[rows] for k, v in d.items()})
        loss.backward()
        grads = {f"grad.{n}": p.grad.contiguous() for n, p in model.named_parameters()}
        grads["loss"] = loss.detach().reshape(1)
        # 2) Three optimizer steps with the Trainer, 2 studies per rank per micro-batch.
        cfg = TrainConfig(max_steps=3, batch_size=2, lr=0.05, warmup_steps=0, seed=1, device="cpu",
                          checkpoint_every=100, grad_clip=0.0)
        trainer = Trainer(ContrastiveToy(), Items(), cfg, os.path.join(out, "run"), collate_fn=_collate,
                          ctx=ctx, progress=False)
        trainer.fit()
        weights = {f"trained.{k}": v.contiguous() for k, v in trainer.objective.state_dict().items()}
        save_file({**grads, **weights}, os.path.join(out, f"rank{rank}.safetensors"))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_gloo_processes_match_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))

    # Reference: one process, the concatenated batch.
    model = ContrastiveToy()
    loss, _ = model(_data())
    loss.backward()
    assert torch.allclose(r0["loss"], loss.detach().reshape(1), atol=1e-6)
    assert torch.allclose(r1["loss"], loss.detach().reshape(1), atol=1e-6)
    for n, p in model.named_parameters():
        assert torch.allclose(r0[f"grad.{n}"], p.grad, atol=1e-6), n
        assert torch.allclose(r1[f"grad.{n}"], p.grad, atol=1e-6), n

    cfg = TrainConfig(max_steps=3, batch_size=4, lr=0.05, warmup_steps=0, seed=1, device="cpu",
                      checkpoint_every=100, grad_clip=0.0)
    single = Trainer(ContrastiveToy(), Items(), cfg, tmp_path / "single", collate_fn=_collate, progress=False)
    single.fit()
    for k, v in single.objective.state_dict().items():
        assert torch.allclose(r0[f"trained.{k}"], v, atol=1e-5), k
        assert torch.equal(r0[f"trained.{k}"], r1[f"trained.{k}"]), k  # ranks stay in lock-step
    # Only rank 0 wrote the checkpoint and the log.
    assert (tmp_path / "run" / "checkpoints" / "step_00000003" / "rng_rank1.safetensors").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) >= 2
