"""`train()`: archive -> cached studies + report labels -> objective -> Trainer -> a saved model folder."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ctglip_sdk import organs as vocab
from ctglip_sdk.errors import ConfigError, InputError
from ctglip_sdk.training.cache import PreprocessCache
from ctglip_sdk.training.config import TrainConfig
from ctglip_sdk.training.checkpoint import latest_checkpoint
from ctglip_sdk.training.data import (CacheBuild, StudyDataset, build_cache, collate_studies, is_cached, read_manifest,
                                      read_reports, relative_reason, shared_patients)
from ctglip_sdk.training.distributed import barrier, init_distributed
from ctglip_sdk.training.objectives import build_objective
from ctglip_sdk.training.readout import run_readout
from ctglip_sdk.training.runinfo import MemoryLog, host_info
from ctglip_sdk.training.trainer import Trainer, default_param_groups

__all__ = ["train"]

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]


def _dictionary(dictionary: Any) -> Any:
    if dictionary is not None:
        return dictionary
    from ctglip_sdk.reports import AbnormalityDictionary

    return AbnormalityDictionary.default()


def _finding_organs(dictionary: Any) -> list:
    out = []
    for organ in vocab.ORGANS:
        try:
            if list(dictionary.for_organ(organ)):
                out.append(organ)
        except Exception:  # noqa: BLE001 - organs without dictionary findings
            continue
    return out


def _initial_model(cfg: TrainConfig, out: Path, corpus: list, is_main: bool, resume: bool) -> Any:
    """Rank 0 builds (or, on resume, reloads) the initial model and saves it; other ranks load that copy, so
    every rank has the same tokenizer and weights."""
    import ctglip_sdk as cg

    init_dir = out / "model_init"
    if is_main and not (resume and (init_dir / "config.json").is_file()):
        path = Path(cfg.model)
        if path.is_dir() or cfg.model in cg.list_models() and cg.model.model_info(cfg.model)["has_weights"]:
            model = cg.load(cfg.model)  # fine-tune trained weights
        elif cfg.model in cg.list_models():
            model = cg.create(cfg.model, corpus=corpus, seed=cfg.seed)
        elif path.is_file() and path.suffix == ".json":  # a model config file: a new architecture
            from ctglip_sdk.model.config import CTGlipConfig

            try:
                arch = CTGlipConfig.from_json(path.read_text(encoding="utf-8"))
            except ConfigError as exc:  # name the file: "unknown key vision.chanels" alone does not say where
                raise ConfigError(exc.reason, path=path) from None
            model = cg.create(arch, corpus=corpus, seed=cfg.seed)
        else:
            raise ConfigError(f"model={cfg.model!r}: not a registered config ({', '.join(cg.list_models())}), "
                              "a model folder or a model config .json file")
        model.save_pretrained(init_dir)
    barrier()
    return cg.load(init_dir)


def _needs_stats_norm(model: Any) -> bool:
    """A model with stats whose standardisation is still the identity (a fresh model, not a fine-tune)."""
    if not model.config.preprocess.n_stats:
        return False
    return bool((model.stats_shift == 0).all() and (model.stats_scale == 1).all())


def _set_stats_norm(model: Any, records: list, cache: Any) -> None:
    """Standardise the model's stats columns by their mean and spread over every organ of the training studies."""
    cols = [model.stats_columns(cache.stats(r.image, r.mask, r.series)) for r in records]
    model.set_stats_norm(torch.cat(cols))
    log.info("stats standardised over %d organs of %d studies", sum(len(c) for c in cols), len(records))


def _calibrate(model: Any, archive: PathLike, cfg: TrainConfig, dictionary: Any, progress: bool) -> Dict[str, Any]:
    """Per-finding thresholds from the reports of the val split (or of every study of
    ``cfg.calibration_archive``), or a note saying why there are none."""
    from ctglip_sdk.training.calibration import calibrate

    root, split = (cfg.calibration_archive, "all") if cfg.calibration_archive else (archive, cfg.val_split)
    if not read_manifest(root, split):  # same split syntax as calibrate() ("all", lists)
        return {"skipped": f"no studies in split {split!r}"}
    try:
        # reset: offsets the model may have brought from before training belong to other weights
        report = calibrate(model, root, split, dictionary=dictionary, progress=progress, workers=cfg.loader_workers,
                           reset=True)
    except InputError as exc:  # e.g. every val report empty: the trained model is still saved, uncalibrated
        log.warning("no calibration: %s", exc)
        return {"skipped": str(exc)}
    log.info("calibrated %d findings on %d %s studies", len(report["offsets"]), report["n_studies"], split)
    return {"archive": os.fspath(root), **{k: report[k] for k in ("split", "n_studies", "offsets", "skipped_studies")}}


#: OUT/skipped_studies.json: the studies a run left out, so that a resumed run leaves out the same ones.
SKIPPED_FILE = "skipped_studies.json"


