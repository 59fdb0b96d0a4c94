"""Process-group set-up for torchrun and a differentiable, variable-size all_gather used by the losses."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, List, Tuple

import torch
import torch.distributed as dist

from ctglip_sdk.errors import ConfigError

__all__ = ["DistContext", "init_distributed", "gather", "gather_with_grad", "is_distributed", "world_size",
           "rank", "barrier", "all_reduce_mean"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size, local rank and the device it should use."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that writes checkpoints, logs and metrics)."""
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group when WORLD_SIZE > 1; otherwise describe a single process.

    NCCL on CUDA, gloo on CPU. The caller tears down with `torch.distributed.destroy_process_group()` only
    when `initialized_here` is true (a test or a caller may have set the group up already).

    Example:
        >>> ctx = init_distributed("cpu")
        >>> ctx.world_size
        1
    """
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r}: this torch build or machine has no CUDA device "
                          f"(torch {torch.__version__}); use device=cpu or auto")
    if use_cuda:
        dev = torch.device(device if device.startswith("cuda:") else f"cuda:{local_rank}")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:  # set_device raised a raw "invalid device ordinal"
            raise ConfigError(f"device={device!r} (rank {local_rank}: {dev}): this machine has {count} CUDA "
                              f"device(s), cuda:0 to cuda:{count - 1}; use device=cuda or auto")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    here = False
    if env_world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        here = True
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), dev)
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, here)
    return DistContext(0, 1, 0, dev, False)


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a python float over ranks (for logging)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _sizes(t: torch.Tensor) -> List[int]:
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    out = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(out, n)
    return [int(x.item()) for x in out]


def _padded_gather(t: torch.Tensor, sizes: List[int]) -> torch.Tensor:
    # all_gather needs equal shapes; ranks may hold different organ counts, so pad to the largest and cut.
    longest = max(sizes)
    pad = torch.zeros((longest - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded = torch.cat([t, pad], 0).contiguous()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], 0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums each rank's gradient for this rank's rows.

    Every rank computes the loss over the whole gathered batch, so d(loss)/d(local rows) receives a
    contribution from every rank; summing them here and letting DDP average parameter gradients gives
    exactly the gradient of the single-process loss on the concatenated batch.
    """

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        sizes = _sizes(t)
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        return _padded_gather(t, sizes)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return (grad[start:start + ctx.sizes[ctx.rank]],)


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` (first dim may differ per rank) across ranks, keeping the autograd graph.

    Example:
        >>> gather_with_grad(torch.ones(2, 3)).shape  # one process: unchanged
        torch.Size([2, 3])
    """
    if not is_distributed():
        return t
    return _GatherWithGrad.apply(t)


def gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor without gradient (ids, labels, targets) across ranks.

    Example:
        >>> gather(torch.arange(3)).tolist()
        [0, 1, 2]
    """
    if not is_distributed():
        return t
    with torch.no_grad():
        return _padded_gather(t.detach(), _sizes(t))
