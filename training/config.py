"""TrainConfig: every training option in one typed dataclass, loaded from JSON (or YAML) plus `key=value` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Union

from ctglip_sdk.errors import ConfigError

__all__ = ["TrainConfig", "OBJECTIVES", "write_text_atomic"]

OBJECTIVES = ("ctglip", "clip")
_FN_MODES = ("mask", "multi", "none")
_UNSPECIFIED = ("absent", "uncertain")
_DECISION_BALANCE = ("finding", "pooled", "none")  # = losses.DECISION_BALANCE (no torch import here)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
#: torch takes seeds below 2**64 and each DDP rank seeds with ``seed + 1000 * rank``: 2**63 - 1 leaves room for
#: that offset and fits a signed 64-bit integer wherever the seed goes (2**64 ended in a raw torch ValueError).
MAX_SEED = 2 ** 63 - 1
#: ``threads``: torch.set_num_threads(10**8) crashed the process (SIGSEGV). A fixed cap rather than a multiple of
#: os.cpu_count(), so that a config valid on the machine that wrote it stays valid on the one that runs it; 1024
#: is above the core count of any single host, and threads beyond the cores only slow a run down.
MAX_THREADS = 1024
#: ``num_workers`` / ``cache_workers`` are processes, each holding a copy of the dataset's state: beyond this a
#: typo (100000) would fork until the machine runs out of memory instead of being refused.
MAX_WORKERS = 256


@dataclass
class TrainConfig:
    """Options of one training run. Unknown keys and wrong types raise ConfigError naming the key.

    Example:
        >>> cfg = TrainConfig.from_sources(overrides=["max_steps=20", "objective=clip"])
        >>> cfg.max_steps, cfg.objective
        (20, 'clip')
    """

    model: str = "ctglip-tiny"
    #: Name given to the trained model in OUT/model/config.json (None: keep the architecture config's name).
    save_name: Optional[str] = None
    #: "ctglip" (organ-text + abnormality dictionary + organ identity) or "clip" (volume <-> whole report).
    objective: str = "ctglip"
    seed: int = 0
    max_steps: int = 600
    batch_size: int = 4                 # studies per micro-batch (per process)
    grad_accum: int = 1                 # micro-batches per optimizer step
    lr: float = 1e-3
    text_lr: Optional[float] = None     # learning rate of the text tower (None: same as lr)
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-6
    warmup_steps: int = 30
    min_lr_ratio: float = 0.05          # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0              # 0 disables clipping
    # Loss weights; w_abnormality=0 is the "no dictionary" ablation.
    w_organ_text: float = 1.0
    w_abnormality: float = 1.0
    w_identity: float = 0.5
    #: How organ-text InfoNCE treats equivalent texts: "mask" them out of the negatives, "multi" positives, "none".
    false_negatives: str = "mask"
    #: How the zero-shot decision loss weighs findings: "finding" (each finding's positives and negatives
    #: averaged on their own, so rare focal findings count as much as common ones), "pooled" (all positive pairs
    #: together against all negative pairs: the recipe before 2026-12-02) or "none".
    decision_balance: str = "finding"
    #: An organ the report calls abnormal without naming a finding ("Moderate stool burden throughout the colon",
    #: "The liver is abnormal"): "absent" trains its findings the report does not state as absent, as for any
    #: organ (the bundled model's recipe); "uncertain" leaves them out of the labels, as evaluation with report
    #: labels and calibration read them (better for reports of your own that describe findings in free words).
    unspecified_abnormality: str = "absent"
    #: Organ samples per study: every organ with a finding in the report plus a weighted random sample of the
    #: others (dictionary organs weigh `finding_organ_weight`) up to this count.
    organs_per_study: int = 48
    finding_organ_weight: float = 3.0
    #: Positive phrasings drawn per finding into each batch's text bank (phrasings vary across steps).
    phrasings_per_finding: int = 2
    #: Readout stage after the last step: refit only the vision projection for this many passes over every
    #: training organ's frozen pooled features, with the zero-shot decision and organ identity losses against
    #: the inference prompts (0: off; docs/training.md, "Readout stage"). Needs objective "ctglip".
    readout_epochs: int = 0
    readout_lr: float = 3e-4
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    num_workers: int = 0                # DataLoader worker processes of the training loop
    #: Workers that build the preprocessing cache and read ahead while calibrating (None: ``num_workers``).
    #: Why apart: building the cache is pure preprocessing and runs ~2x faster with 2 processes on 2 cores,
    #: while the loop reads one cached file per study and gains nothing from loader processes on a CPU
    #: (1.73 s/step with 2, 1.76 with none, the same run otherwise), which only hold more memory.
    cache_workers: Optional[int] = None
    bf16: bool = True                   # bf16 autocast, applied on CUDA only
    device: str = "auto"                # "auto" | "cpu" | "cuda" | "cuda:N"
    cache_dir: Optional[str] = None     # preprocessing cache (None: $CTGLIP_CACHE_DIR, $XDG_CACHE_HOME, ~/.cache)
    train_split: str = "train"          # a split, a list ("train,val") or "all" (e.g. with calibration_archive)
    val_split: str = "val"
    #: After training, choose each finding's threshold on ``val_split`` (labels from its reports) and save it
    #: in the model (``ctglip calibrate``); skipped when that split is empty.
    calibrate: bool = True
    #: Choose those thresholds on every study of this archive instead (None: ``val_split`` of the training
    #: archive). A separate calibration archive of ~200 studies gives steadier thresholds than a 30-study val
    #: split: on the bundled model mean F1 went 0.75 -> 0.79-0.80 (docs/training.md, "Calibration").
    calibration_archive: Optional[str] = None
    threads: int = 0                    # torch intra-op threads (0: leave torch's default)
    #: Run the vision tower in channels_last_3d. Host-dependent: on a 2-core AVX2-only AMD EPYC a ctglip-tiny
    #: step took 0.85x the time; at inference on an Intel Xeon it made no difference (docs/training.md).
    channels_last: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)  # free-form notes recorded with the run

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check types and ranges; raise ConfigError naming the offending key."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective={self.objective!r}: expected one of {', '.join(OBJECTIVES)}")
        if self.decision_balance not in _DECISION_BALANCE:
            raise ConfigError(f"decision_balance={self.decision_balance!r}: expected one of "
                              f"{', '.join(_DECISION_BALANCE)}")
        if self.unspecified_abnormality not in _UNSPECIFIED:
            raise ConfigError(f"unspecified_abnormality={self.unspecified_abnormality!r}: expected one of "
                              f"{', '.join(_UNSPECIFIED)}")
        if self.false_negatives not in _FN_MODES:
            raise ConfigError(f"false_negatives={self.false_negatives!r}: expected one of {', '.join(_FN_MODES)}")
        for name in ("max_steps", "batch_size", "grad_accum", "organs_per_study", "phrasings_per_finding",
                     "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        for name in ("warmup_steps", "num_workers", "threads", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 0")
        for name, top in (("seed", MAX_SEED), ("threads", MAX_THREADS), ("num_workers", MAX_WORKERS),
                          ("cache_workers", MAX_WORKERS)):
            value = getattr(self, name)
            if value is not None and value > top:
                raise ConfigError(f"{name}={value}: must be <= {top}")
        if not self.model.strip():  # Path("") is ".": the error then spoke of a model folder "."
            raise ConfigError(f"model={self.model!r}: must name a registered config, a model folder or a model "
                              "config .json file")
        problem = _json_problem(self.extra, "extra")
        if problem:  # found here, not at the first save after the whole cache build
            raise ConfigError(problem)
        if not re.fullmatch(r"auto|cpu|cuda(?::\d+)?", self.device):
            # "gpu" used to train on the CPU without a word
            raise ConfigError(f"device={self.device!r}: expected auto, cpu, cuda or cuda:N")
        if self.cache_dir is not None and Path(self.cache_dir).exists() and not Path(self.cache_dir).is_dir():
            raise ConfigError(f"cache_dir={self.cache_dir!r}: is a file, not a folder", path=self.cache_dir)
        if self.cache_workers is not None and self.cache_workers < 0:
            raise ConfigError(f"cache_workers={self.cache_workers}: must be >= 0")
        for f in fields(self):  # NaN passes "< 0" and "> 0" alike: grad_clip=nan switched clipping off
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name}={value}: must be a finite number")
        for name in ("lr", "adam_eps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must be > 0")
        for name in ("weight_decay", "grad_clip", "w_organ_text", "w_abnormality", "w_identity"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 0")
        if self.readout_epochs < 0:
            raise ConfigError(f"readout_epochs={self.readout_epochs}: must be >= 0")
        if self.readout_epochs and self.objective != "ctglip":
            raise ConfigError(f"readout_epochs={self.readout_epochs}: the readout stage needs objective 'ctglip' "
                              f"(organ embeddings), not {self.objective!r}")
        if self.readout_epochs and self.w_abnormality == 0:
            # The readout fits the projection to the dictionary's finding prompts: the ablation would silently
            # train on the dictionary it is meant to leave out.
            raise ConfigError(f"readout_epochs={self.readout_epochs} with w_abnormality=0: the readout stage fits the "
                              "dictionary's finding prompts, which the no-dictionary ablation leaves out; set "
                              "readout_epochs=0")
        if not self.readout_lr > 0:
            raise ConfigError(f"readout_lr={self.readout_lr}: must be > 0")
        if not self.finding_organ_weight > 0:
            raise ConfigError(f"finding_organ_weight={self.finding_organ_weight}: must be > 0")
        if self.save_name is not None and (not self.save_name or "/" in self.save_name):
            raise ConfigError(f"save_name={self.save_name!r}: must be a non-empty name without '/'")
        if self.text_lr is not None and not self.text_lr > 0:
            raise ConfigError(f"text_lr={self.text_lr}: must be > 0 or null")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio={self.min_lr_ratio}: must be within [0, 1]")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be within [0, 1)")
        if self.objective == "ctglip" and self.w_organ_text + self.w_abnormality + self.w_identity == 0:
            raise ConfigError("w_organ_text, w_abnormality and w_identity are all 0: nothing to train")

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: Optional[str] = None) -> "TrainConfig":
        """Build from a mapping; unknown keys raise ConfigError (naming the key and the source file).

        Example:
            >>> TrainConfig.from_dict({"lr": 3e-4}).lr
            0.0003
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a JSON object of options, got {type(data).__name__}", path=source)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}{_did_you_mean(unknown[0], known)} "
                              f"(known: {', '.join(sorted(known))})", path=source)
        try:
            return cls(**dict(data))
        except ConfigError as exc:
            raise ConfigError(exc.reason, path=source) from None

    @classmethod
    def from_file(cls, path: Union[str, "os.PathLike[str]"]) -> "TrainConfig":
        """Load a JSON file (YAML too when PyYAML is installed).

        Example:
            >>> cfg = TrainConfig.from_file("configs/tiny.json")  # doctest: +SKIP
        """
        return cls.from_dict(_read_mapping(Path(path)), source=os.fspath(path))

    @classmethod
    def from_sources(cls, path: Optional[Union[str, "os.PathLike[str]"]] = None,
                     overrides: Iterable[str] = (), **kwargs: Any) -> "TrainConfig":
        """Defaults <- optional file <- keyword values <- `key=value` overrides (later wins).

        Example:
            >>> TrainConfig.from_sources(overrides=["bf16=false"]).bf16
            False
        """
        data: Dict[str, Any] = _read_mapping(Path(path)) if path is not None else {}
        data.update({k: v for k, v in kwargs.items() if v is not None})
        base = cls.from_dict(data, source=os.fspath(path) if path is not None else None)
        return base.with_overrides(overrides)

    def with_overrides(self, overrides: Iterable[str]) -> "TrainConfig":
        """Return a copy with `key=value` strings applied, each value parsed by the key's type.

        Example:
            >>> TrainConfig().with_overrides(["lr=5e-4", "text_lr=none"]).lr
            0.0005
        """
        hints = typing.get_type_hints(type(self))
        data = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r}: expected key=value")
            key, raw = item.split("=", 1)
            key = key.strip()
            if key not in hints:
                raise ConfigError(f"unknown training option {key!r} in override {item!r}"
                                  f"{_did_you_mean(key, hints)} (known: {', '.join(sorted(hints))})")
            data[key] = _parse_text(key, raw.strip(), hints[key])
        return type(self).from_dict(data)

    @property
    def loader_workers(self) -> int:
        """Workers for the cache build and the calibration read-ahead: ``cache_workers``, else ``num_workers``."""
        return self.num_workers if self.cache_workers is None else self.cache_workers

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready dict of every option."""
        return dataclasses.asdict(self)

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write as indented JSON, atomically: a kill or a full disk mid-write leaves the previous file whole."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_text_atomic(path: Union[str, "os.PathLike[str]"], text: str) -> None:
    """Write ``text`` (UTF-8) to a temporary file in the same folder, fsync it and ``os.replace`` it onto ``path``.

    Why: the run folder's JSON files are rewritten by every ``--resume``; a plain ``write_text`` truncates first,
    so a kill or ENOSPC in between left a file the next resume could not read.

    Example:
        >>> write_text_atomic("runs/x/train_config.json", "{}\\n")  # doctest: +SKIP
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_problem(value: Any, where: str) -> Optional[str]:
    """Why ``value`` cannot be written to (and read back from) JSON, naming the nested key; None when it can."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where}={value}: NaN and infinity cannot be written to JSON"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                return f"{where}: key {key!r} ({type(key).__name__}) cannot be a JSON key; quote it"
            problem = _json_problem(item, f"{where}.{key}")
            if problem:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _json_problem(item, f"{where}[{i}]")
            if problem:
                return problem
        return None
    return (f"{where}={value!r}: a {type(value).__name__} cannot be written to JSON (a YAML date or time? quote it "
            "to keep it as text)")


def _read_mapping(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise ConfigError("training config file not found", path=path)
    try:
        # utf-8-sig: Windows editors start a UTF-8 file with a BOM, which json refused ("Unexpected UTF-8 BOM")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): save the "
                          "config as UTF-8", path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror or exc}", path=path) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # optional: only for users who write YAML configs
        except ImportError:
            raise ConfigError("YAML configs need PyYAML (pip install pyyaml); or write JSON", path=path) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}", path=path) from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise ConfigError(f"expected an object of options, got {type(data).__name__}", path=path)
    return data


def _unwrap_optional(tp: Any) -> tuple:
    """(inner type, optional?) for Optional[X]."""
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Type-check a value from JSON/kwargs; ints are accepted for floats, bools never for numbers."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: null is not allowed (expected {getattr(inner, '__name__', inner)})")
    origin = typing.get_origin(inner) or inner
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected an object")
        return value
    if inner is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if inner is float:
        if isinstance(value, str):  # YAML reads "1e-3" (no decimal point) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}={value!r}: expected a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        return float(value)
    if inner is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    return value


def _did_you_mean(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _parse_text(key: str, raw: str, tp: Any) -> Any:
    """Parse the text of a `--set key=value` override by the option's declared type."""
    inner, optional = _unwrap_optional(tp)
    if optional and raw.lower() in ("none", "null", ""):
        return None
    origin = typing.get_origin(inner) or inner
    try:
        if inner is bool:
            low = raw.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if inner is int:
            return int(raw)
        if inner is float:
            return float(raw)
        if origin is dict:
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError
            return value
    except (ValueError, json.JSONDecodeError):
        name = "true/false" if inner is bool else getattr(inner, "__name__", str(inner))
        raise ConfigError(f"override {key}={raw!r}: expected {name}") from None
    return raw