def _kept_out(out: Path, resume: bool) -> Dict[str, str]:
    """study_uid -> reason of the studies the run being resumed left out (none for a new run).

    A resumed run must see the same studies as the run it continues, or its data position (epoch, batch of a
    seeded permutation of the dataset) points at other studies and the result is no longer that of an
    uninterrupted run; a study fixed meanwhile is re-tried by the next new run.
    """
    path = out / SKIPPED_FILE
    if not (resume and path.is_file() and latest_checkpoint(out / "checkpoints") is not None):
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["skipped_studies"]
        return {str(r["study_uid"]): str(r["reason"]) for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read the studies the run left out ({type(exc).__name__}); start a new --out "
                         "folder", path=path) from None


def _usable(records: Sequence[Any], texts: Sequence[Any], cache: PreprocessCache, built: CacheBuild,
            skipped: List[Tuple[str, str]]) -> Tuple[List[Any], List[Any]]:
    """The records (and texts) whose cache entry exists; the others are added to ``skipped``.

    Every rank decides from the cache itself (rank 0 built it; only rank 0 knows the reasons), so all ranks
    train on the same studies.
    """
    reasons = dict(built.skipped)
    keep = [is_cached(cache, r) for r in records]
    skipped += [(r.study_uid, reasons.get(r.study_uid, "could not be preprocessed (see rank 0's log)"))
                for r, ok in zip(records, keep) if not ok]
    return [r for r, ok in zip(records, keep) if ok], [t for t, ok in zip(texts, keep) if ok]


