"""Text tower: any BERT-family checkpoint from a local folder, or a small BERT with a WordPiece tokenizer."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterable, List, Optional

import torch
from torch import nn

from ctglip_sdk.errors import ConfigError
from ctglip_sdk.model.config import TextConfig

__all__ = ["TextTower", "train_tokenizer", "default_corpus", "load_tokenizer", "max_text_tokens"]

log = logging.getLogger(__name__)

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_TEMPLATES = ("{}", "the {}", "a CT image of the {}", "the {} on CT", "normal {}", "abnormal {}",
              "no abnormality of the {}", "the {} is unremarkable", "lesion in the {}")


#: A word of the training reports enters the tokenizer's corpus only when at least this many documents (the
#: training code passes one document per patient) use it; words with four or more digits never do.
MIN_DOCS = 3


def shared_words_only(documents: Iterable[str], min_docs: int = MIN_DOCS) -> List[str]:
    """``documents`` with every word that fewer than ``min_docs`` of them use taken out, and every word holding
    four or more digits (record and accession numbers).

    Why: a WordPiece vocabulary keeps its corpus's frequent whole words, and the tokenizer is saved with the
    model: trained on raw reports, it held patients' and physicians' names, MRNs and the institution as tokens
    (a security review, 2026-12-06), in the folder people share. Identifiers are in one patient's reports only,
    so a word must be common to several documents (patients) to be learned; the rest is still tokenised, as
    sub-word pieces.

    Example:
        >>> shared_words_only(["liver cyst Smith", "liver cyst Jones", "liver cyst 12345"], min_docs=3)
        ['liver cyst', 'liver cyst', 'liver cyst']
    """
    from tokenizers import normalizers, pre_tokenizers

    normalizer, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    split = [[w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(str(d)))] for d in documents]
    df: Dict[str, int] = {}
    for words in split:
        for w in set(words):
            df[w] = df.get(w, 0) + 1
    return [" ".join(w for w in words if df[w] >= min_docs and not _MANY_DIGITS.search(w)) for words in split]


_MANY_DIGITS = re.compile(r"\d{4}")


def train_tokenizer(corpus_lines: Iterable[str], vocab_size: int = 4096, max_length: int = 64):
    """Train a lower-casing BERT WordPiece tokenizer offline on ``corpus_lines``.

    The corpus should be the training reports plus the abnormality dictionary's phrasings, so that clinical
    words become whole tokens. Returns a ``PreTrainedTokenizerFast`` with [CLS]/[SEP] added around each text.

    Example:
        >>> tok = train_tokenizer(["simple hepatic cyst", "no hydronephrosis"], vocab_size=200)
        >>> tok("hepatic cyst")["input_ids"][0] == tok.cls_token_id
        True
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < len(_SPECIALS) + 32:
        raise ConfigError(f"vocab_size {vocab_size} is too small for a WordPiece tokenizer (need >= 37)")
    normalizer, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    lines = [str(s) for s in corpus_lines if str(s).strip()]
    if not lines:
        raise ConfigError("train_tokenizer needs a non-empty corpus of text lines")
    # The trainer numbers "##x" pieces in hash-map order and breaks count ties by id, so the same corpus gave a
    # different vocabulary on every call (tokenizers#1794), and create(seed=...) gave different weights. Listing
    # every "##x" piece up front, sorted, fixes their ids; the trainer is then deterministic. They are put back
    # as ordinary vocabulary below, so they are never matched or skipped as special tokens.
    words = (w for line in lines for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(line)))
    chars = {ch for word in words for ch in word[1:]}
    pinned = _SPECIALS + ["##" + ch for ch in sorted(chars)]
    trainer = trainers.WordPieceTrainer(vocab_size=max(vocab_size, len(pinned) + 1), special_tokens=pinned,
                                        show_progress=False)
    draft = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    draft.normalizer, draft.pre_tokenizer = normalizer, pre
    draft.train_from_iterator(lines, trainer=trainer)
    tok = Tokenizer(models.WordPiece(vocab=draft.get_vocab(), unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre
    tok.add_special_tokens(_SPECIALS)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length)


def default_corpus(dictionary: Any = None) -> List[str]:
    """Built-in corpus: organ names, synonyms and prompt templates, plus the abnormality dictionary's phrasings.

    ``dictionary`` defaults to ``AbnormalityDictionary.default()`` when ``ctglip_sdk.reports`` provides it.
    """
    from ctglip_sdk import organs

    names = set(organs.ORGANS) | set(organs.GROUPS)
    lines = [organs.display_name(n) for n in sorted(names)] + sorted(organs.SYNONYMS)
    lines += [t.format(organs.display_name(n)) for n in organs.ORGANS for t in _TEMPLATES]
    if dictionary is None:
        try:
            from ctglip_sdk.reports import AbnormalityDictionary  # type: ignore[attr-defined]

            dictionary = AbnormalityDictionary.default()
        except (ImportError, AttributeError) as exc:  # the dictionary module may not be installed yet
            log.debug("no abnormality dictionary for the tokenizer corpus: %s", exc)
    if dictionary is not None:
        for e in dictionary.findings():
            lines += [e.name, *e.synonyms, *e.positives, *e.negatives]
    return lines


#: Files that carry a tokenizer's vocabulary; without one, AutoTokenizer builds an empty vocabulary from
#: tokenizer_config.json alone and every word becomes [UNK].
_VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json + merges.txt", "spiece.model / *.model (SentencePiece)")
_ENCODER_REQUIRED = "an encoder (BERT-family: BERT, RoBERTa, DeBERTa, ELECTRA, MiniLM ...) with a pad token is required"


def _has_vocab_file(folder: Path) -> bool:
    return ((folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()
            or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())
            or any(f.is_file() for f in folder.glob("*.model")))


def load_tokenizer(folder: str | os.PathLike):
    """Load a tokenizer from a local folder only (never a hub).

    Refused (``ConfigError`` naming the folder): no vocabulary file (see ``_VOCAB_FILES``), a vocabulary of
    special tokens only, or no pad token (texts are padded to a batch).
    """
    from transformers import AutoTokenizer

    path = Path(folder)
    if path.is_dir() and not _has_vocab_file(path):
        present = sorted(f.name for f in path.iterdir()
                         if f.is_file() and any(w in f.name for w in ("token", "vocab", "merges", "special")))
        raise ConfigError(f"no tokenizer vocabulary in {folder}: none of {', '.join(_VOCAB_FILES)} is present"
                          f" (found {', '.join(present) if present else 'no tokenizer files'}); save the "
                          "tokenizer with tokenizer.save_pretrained(folder) next to the model", path=folder)
    try:
        tok = AutoTokenizer.from_pretrained(os.fspath(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a tokenizer from {folder}: {exc}", path=folder) from None
    specials = len(set(tok.all_special_tokens))
    if len(tok) <= specials:
        raise ConfigError(f"the tokenizer in {folder} has {len(tok)} tokens, only its {specials} special tokens: "
                          "its vocabulary file is missing or empty, so every word would become the unknown token",
                          path=folder)
    if tok.pad_token is None:
        raise ConfigError(f"the tokenizer in {folder} has no pad token; {_ENCODER_REQUIRED}", path=folder)
    start = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    if start is not None:
        # A tokenizer built without a post-processor (the `tokenizers` tutorial's pattern) adds no [CLS]/<s>:
        # "cls" pooling then reads the first word and the encoder sees inputs unlike its pre-training.
        first = tok("liver")["input_ids"][:1]
        if first != [start]:
            raise ConfigError(f"the tokenizer in {folder} does not add its {tok.cls_token or tok.bos_token!r} token at "
                              "the start of a text (no post-processor); save it with one (e.g. tokenizers' "
                              "TemplateProcessing) as the encoder was pre-trained", path=folder)
    return tok


#: What transformers reads as a local folder's weights with ``use_safetensors=True`` (no variant), in its order:
#: the file config.json's ``transformers_weights`` names, else model.safetensors, else the index's shards.
_SAFE_WEIGHTS, _SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
_NEVER_UNPICKLED = ("pickled weights (pytorch_model.bin, *.pt ...) are never loaded: unpickling can run code. Convert "
                    "once with model.save_pretrained(folder, safe_serialization=True) in a trusted environment")


def _inside(folder: Path, name: Any, where: str, what: str) -> Path:
    """``folder / name`` for a relative file name that stays in the folder (no absolute path, no ``..``).

    Lexical on purpose: a Hugging Face cache snapshot's files are symlinks into ../../blobs, and they are fine.
    """
    parts = PurePosixPath(name).parts if isinstance(name, str) else ()
    if not parts or os.path.isabs(name) or PurePosixPath(name).is_absolute() or ".." in parts:
        raise ConfigError(f"{where} names {name!r} as {what}: only a file inside the text model folder is read",
                          path=folder)
    return folder / name


def _check_index(folder: Path, index: Path) -> None:
    """Every shard a safetensors index maps weights to is a *.safetensors file inside ``folder``.

    Why: transformers opens each shard by its suffix, so an index whose weight_map names a ``.bin`` file made it
    torch.load a pickle although the folder had a *.safetensors file.
    """
    import json

    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the safetensors index: {exc}", path=index) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConfigError("the safetensors index has no 'weight_map' object", path=index)
    shards: List[str] = []
    for shard in weight_map.values():
        if not isinstance(shard, str):
            raise ConfigError(f"the safetensors index maps a weight to {shard!r}, not a file name", path=index)
        if shard not in shards:
            shards.append(shard)
    for shard in shards:
        # case-sensitive, as transformers tests the suffix: "W.SAFETENSORS" would be torch.load-ed
        if not shard.endswith(".safetensors"):
            raise ConfigError(f"the safetensors index maps weights to {shard!r}, not a *.safetensors file; "
                              + _NEVER_UNPICKLED, path=index)
        if not _inside(folder, shard, index.name, "a weights shard").is_file():
            raise ConfigError(f"the safetensors index maps weights to {shard!r}, which is missing", path=index)


def _check_weight_files(folder: Path) -> None:
    """Refuse a folder unless every weights file transformers would open is safetensors; nothing is opened but
    config.json and a safetensors index (JSON)."""
    import json

    try:
        declared = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the text model's config.json: {exc}", path=folder / "config.json") from None
    explicit = declared.get("transformers_weights") if isinstance(declared, dict) else None
    if explicit is not None:
        # transformers itself also accepts "adapter_model.bin" here, a pickle
        if not isinstance(explicit, str) or not explicit.endswith((".safetensors", ".safetensors.index.json")):
            raise ConfigError(f"config.json 'transformers_weights' names {explicit!r}, not a *.safetensors file or "
                              "index; " + _NEVER_UNPICKLED, path=folder / "config.json")
        target = _inside(folder, explicit, "config.json 'transformers_weights'", "the weights file")
        if not target.is_file():
            raise ConfigError(f"config.json 'transformers_weights' names {explicit!r}, which is missing",
                              path=folder)
    elif (folder / _SAFE_WEIGHTS).is_file():
        return
    elif (folder / _SAFE_INDEX).is_file():
        target = folder / _SAFE_INDEX
    else:
        raise ConfigError(f"text checkpoint has no {_SAFE_WEIGHTS} (or {_SAFE_INDEX} with *.safetensors shards); "
                          + _NEVER_UNPICKLED, path=folder)
    if target.name.endswith(".index.json"):
        _check_index(folder, target)


def _check_local(path: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError("TextConfig.pretrained_path must be a local folder written by save_pretrained() "
                          "(config.json, model.safetensors, tokenizer files); nothing is downloaded. Pass the "
                          "folder of your clinical BERT, or leave pretrained_path null to build a small BERT",
                          path=folder)
    _check_weight_files(folder)  # before the tokenizer or any weights are opened
    return folder


def max_text_tokens(encoder: Any) -> Optional[int]:
    """The longest token sequence (special tokens included) a Hugging Face encoder can embed, or None if it
    declares no limit.

    Absolute position embeddings have ``max_position_embeddings`` rows; RoBERTa-style models number positions
    from ``padding_idx + 1``, so two of their rows are never reachable (514 rows, 512 tokens).
    """
    rows = getattr(getattr(encoder, "config", None), "max_position_embeddings", None)
    if not isinstance(rows, int) or isinstance(rows, bool):
        return None
    table = getattr(getattr(encoder, "embeddings", None), "position_embeddings", None)
    pad = getattr(table, "padding_idx", None)
    return rows - (int(pad) + 1 if isinstance(pad, int) else 0)


def _stored_dtypes(folder: Path) -> set:
    """The dtypes of the tensors in the folder's *.safetensors files (headers only); a truncated or corrupt
    file is a ConfigError naming it (transformers would raise a raw SafetensorError)."""
    from safetensors import safe_open

    dtypes = set()
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(os.fspath(file), framework="pt") as f:
                dtypes |= {str(f.get_slice(k).get_dtype()) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError; the message says which
            raise ConfigError(f"cannot read the text model weights (truncated or corrupt safetensors file?): "
                              f"{type(exc).__name__}: {exc}", path=file) from None
    return dtypes


def _is_ignorable_missing(key: str) -> bool:
    # The pooler is dropped anyway (we pool ourselves); position_ids-like buffers are rebuilt by the model.
    return "pooler" in key.split(".") or key.endswith(("position_ids", "token_type_ids"))


def _load_local(folder: Path, vocab_size: int):
    """Load a local BERT-family encoder in float32, refusing what transformers would accept silently."""
    import json

    from transformers import AutoConfig, AutoModel

    dtypes = _stored_dtypes(folder)
    try:
        declared = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the text model's config.json: {exc}", path=folder / "config.json") from None
    try:
        hf = AutoConfig.from_pretrained(os.fspath(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot load the text model config: {exc}", path=folder) from None
    if getattr(hf, "is_encoder_decoder", False) or getattr(hf, "is_decoder", False):
        raise ConfigError(f"the text model in {folder} is a {hf.model_type!r} "
                          f"{'encoder-decoder' if hf.is_encoder_decoder else 'decoder'}; {_ENCODER_REQUIRED}",
                          path=folder)
    try:
        # float32 always: a float16/bfloat16 folder ("dtype"/"torch_dtype" in config.json, or half weights)
        # otherwise loads in half precision, and the saved CT-GLIP folder no longer loads or trains.
        # trust_remote_code=False: a folder's own Python (config "auto_map") is never run, not even on a "y"
        # typed at transformers' prompt (docs/security.md)
        model, info = AutoModel.from_pretrained(os.fspath(folder), local_files_only=True, use_safetensors=True,
                                                trust_remote_code=False, dtype=torch.float32,
                                                output_loading_info=True,
                                                # mismatched shapes are listed below and refused; raised
                                                # here, their names only reached transformers' logger
                                                ignore_mismatched_sizes=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the text model: {exc}", path=folder) from None
    except Exception as exc:  # noqa: BLE001 - shape mismatches and the like, raised with various types
        raise ConfigError(f"cannot load the text model: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300] if str(exc) else ''}", path=folder) from None
    table = getattr(getattr(model, "embeddings", None), "word_embeddings", None)
    if not isinstance(table, nn.Embedding):
        raise ConfigError(f"the text model in {folder} ({type(model).__name__}, model_type {hf.model_type!r}) "
                          f"is not a BERT-style encoder; {_ENCODER_REQUIRED}", path=folder)
    missing = sorted(k for k in info.get("missing_keys", ()) if not _is_ignorable_missing(k))
    if missing:
        unexpected = sorted(info.get("unexpected_keys", ()))
        raise ConfigError(f"the weights in {folder} do not match its {hf.model_type!r} architecture: "
                          f"{len(missing)} encoder weights are missing (e.g. {', '.join(missing[:4])})"
                          + (f"; the file has unexpected keys instead (e.g. {', '.join(unexpected[:4])})"
                             if unexpected else "")
                          + ". transformers would initialise them randomly; re-save the model with "
                            "save_pretrained()", path=folder)
    mismatched = sorted(info.get("mismatched_keys", ()), key=lambda m: str(m[0]))
    if mismatched:
        shown = "; ".join(f"{m[0]}: {tuple(m[1])} in the file, {tuple(m[2])} in config.json"
                          for m in mismatched[:4] if len(m) >= 3)
        raise ConfigError(f"the weights in {folder} do not fit its config.json: {len(mismatched)} tensors differ in "
                          f"shape ({shown}); the config was edited or belongs to another model", path=folder)
    half = sorted(d for d in dtypes if d.upper() in ("F16", "BF16", "FLOAT16", "BFLOAT16"))
    stated = declared.get("dtype") or declared.get("torch_dtype")
    if half or stated not in (None, "float32"):
        log.info("text model in %s is stored as %s; loaded in float32", folder,
                 ", ".join(half) if half else stated)
    rows = table.num_embeddings
    if vocab_size > rows:
        raise ConfigError(f"the tokenizer in {folder} has {vocab_size} tokens but the text model embeds only "
                          f"{rows} (vocab_size): token ids past the table would fail at the first text; use the "
                          "tokenizer the model was trained with", path=folder)
    return model


class TextTower(nn.Module):
    """A Hugging Face encoder plus pooling; ``forward(input_ids, attention_mask) -> [B, hidden]``.

    Built from (in order of precedence) a saved HF config dict (loading a CT-GLIP folder; weights come from
    its model.safetensors), a local pretrained folder, or the BertConfig-style spec of ``cfg``.
    """

    def __init__(self, cfg: TextConfig, vocab_size: int, hf_config: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, BertConfig, BertModel

        self.cfg = cfg
        if hf_config is not None:
            conf = dict(hf_config)
            model_type = conf.pop("model_type", "bert")
            try:
                hf = AutoConfig.for_model(model_type, **conf)
            except (KeyError, ValueError) as exc:
                raise ConfigError(f"unsupported text model type {model_type!r}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - transformers' field validators raise their own types
                raise ConfigError(f"text_model_config is invalid for a {model_type!r} model: "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[-1].strip()[:200]}") from None
            try:
                model = AutoModel.from_config(hf)
            except Exception as exc:  # noqa: BLE001 - transformers validates settings with several error types
                raise ConfigError(f"text_model_config cannot build a {model_type!r} model: "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        elif cfg.pretrained_path:
            model = _load_local(_check_local(cfg.pretrained_path), vocab_size)
        else:
            hf = BertConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                            num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                            max_position_embeddings=max(cfg.max_length, 8))
            model = BertModel(hf, add_pooling_layer=False)
        limit = max_text_tokens(model)
        if limit is not None and cfg.max_length > limit:
            # Texts are cut to text.max_length tokens; longer than the position table, the first long report
            # fails deep inside torch ("expanded size ... must match", "index out of range"). Refused here, when
            # the config is built or a folder loaded, with the two numbers (load_pretrained adds the folder).
            source = f"the text model in {cfg.pretrained_path}" if cfg.pretrained_path and hf_config is None \
                else "the text model (text_model_config)"
            raise ConfigError(f"text.max_length {cfg.max_length} exceeds the {limit} tokens {source} can embed "
                              f"(max_position_embeddings {model.config.max_position_embeddings}); set "
                              f"text.max_length to {limit} or less")
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # we pool ourselves (cls/mean); an unused pooler only bloats the checkpoint
        self.encoder = model
        self.hidden_size = int(model.config.hidden_size)
        if cfg.frozen:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> "TextTower":
        super().train(mode)
        if self.cfg.frozen:
            self.encoder.eval()  # a frozen tower never runs dropout
        return self

    def hf_config_dict(self) -> Dict[str, Any]:
        """The encoder's HF config as a dict (saved in the model folder so loading needs no original folder)."""
        d = self.encoder.config.to_dict()
        for k in ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype"):
            d.pop(k, None)
        return d

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.cfg.pooling == "cls":
            return out[:, 0]
        m = attention_mask.unsqueeze(-1).to(out.dtype)
        return (out * m).sum(1) / m.sum(1).clamp_min(1.0)
