"""Text tower: any BERT-family checkpoint from a local folder, or a small BERT with a WordPiece tokenizer."""

from __future__ import annotations

import logging
import os
from pathlib import Path
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


def load_tokenizer(folder: str | os.PathLike):
    """Load a tokenizer from a local folder only (never a hub)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(os.fspath(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a tokenizer from {folder}: {exc}", path=folder) from None


def _check_local(path: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError("TextConfig.pretrained_path must be a local folder written by save_pretrained() "
                          "(config.json, model.safetensors, tokenizer files); nothing is downloaded. Pass the "
                          "folder of your clinical BERT, or leave pretrained_path null to build a small BERT",
                          path=folder)
    if not any(folder.glob("*.safetensors")):
        raise ConfigError("text checkpoint has no *.safetensors weights; pickled weights (pytorch_model.bin) "
                          "are never loaded. Convert once with model.save_pretrained(folder, "
                          "safe_serialization=True) in a trusted environment", path=folder)
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
            folder = _check_local(cfg.pretrained_path)
            try:
                model = AutoModel.from_pretrained(os.fspath(folder), local_files_only=True, use_safetensors=True)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot load the text model: {exc}", path=folder) from None
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
