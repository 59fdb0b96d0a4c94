"""`train()`: archive -> cached studies + report labels -> objective -> Trainer -> a saved model folder."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from ctglip_sdk import organs as vocab
from ctglip_sdk.errors import CheckpointError, ConfigError, InputError
from ctglip_sdk.training.cache import PreprocessCache
from ctglip_sdk.training.config import TrainConfig, write_text_atomic
from ctglip_sdk.training.checkpoint import latest_checkpoint
from ctglip_sdk.training.data import (CacheBuild, StudyDataset, build_cache, collate_studies, is_cached, read_manifest,
                                      read_reports, relative_reason, shared_patients)
from ctglip_sdk.training.distributed import barrier, init_distributed
from ctglip_sdk.training.objectives import build_objective
from ctglip_sdk.training.readout import run_readout
from ctglip_sdk.training.runinfo import (DATA_FILE, INIT_FILE, MemoryLog, data_differences, data_record, host_info,
                                         init_options, json_safe, read_record, row_key)
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


def _reuse_init(init_dir: Path, wanted: Dict[str, Any], resume: bool, has_ckpt: bool) -> bool:
    """Whether a --resume may reuse model_init/: it was built from the options asked for now (always, when a
    checkpoint continues it: then other options are refused). Every rank decides the same from the same files."""
    if not (resume and (init_dir / "config.json").is_file()):
        return False
    recorded = read_record(init_dir / INIT_FILE)
    if recorded is None:  # written before 2026-12-07, or a kill between the model and its record
        if has_ckpt:
            log.warning("%s: no record of the options that built it (a run folder from before 2026-12-07): reused "
                        "unchecked, as the run's checkpoints continue it", init_dir)
            return True
        log.info("%s: no record of the options that built it and no checkpoint uses it: rebuilt", init_dir)
        return False
    diff = [k for k in ("model", "model_path", "seed") if recorded.get(k) != wanted[k]]
    if has_ckpt:
        if diff:
            was = ", ".join(f"{k}={recorded.get(k)!r}" for k in diff)
            now = ", ".join(f"{k}={wanted[k]!r}" for k in diff)
            raise CheckpointError(f"cannot resume: model_init/ was built with {was} and the run's checkpoints "
                                  f"continue it; this resume asks for {now} (resume with the run's options, or start "
                                  "a new --out folder)", path=init_dir / INIT_FILE)
        return True  # another corpus means other data: the data check below names the difference
    if diff or recorded.get("corpus_sha256") != wanted["corpus_sha256"]:
        what = ", ".join(diff) if diff else "the training reports"
        log.warning("--resume: %s differ(s) from those that built %s, and no checkpoint uses it: rebuilt", what,
                    init_dir)
        return False
    return True


def _initial_model(cfg: TrainConfig, out: Path, corpus: list, is_main: bool, resume: bool, has_ckpt: bool) -> Any:
    """Rank 0 builds (or, on resume, reloads) the initial model and saves it; other ranks load that copy, so
    every rank has the same tokenizer and weights.

    The options that built it are recorded next to it (model_init/init_options.json): a --resume reuses it only
    when they are the ones asked for. A stale model_init/ (a run killed before its first checkpoint, resumed with
    another --model or seed) was reused silently while train_config.json recorded the new options.
    """
    import ctglip_sdk as cg

    init_dir = out / "model_init"
    wanted = init_options(cfg.model, cfg.seed, corpus)
    if is_main and not _reuse_init(init_dir, wanted, resume, has_ckpt):
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
        # After the model: a kill in between leaves a model without a record, which a resume rebuilds.
        write_text_atomic(init_dir / INIT_FILE, json.dumps(wanted, indent=2) + "\n")
    elif not is_main:
        _reuse_init(init_dir, wanted, resume, has_ckpt)  # the same refusal on every rank, before the barrier
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


class KeptOut(NamedTuple):
    """What the run being resumed left out: its entries as written, by row key (and by study for a file written
    before 2026-12-07, which has no row keys)."""

    entries: List[Tuple[str, str, Optional[str]]]
    rows: Dict[str, str]
    studies: Dict[str, str]

    def holds(self, record: Any, key: str) -> bool:
        """True when ``record`` (row key ``key``) stays out of the resumed run."""
        return key in self.rows or record.study_uid in self.studies


def _kept_out(out: Path, resume: bool) -> KeptOut:
    """The rows the run being resumed left out (none for a new run).

    A resumed run must see the same rows as the run it continues, or its data position (epoch, batch of a
    seeded permutation of the dataset) points at other rows and the result is no longer that of an
    uninterrupted run; a study fixed meanwhile is re-tried by the next new run. Keyed by row: one unreadable
    series of a study used to take the study's other series out of the resumed run too.
    """
    path = out / SKIPPED_FILE
    none = KeptOut([], {}, {})
    if not (resume and path.is_file() and latest_checkpoint(out / "checkpoints") is not None):
        return none
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["skipped_studies"]
        entries = [(str(r["study_uid"]), str(r["reason"]), str(r["row"]) if r.get("row") else None) for r in rows]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"cannot read the studies the run left out ({type(exc).__name__}); start a new --out "
                         "folder", path=path) from None
    by_row = {k: reason for _, reason, k in entries if k}
    by_study = {uid: reason for uid, reason, k in entries if not k}
    if by_study:
        log.warning("%s: written before 2026-12-07 without row keys: every row of its %d stud%s stays out", path,
                    len(by_study), "y" if len(by_study) == 1 else "ies")
    return KeptOut(entries, by_row, by_study)


def _usable(records: Sequence[Any], texts: Sequence[Any], cache: PreprocessCache, built: CacheBuild,
            skipped: List[Tuple[str, str, str]], archive: PathLike) -> Tuple[List[Any], List[Any]]:
    """The records (and texts) whose cache entry exists; the others are added to ``skipped``.

    Every rank decides from the cache itself (rank 0 built it; only rank 0 knows the reasons), so all ranks
    train on the same studies.
    """
    reasons = dict(built.skipped)
    keep = [is_cached(cache, r) for r in records]
    skipped += [(r.study_uid, reasons.get(r.study_uid, "could not be preprocessed (see rank 0's log)"),
                 row_key(r, archive)) for r, ok in zip(records, keep) if not ok]
    return [r for r, ok in zip(records, keep) if ok], [t for t, ok in zip(texts, keep) if ok]


def _check_data(out: Path, now: Dict[str, Any], names: Dict[str, str], partial: bool) -> Optional[Dict[str, Any]]:
    """Refuse a resume whose training data differ from the run's record (OUT/train_data.json); returns the record.

    ``partial``: before the cache build, only rows of the run that are gone are known to differ (refused early,
    before preprocessing another archive); the full check follows once the rows to train on are known.
    """
    path = out / DATA_FILE
    old = read_record(path)
    if old is None:
        return None
    problems = data_differences(old, now, names, partial=partial)
    if problems:
        raise CheckpointError("cannot resume: the training data differ from the run's: " + "; ".join(problems)
                              + ". Resume with the data the run trained on, or start a new --out folder (a new run "
                              "re-reads every study)", path=path)
    if not partial and old.get("archive") != now["archive"]:
        log.warning("the archive moved (%s -> %s); its training rows and reports are the run's", old.get("archive"),
                    now["archive"])
    return old


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
        model, n_train, ``skipped_studies`` (``[{study_uid, row, reason}]``, ``row`` a hash naming the manifest
        row: rows left out because their report, image or mask could not be read, or whose mask lies on another
        grid than its image; the run goes on without them), ``patients_shared`` (other splits that hold patients
        of the training split: ``{split: patients}``, from the manifest's patient_id), resumed_from, world_size,
        config, host (CPU, instruction set, versions); ``readout`` (organs, first/last loss, seconds) when
        ``readout_epochs`` is set, ``calibration`` when thresholds were chosen; on rank 0 ``peak_memory`` (peak
        resident MiB after each stage, of the largest finished worker, and torch's peak GPU allocation on CUDA).
        NaN and infinity are None (JSON null).

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
        has_ckpt = resume and latest_checkpoint(out / "checkpoints") is not None
        keys = {id(r): row_key(r, archive) for r in records}
        # Words naming a row in a refusal: its study UID, as skipped_studies names it (never a path or patient).
        names = {keys[id(r)]: f"study {r.study_uid}" for r in records}
        kept_out = _kept_out(out, resume)
        if kept_out.entries:
            n = len(kept_out.entries)
            log.info("resuming: %d row%s the run left out stay%s out, so it goes on with the same rows (a new run "
                     "re-tries them)", n, *(("", "s") if n == 1 else ("s", "")))
        records = [r for r in records if not kept_out.holds(r, keys[id(r)])]
        if has_ckpt:  # before the cache build: another archive must not be preprocessed only to be refused
            _check_data(out, {"archive": os.fspath(Path(archive).resolve()), "rows": [keys[id(r)] for r in records]},
                        names, partial=True)
        labelled = read_reports(records, dictionary, purpose="training")
        read_fail = dict(labelled.skipped)
        readable = {id(r) for r in labelled.records}
        skipped = [*kept_out.entries, *[(r.study_uid, read_fail[r.study_uid], keys[id(r)]) for r in records
                                        if id(r) not in readable and r.study_uid in read_fail]]
        records, texts = labelled.records, labelled.texts
        if not records:
            raise InputError(f"no study of split {cfg.train_split!r} has a readable, non-empty report", path=manifest)
        # One document per patient: a word must be used for several patients to enter the tokenizer, which is
        # saved with the model (a patient's name recurs in their own reports only).
        by_patient: Dict[str, List[str]] = {}
        for rec, t in zip(records, texts):
            by_patient.setdefault(rec.patient_id or rec.study_uid, []).append(t.report)
        corpus = ["\n".join(reports) for reports in by_patient.values()]
        model = _initial_model(cfg, out, corpus, ctx.is_main, resume, has_ckpt)
        if cfg.channels_last:  # before the optimizer exists, so its state takes the same memory format
            model.set_channels_last(True)
        model.train()
        cache = PreprocessCache.for_model(model, Path(cfg.cache_dir) if cfg.cache_dir else None)
        tc = time.perf_counter()
        built = (build_cache(records, cache, workers=cfg.loader_workers, progress=progress) if ctx.is_main
                 else CacheBuild(0, []))
        barrier()
        records, texts = _usable(records, texts, cache, built, skipped, archive)
        skipped = [(u, relative_reason(r, archive), k) for u, r, k in skipped]
        skipped_rows = [{"study_uid": u, "row": k, "reason": r} for u, r, k in skipped]
        if not records:
            uid, reason, _ = skipped[-1]
            raise InputError(f"none of the studies of split {cfg.train_split!r} could be read ({len(skipped)} left "
                             f"out, e.g. study {uid}: {reason})", path=manifest)
        data = data_record(archive, records, texts)
        names.update({k: f"study {u}, left out now: {r}" for u, r, k in skipped if k})
        recorded = _check_data(out, data, names, partial=False) if has_ckpt else None
        if has_ckpt and recorded is None:
            log.warning("%s: no record of the run's training data (a run folder from before 2026-12-07): the resume "
                        "cannot check that the archive and its training rows are the run's; recording them now",
                        out / DATA_FILE)
        if ctx.is_main:
            write_text_atomic(out / SKIPPED_FILE, json.dumps({"skipped_studies": skipped_rows}, indent=2) + "\n")
            if recorded is None:
                write_text_atomic(out / DATA_FILE, json.dumps(data, indent=1) + "\n")
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
                   "n_train": len(records), "skipped_studies": skipped_rows,
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
        # NaN and infinity as null: a bare NaN in summary.json or --json is refused by strict JSON parsers.
        summary = json_safe(summary)
        if ctx.is_main:
            write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
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