def train(archive: PathLike, out_dir: PathLike, config: Optional[TrainConfig] = None, *, resume: bool = False,
          progress: bool = True, dictionary: Any = None, **overrides: Any) -> Dict[str, Any]:
    """Train a CT-GLIP model (or the CLIP baseline) on an archive; the result is saved to OUT/model/.

    Labels for the abnormality loss come from the reports (``ctglip_sdk.reports``), never from truth.jsonl.
    Under ``torchrun`` every rank calls this; rank 0 writes the files.

    Args:
        archive: archive root in the documented layout (manifest.csv, images, masks, reports).
        out_dir: run folder: model_init/, checkpoints/, metrics.jsonl, train_config.json, model/, summary.json.
        config: training options (default TrainConfig()); ``overrides`` are option=value keywords on top.
        resume: continue from the newest checkpoint in out_dir (exact: same result as an uninterrupted run).
        progress: tqdm bars for preprocessing and training.
        dictionary: AbnormalityDictionary (default: the built-in one).

    Returns:
        Summary dict: out_dir, model_dir, steps, seconds, train_seconds, cache_seconds, last_loss, objective,
        model, n_train, ``skipped_studies`` (``[{study_uid, reason}]``: studies left out because their report,
        image or mask could not be read, or whose mask lies on another grid than its image; the run goes on without
        them), ``patients_shared`` (other splits that hold patients of the training split: ``{split: patients}``,
        from the manifest's patient_id),
        resumed_from, world_size, config, host (CPU, instruction set, versions); ``readout``
        (organs, first/last loss, seconds) when ``readout_epochs`` is set, ``calibration`` when thresholds were
        chosen; on rank 0 ``peak_memory`` (peak resident MiB after each stage, of the largest finished worker,
        and torch's peak GPU allocation on CUDA).

    Example:
        >>> from ctglip_sdk.training import train, TrainConfig
        >>> train("archive/", "runs/tiny", TrainConfig(max_steps=300))  # doctest: +SKIP
    """
    cfg = config or TrainConfig()
    if overrides:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **overrides})
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = init_distributed(cfg.device)
    memory = MemoryLog(ctx.device)
    out = Path(out_dir)
    made_out = not out.exists()
    try:
        if not resume and (latest_checkpoint(out / "checkpoints") is not None or (out / "metrics.jsonl").is_file()):
            # A second run into the folder appended to the first's log and its pruning kept the old checkpoints
            raise ConfigError("this folder holds a training run (checkpoints/ or metrics.jsonl): pass --resume "
                              "(resume=True) to continue it, or choose another --out", path=out)
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
        dictionary = _dictionary(dictionary)
        calib_root = Path(cfg.calibration_archive) if cfg.calibrate and cfg.calibration_archive else None
        if calib_root is not None:
            # Checked before training: a typo here must not cost a whole run.
            if not read_manifest(calib_root):
                raise InputError("calibration archive has no studies", path=calib_root)
            if calib_root.resolve() == Path(archive).resolve():
                log.warning("calibration_archive is the training archive: thresholds will be chosen on every study "
                            "of it, training studies included, so F1 on them is optimistic")
        manifest = Path(archive) / "manifest.csv"
        records = read_manifest(archive, cfg.train_split)
        if not records:
            raise InputError(f"no studies in split {cfg.train_split!r}", path=manifest)
        shared = shared_patients(records, archive, f"training split {cfg.train_split!r}",
                                 {"calibration_archive": read_manifest(calib_root)} if calib_root is not None else None)
        if cfg.calibrate and calib_root is None:
            seen = {r.study_uid for r in records}
            if any(r.study_uid in seen for r in read_manifest(archive, cfg.val_split)):
                log.warning("train_split %r overlaps val_split %r: thresholds will be chosen on training studies; "
                            "set calibration_archive to a separate archive", cfg.train_split, cfg.val_split)
        kept_out = _kept_out(out, resume)
        if kept_out:
            log.info("resuming: %d stud%s the run left out stay%s out, so it goes on with the same studies (a new "
                     "run re-tries them)", len(kept_out), *(("y", "s") if len(kept_out) == 1 else ("ies", "")))
        labelled = read_reports([r for r in records if r.study_uid not in kept_out], dictionary, purpose="training")
        records, texts = labelled.records, labelled.texts
        skipped = [*kept_out.items(), *labelled.skipped]
        if not records:
            raise InputError(f"no study of split {cfg.train_split!r} has a readable, non-empty report", path=manifest)
        # One document per patient: a word must be used for several patients to enter the tokenizer, which is
        # saved with the model (a patient's name recurs in their own reports only).
        by_patient: Dict[str, List[str]] = {}
        for rec, t in zip(records, texts):
            by_patient.setdefault(rec.patient_id or rec.study_uid, []).append(t.report)
        corpus = ["\n".join(reports) for reports in by_patient.values()]
        model = _initial_model(cfg, out, corpus, ctx.is_main, resume)
        if cfg.channels_last:  # before the optimizer exists, so its state takes the same memory format
            model.set_channels_last(True)
        model.train()
        cache = PreprocessCache.for_model(model, Path(cfg.cache_dir) if cfg.cache_dir else None)
        tc = time.perf_counter()
        built = (build_cache(records, cache, workers=cfg.loader_workers, progress=progress) if ctx.is_main
                 else CacheBuild(0, []))
        barrier()
        records, texts = _usable(records, texts, cache, built, skipped)
        skipped = [(u, relative_reason(r, archive)) for u, r in skipped]
        if not records:
            uid, reason = skipped[-1]
            raise InputError(f"none of the studies of split {cfg.train_split!r} could be read ({len(skipped)} left "
                             f"out, e.g. study {uid}: {reason})", path=manifest)
        if ctx.is_main:
            (out / SKIPPED_FILE).write_text(json.dumps({"skipped_studies": [{"study_uid": u, "reason": r}
                                                                            for u, r in skipped]}, indent=2) + "\n")
        cache_seconds = time.perf_counter() - tc
        memory.mark("cache")
        if _needs_stats_norm(model):  # every rank computes the same numbers from the same cache
            _set_stats_norm(model, records, cache)
            if ctx.is_main:
                model.save_pretrained(out / "model_init")  # a resumed run reloads it with the same scaling
            memory.mark("stats_norm")
        dataset = StudyDataset(records, cache, texts, dictionary, cfg.organs_per_study, cfg.seed,
                               finding_organs=_finding_organs(dictionary), finding_weight=cfg.finding_organ_weight)
        objective = build_objective(model, cfg, dictionary)
        groups = default_param_groups(objective, cfg, text_prefixes=("model.text.", "model.text_proj."))
        trainer = Trainer(objective, dataset, cfg, out, collate_fn=collate_studies, param_groups=groups, ctx=ctx,
                          progress=progress)
        result = trainer.fit(resume=resume)
        memory.mark("steps")
        summary = {"out_dir": str(out), "model_dir": str(out / "model"), "steps": result.steps,
                   "seconds": round(time.perf_counter() - t0, 1), "train_seconds": round(result.seconds, 1),
                   "cache_seconds": round(cache_seconds, 1), "cache_built": built.built, "cache_dir": str(cache.dir),
                   "last_loss": result.last_loss, "objective": cfg.objective, "model": model.name,
                   "n_train": len(records), "skipped_studies": [{"study_uid": u, "reason": r} for u, r in skipped],
                   "patients_shared": shared, "resumed_from": result.resumed_from, "world_size": ctx.world_size,
                   "config": cfg.to_dict(), "host": host_info()}
        if ctx.is_main:
            if cfg.readout_epochs:
                summary["readout"] = run_readout(model, records, cache, texts, cfg, dictionary, progress)
                memory.mark("readout")
            model.eval()
            if cfg.save_name:
                model.config = model.config.replace(name=cfg.save_name)
                summary["model"] = model.name
            if cfg.calibrate:
                summary["calibration"] = _calibrate(model, archive, cfg, dictionary, progress)
                memory.mark("calibration")
            summary["peak_memory"] = memory.as_dict()
            model.save_pretrained(out / "model")
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            log.info("trained %s for %d steps in %.0f s -> %s", model.name, result.steps, summary["seconds"],
                     out / "model")
        barrier()
        return summary
    except BaseException:
        # A refused config or archive (an unknown model, no studies) must not leave an empty --out folder behind:
        # a retry would then meet a folder it did not ask for. One the run has written into is kept.
        if ctx.is_main and made_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        if ctx.initialized_here:
            torch.distributed.destroy_process_group()
