"""A small, exact-resume training loop: AdamW, warmup + cosine, accumulation, bf16 on CUDA, DDP, JSONL metrics."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ctglip_sdk.errors import CheckpointError, ConfigError
from ctglip_sdk.training.checkpoint import latest_checkpoint, load_checkpoint, rng_to_flat, save_checkpoint
from ctglip_sdk.training.config import TrainConfig, write_text_atomic
from ctglip_sdk.training.distributed import DistContext, all_reduce_mean, init_distributed

__all__ = ["Trainer", "TrainResult", "EpochBatchSampler", "warmup_cosine", "seed_everything", "default_param_groups",
           "DivergenceError"]

log = logging.getLogger(__name__)


#: TrainConfig options a resumed run may change: speed, logging, storage, and the stages after the steps.
#: (max_steps may change too, with a warning: the schedule is recomputed for the new length.)
_RESUMABLE_CHANGES = frozenset({
    "max_steps", "threads", "num_workers", "cache_workers", "log_every", "checkpoint_every", "keep_checkpoints",
    "cache_dir", "device", "channels_last", "save_name", "calibrate", "calibration_archive", "val_split",
    "readout_epochs", "readout_lr", "extra"})


class DivergenceError(ConfigError):
    """The loss or the gradient norm became NaN or infinite: the run diverged.

    A ConfigError because the cure is in the options (a lower ``lr``, a longer warmup, clipping), not the data.
    The step that met it is not applied (with grad_clip=0, weights gone non-finite are caught before their
    checkpoint is written instead), so no checkpoint, model or summary holds non-finite weights.
    """


def _finite_or_none(value: float, digits: int = 6) -> Optional[float]:
    """A value for metrics.jsonl: rounded, or None (JSON null) for NaN and infinity, which strict parsers refuse."""
    return round(value, digits) if math.isfinite(value) else None


def _step_of(line: str) -> Optional[int]:
    """The step of one metrics.jsonl line, or None for a blank or torn one (a run killed mid-write)."""
    try:
        return int(json.loads(line).get("step", 0)) if line.strip() else None
    except (ValueError, AttributeError, TypeError):
        return None


def _read_saved_config(path: Path) -> Dict[str, Any]:
    """The run's train_config.json; a damaged one (a kill mid-write before writes were atomic) is a
    CheckpointError naming it, not a raw JSONDecodeError."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"cannot resume: train_config.json is damaged ({type(exc).__name__}: {str(exc)[:120]}); "
                              "if the checkpoints are this run's, write the run's options back into it (e.g. from "
                              "summary.json's config), or start a new --out folder", path=path) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read train_config.json: {exc.strerror or exc}", path=path) from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"cannot resume: train_config.json holds a {type(doc).__name__}, not the run's options",
                              path=path)
    return doc


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup over `warmup` steps, then cosine from 1 down to `min_ratio` at `total`.

    Example:
        >>> f = warmup_cosine(10, 100, 0.0)
        >>> round(f(4), 2), f(10), round(f(100), 6)
        (0.5, 1.0, 0.0)
    """
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return fn


class EpochBatchSampler:
    """Micro-batches of (epoch, index) pairs from a seeded permutation per epoch, sharded by rank.

    The data position is (epoch, batch index within the epoch), so a run resumes exactly where it stopped.
    Items carry their epoch so a dataset can derive per-item randomness from (seed, epoch, index) in any
    worker process.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n < 1:
            raise ConfigError("the training split is empty: nothing to train on")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world_size
        self.per_rank = math.ceil(n / world_size)

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def order(self, epoch: int) -> List[int]:
        """This rank's indices for `epoch` (the permutation is padded by wrapping so ranks get equal counts)."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n).tolist()
        perm += perm[: self.per_rank * self.world - self.n]
        return perm[self.rank::self.world]

    def batches(self, epoch: int, start: int = 0) -> List[List[Tuple[int, int]]]:
        """Micro-batches of `epoch` from batch `start` on."""
        idx = self.order(epoch)
        out = [[(epoch, i) for i in idx[b * self.batch_size:(b + 1) * self.batch_size]] for b in range(len(self))]
        return out[start:]


def default_param_groups(module: nn.Module, cfg: TrainConfig,
                         text_prefixes: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms and scalars; `text_lr` for parameters under text prefixes."""
    groups: Dict[Tuple[bool, bool], List[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2
        is_text = any(name.startswith(pfx) or f".{pfx}" in name for pfx in text_prefixes)
        groups.setdefault((decay, is_text), []).append(p)
    out = []
    for (decay, is_text), params in sorted(groups.items()):
        lr = cfg.text_lr if (is_text and cfg.text_lr is not None) else cfg.lr
        out.append({"params": params, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": lr})
    return out


@dataclass
class TrainResult:
    """What `Trainer.fit` did."""

    steps: int
    seconds: float
    last_loss: Optional[float]
    out_dir: Path
    metrics_path: Path
    checkpoint: Optional[Path]
    resumed_from: Optional[int]


class Trainer:
    """Trains an objective module whose forward(batch, step) returns (loss, {name: float}).

    The objective owns the model and the losses; the trainer owns optimisation, data order, checkpoints and
    process groups. Rank 0 writes checkpoints and `metrics.jsonl`.

    Example:
        >>> trainer = Trainer(objective, dataset, TrainConfig(max_steps=10), "runs/x")  # doctest: +SKIP
        >>> trainer.fit(resume=True)  # doctest: +SKIP
    """

    def __init__(self, objective: nn.Module, dataset: Dataset, config: TrainConfig, out_dir: Any, *,
                 collate_fn: Optional[Callable] = None, param_groups: Optional[List[Dict[str, Any]]] = None,
                 ctx: Optional[DistContext] = None, progress: bool = True) -> None:
        self.cfg = config
        self.out_dir = Path(out_dir)
        self.ctx = ctx or init_distributed(config.device)
        self.device = self.ctx.device
        self.objective = objective.to(self.device)
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.progress = progress
        self.ddp: Optional[nn.Module] = None
        if self.ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # find_unused_parameters: the CLIP objective leaves organ-only paths idle and vice versa.
            self.ddp = DDP(self.objective, device_ids=ids, find_unused_parameters=True)
        groups = param_groups if param_groups is not None else default_param_groups(self.objective, config)
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                                           eps=config.adam_eps, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(config.warmup_steps, config.max_steps, config.min_lr_ratio))
        self.sampler = EpochBatchSampler(len(dataset), config.batch_size, config.seed, self.ctx.rank,
                                         self.ctx.world_size)
        # DataLoader draws its worker base seed from this generator, not from the global RNG, so creating a
        # loader mid-epoch on resume does not shift the model's random stream.
        self.loader_gen = torch.Generator().manual_seed(config.seed)
        self.state: Dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0}
        # Seconds of steps before this process (a resumed run's earlier processes), so that metrics.jsonl's
        # time_s counts the whole run instead of restarting at 0 on --resume.
        self._elapsed_before = 0.0
        self._t0: Optional[float] = None

    # ------------------------------------------------------------------ helpers
    @property
    def ckpt_dir(self) -> Path:
        """Where checkpoints go: OUT/checkpoints."""
        return self.out_dir / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        """OUT/metrics.jsonl: one JSON object per logged step."""
        return self.out_dir / "metrics.jsonl"

    def _loader(self, epoch: int, start: int) -> Iterator[Any]:
        batches = self.sampler.batches(epoch, start)
        if not batches:
            return iter(())
        dl = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.cfg.num_workers,
                        collate_fn=self.collate_fn, generator=self.loader_gen,
                        persistent_workers=False, pin_memory=self.device.type == "cuda")
        return iter(dl)

    def _autocast(self) -> Any:
        if self.cfg.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _diverged(self, step: int, what: str) -> DivergenceError:
        """The error of a run that diverged at ``step``, naming the newest checkpoint (every one is finite)."""
        last = latest_checkpoint(self.ckpt_dir)
        kept = (f"the checkpoints (newest: {last.name}) hold finite weights" if last is not None
                else "no checkpoint was written")
        clip = " or set grad_clip > 0 (off in this run)" if self.cfg.grad_clip == 0 else ""
        return DivergenceError(f"training diverged at step {step}: {what}; no model was saved and {kept}. Start a "
                               f"new --out with a lower lr (this run: {self.cfg.lr:g}) or a longer warmup_steps "
                               f"(this run: {self.cfg.warmup_steps}){clip}", path=self.out_dir)

    def _save(self) -> Optional[Path]:
        # With grad_clip=0 no gradient norm is measured: a non-finite update shows here first. Every rank holds
        # the same weights, so every rank raises (none is left waiting at the gather below).
        bad = [n for n, p in self.objective.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
        if bad:
            raise self._diverged(self.state["step"], f"{len(bad)} weight tensor(s) hold NaN or infinite values "
                                 f"(e.g. {bad[0]}); this checkpoint was not written")
        rng = rng_to_flat({"loader": self.loader_gen})
        if self.ctx.world_size > 1:
            # Each rank's RNG streams differ (dropout, augmentation); gather them so rank 0 writes all.
            import torch.distributed as dist

            everything: List[Any] = [None] * self.ctx.world_size
            packed = ({k: v.tolist() for k, v in rng[0].items()}, rng[1])
            dist.all_gather_object(everything, packed)
            rank_rng = {r: ({k: torch.tensor(v, dtype=torch.uint8 if k != "numpy.keys" else torch.int64)
                             for k, v in t.items()}, m) for r, (t, m) in enumerate(everything)}
        else:
            rank_rng = {0: rng}
        path = None
        self.state["elapsed_s"] = round(self._elapsed(), 3)
        if self.ctx.is_main:
            path = save_checkpoint(self.ckpt_dir, self.state["step"], model=self.objective,
                                   optimizer=self.optimizer, scheduler=self.scheduler, state=dict(self.state),
                                   rank_rng=rank_rng, keep=self.cfg.keep_checkpoints)
        if self.ctx.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
        return path

    def _resume(self) -> Optional[int]:
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            log.warning("--resume: no checkpoint under %s, so the run starts from step 0", self.ckpt_dir)
            if self.ctx.is_main and self.metrics_path.is_file():
                write_text_atomic(self.metrics_path, "")  # the stopped run's steps are not this run's
            return None
        saved_cfg = self.out_dir / "train_config.json"
        if saved_cfg.is_file():
            old = _read_saved_config(saved_cfg)
            now = json.loads(json.dumps(self.cfg.to_dict()))  # as train_config.json holds it (lists, not tuples)
            # Everything that decides the steps must match: the optimizer's settings and the scheduler's base rates
            # come back from the checkpoint (a new lr was silently ignored yet recorded as used), and other
            # studies or loss weights make the resumed run another run. Options of speed, logging, storage and of
            # the stages after the steps may change.
            changed = [k for k in sorted(now) if k not in _RESUMABLE_CHANGES and k in old and old[k] != now[k]]
            if changed:
                raise CheckpointError(f"cannot resume: option(s) {', '.join(changed)} differ from the run being "
                                      "resumed (start a new --out folder)", path=saved_cfg)
            if old.get("max_steps") != now.get("max_steps"):
                log.warning("resuming with max_steps %s instead of %s: the learning-rate schedule is recomputed for "
                            "the new length from the step reached", now.get("max_steps"), old.get("max_steps"))
        self.state = load_checkpoint(path, model=self.objective, optimizer=self.optimizer,
                                     scheduler=self.scheduler, rank=self.ctx.rank,
                                     generators={"loader": self.loader_gen})
        if self.ctx.is_main and self.metrics_path.is_file():
            # Drop log lines written after the checkpoint so the resumed log has no duplicated steps.
            kept = [ln for ln in self.metrics_path.read_text().splitlines()
                    if (step := _step_of(ln)) is not None and step <= self.state["step"]]  # a torn last line goes
            write_text_atomic(self.metrics_path, "".join(ln + "\n" for ln in kept))  # a kill here loses no line
        self._elapsed_before = float(self.state.get("elapsed_s", 0.0))  # absent in checkpoints before 2026-12-07
        log.info("resumed from %s (step %d, epoch %d, batch %d)", path, self.state["step"],
                 self.state["epoch"], self.state["batch"])
        return int(self.state["step"])

    def _elapsed(self) -> float:
        """Seconds of steps in the whole run so far, earlier processes of a resumed run included."""
        return self._elapsed_before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False, until: Optional[int] = None) -> TrainResult:
        """Run to `max_steps` optimizer steps (or stop early at step `until`, with a checkpoint).

        With `resume`, continue from the newest checkpoint under OUT/checkpoints: model, optimizer,
        scheduler, RNG streams and data position are restored, so the result is bit-identical to a run
        that never stopped (same device and thread count).
        """
        cfg = self.cfg
        stop = min(cfg.max_steps, until) if until is not None else cfg.max_steps
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = self._resume() if resume else None
        if resumed is None:
            seed_everything(cfg.seed + 1000 * self.ctx.rank)
        if self.ctx.is_main:
            cfg.save(self.out_dir / "train_config.json")
        module = self.ddp if self.ddp is not None else self.objective
        module.train()
        bar = None
        if self.progress and self.ctx.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.state["step"], desc="train", unit="step", dynamic_ncols=True)
        t0 = self._t0 = time.perf_counter()
        last_loss: Optional[float] = None
        last_ckpt: Optional[Path] = None
        micro = 0
        acc_logs: Dict[str, float] = {}
        metrics_fh = open(self.metrics_path, "a") if self.ctx.is_main else None
        try:
            while self.state["step"] < stop:
                for batch in self._loader(self.state["epoch"], self.state["batch"]):
                    sync = micro + 1 == cfg.grad_accum
                    no_sync = self.ddp.no_sync() if (self.ddp is not None and not sync) else nullcontext()
                    with no_sync:
                        with self._autocast():
                            loss, logs = module(batch, self.state["step"])
                        (loss / cfg.grad_accum).backward()
                    for k, v in logs.items():
                        acc_logs[k] = acc_logs.get(k, 0.0) + float(v) / cfg.grad_accum
                    acc_logs["loss"] = acc_logs.get("loss", 0.0) + float(loss.detach()) / cfg.grad_accum
                    self.state["batch"] += 1
                    micro += 1
                    if not sync:
                        continue
                    micro = 0
                    # Checked before the step is applied: a NaN update would poison every later checkpoint, and
                    # pruning would then delete the finite ones. The mean over ranks (and the gradient norm, of
                    # gradients DDP already averaged) is the same on every rank, so all ranks stop together.
                    step_loss = all_reduce_mean(acc_logs["loss"], self.device)
                    if not math.isfinite(step_loss):
                        raise self._diverged(self.state["step"] + 1, f"the loss is {step_loss} (the step was not "
                                             "applied)")
                    if cfg.grad_clip > 0:
                        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.objective.parameters(), cfg.grad_clip))
                        acc_logs["grad_norm"] = grad_norm
                        if not math.isfinite(grad_norm):
                            raise self._diverged(self.state["step"] + 1, f"the gradient norm is {grad_norm} (loss "
                                                 f"{step_loss:.6g}; the step was not applied)")
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    used_lr = self.scheduler.get_last_lr()[0]  # the rate this step used (logged below)
                    self.scheduler.step()
                    self.state["step"] += 1
                    step = self.state["step"]
                    last_loss = step_loss
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{last_loss:.4f}")
                    if metrics_fh is not None and (step % cfg.log_every == 0 or step == cfg.max_steps or step == 1):
                        rec = {"step": step, "epoch": self.state["epoch"], "lr": used_lr,
                               "time_s": round(self._elapsed(), 3),
                               **{k: _finite_or_none(v) for k, v in acc_logs.items()}, "loss": round(last_loss, 6)}
                        metrics_fh.write(json.dumps(rec, allow_nan=False) + "\n")
                        metrics_fh.flush()
                    acc_logs = {}
                    if step % cfg.checkpoint_every == 0 or step == stop:
                        last_ckpt = self._save()
                    if step >= stop:
                        break
                else:
                    self.state["epoch"] += 1
                    self.state["batch"] = 0
        finally:
            if bar is not None:
                bar.close()
            if metrics_fh is not None:
                metrics_fh.close()
        return TrainResult(steps=self.state["step"], seconds=time.perf_counter() - t0, last_loss=last_loss,
                           out_dir=self.out_dir, metrics_path=self.metrics_path,
                           checkpoint=last_ckpt or latest_checkpoint(self.ckpt_dir), resumed_from=resumed)
