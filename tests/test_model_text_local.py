"""A local Hugging Face text tower: what transformers accepts silently and ctglip-sdk refuses or fixes.

Every case is a real folder written by ``save_pretrained(..., safe_serialization=True)`` with a tokenizer built by
the tokenizers library (``train_tokenizer``): half precision is loaded in float32, and missing tokenizer files,
weights that do not match the architecture, a tokenizer larger than the embedding table, a corrupt
model.safetensors, a non-encoder model and a tokenizer without a pad token are ConfigErrors naming the folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import ctglip_sdk as cg
from ctglip_sdk.errors import ConfigError
from ctglip_sdk.model import train_tokenizer
from test_model_encode import TINY

LINES = ["the liver is normal", "simple renal cyst", "no pleural effusion", "hepatic cyst"] * 5
TEXTS = ["simple renal cyst", "the liver"]


def _tokenizer():
    return train_tokenizer(LINES, vocab_size=120)


def _bert_folder(tmp_path: Path, name: str = "bert", *, dtype=None, mlm: bool = False, vocab_size=None,
                 tokenizer: bool = True) -> Path:
    """A tiny BertModel (or BertForMaskedLM: ``bert.``-prefixed keys) and its tokenizer, saved as a HF folder."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    tok = _tokenizer()
    conf = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      vocab_size=vocab_size or len(tok))
    torch.manual_seed(0)
    model = (BertForMaskedLM if mlm else BertModel)(conf)
    if dtype is not None:
        model = model.to(dtype)
    folder = tmp_path / name
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer:
        tok.save_pretrained(folder)
    return folder


def _create(folder: Path, **text):
    return cg.create("ctglip-tiny", overrides={**TINY, "text": {"pretrained_path": str(folder), "frozen": True,
                                                                 **text}}, seed=0)


# -- 1. half precision is loaded in float32 ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_folder_loads_in_float32_and_round_trips(tmp_path, caplog, dtype):
    folder = _bert_folder(tmp_path, dtype=dtype)
    meta = json.loads((folder / "config.json").read_text())
    assert (meta.get("dtype") or meta.get("torch_dtype")) == str(dtype).split(".")[-1]
    stored = load_file(folder / "model.safetensors")
    with caplog.at_level(logging.INFO, logger="ctglip_sdk.model.text"):
        model = _create(folder)
    assert {p.dtype for p in model.text.parameters()} == {torch.float32}
    assert [r for r in caplog.records if "loaded in float32" in r.getMessage()]
    emb = model.text.encoder.embeddings.word_embeddings.weight
    assert torch.equal(emb, stored["embeddings.word_embeddings.weight"].float())  # the half values, upcast
    before = model.encode_text(TEXTS)
    out = tmp_path / "ctglip"
    model.save_pretrained(out)
    loaded = cg.load(out)  # failed before: dtype mismatch
    np.testing.assert_array_equal(loaded.encode_text(TEXTS), before)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), k
    # a training step runs (the tower is frozen; the projection gets gradients)
    ids = model.tokenizer(TEXTS, padding=True, return_tensors="pt")
    model.train()
    model.text_proj(model.text(ids["input_ids"], ids["attention_mask"])).sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.text_proj.parameters())


def test_config_dtype_alone_is_loaded_in_float32(tmp_path):
    folder = _bert_folder(tmp_path)
    meta = json.loads((folder / "config.json").read_text())
    meta["dtype"] = "bfloat16"
    meta["torch_dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(meta))
    model = _create(folder)
    assert {p.dtype for p in model.text.parameters()} == {torch.float32}
    out = tmp_path / "ctglip"
    model.save_pretrained(out)
    np.testing.assert_array_equal(cg.load(out).encode_text(TEXTS), model.encode_text(TEXTS))


# -- 2. missing tokenizer files ----------------------------------------------------------------------------------
def test_missing_tokenizer_files_are_refused(tmp_path):
    folder = _bert_folder(tmp_path, tokenizer=False)
    with pytest.raises(ConfigError, match="no tokenizer vocabulary") as err:
        _create(folder)
    assert err.value.path == str(folder) and "tokenizer.json" in str(err.value)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(ConfigError, match=r"no tokenizer vocabulary.*found tokenizer_config.json"):
        _create(folder)
    # a vocabulary file with the special tokens only: every word would be [UNK]
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(ConfigError, match="only its 5 special tokens"):
        _create(folder)


# -- 3. weights that do not match the architecture ---------------------------------------------------------------
def test_renamed_weights_are_refused_and_masked_lm_checkpoints_still_load(tmp_path):
    folder = _bert_folder(tmp_path, mlm=True)  # keys "bert.encoder.layer.0...", "cls.predictions..."
    model = _create(folder)
    stored = load_file(folder / "model.safetensors")
    assert torch.equal(model.text.encoder.encoder.layer[1].output.dense.weight,
                       stored["bert.encoder.layer.1.output.dense.weight"])
    renamed = {k.replace("encoder.layer", "enc.lay"): v for k, v in stored.items()}
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"do not match its 'bert' architecture: 32 encoder weights are missing "
                                          r"\(e.g. encoder.layer.0.") as err:
        _create(folder)
    assert err.value.path == str(folder) and "bert.enc.lay" in str(err.value) and "pooler" not in str(err.value)


# -- 4. a tokenizer larger than the embedding table --------------------------------------------------------------
def test_tokenizer_larger_than_the_embedding_table_is_refused(tmp_path):
    n = len(_tokenizer())
    folder = _bert_folder(tmp_path, vocab_size=n - 10)
    with pytest.raises(ConfigError, match=rf"has {n} tokens but the text model embeds only {n - 10}") as err:
        _create(folder)
    assert err.value.path == str(folder)


# -- 5. a corrupt model.safetensors ------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0, 300, 0.5])
def test_corrupt_safetensors_is_a_config_error_naming_the_file(tmp_path, keep):
    folder = _bert_folder(tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(ConfigError, match="truncated or corrupt") as err:
        _create(folder)
    assert err.value.path == str(weights)


# -- 6. not a BERT-family encoder, or no pad token ---------------------------------------------------------------
def _save_with_tokenizer(model, tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    model.save_pretrained(folder, safe_serialization=True)
    _tokenizer().save_pretrained(folder)
    return folder


def test_non_encoder_models_are_refused(tmp_path):
    from transformers import GPT2Config, GPT2Model, T5Config, T5EncoderModel, T5Model

    n = len(_tokenizer())
    t5 = dict(vocab_size=n, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2)
    for model, kind in ((T5Model(T5Config(**t5)), "'t5' encoder-decoder"),
                        (T5EncoderModel(T5Config(**t5)), "'t5'"),
                        (GPT2Model(GPT2Config(vocab_size=n, n_embd=32, n_layer=1, n_head=2)), "'gpt2'")):
        folder = _save_with_tokenizer(model, tmp_path, type(model).__name__)
        with pytest.raises(ConfigError, match=rf"{kind}.*an encoder \(BERT-family.*with a pad token is required"):
            _create(folder)


def test_tokenizer_without_pad_token_is_refused(tmp_path):
    from transformers import PreTrainedTokenizerFast

    folder = _bert_folder(tmp_path, tokenizer=False)
    nopad = PreTrainedTokenizerFast(tokenizer_object=_tokenizer().backend_tokenizer, unk_token="[UNK]",
                                    cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    nopad.save_pretrained(folder)
    with pytest.raises(ConfigError, match=r"has no pad token; an encoder \(BERT-family.*pad token is required") as e:
        _create(folder)
    assert e.value.path == str(folder)


def test_a_folders_own_python_code_never_runs_even_when_answered_yes(tmp_path):
    """config.json's auto_map names a module in the folder: transformers asks "run the custom code? [y/N]"
    unless told not to trust remote code, and ran it on "y" (a review found the prompt, 2026-12-06)."""
    import subprocess
    import sys

    folder = _bert_folder(tmp_path, "evil")
    marker = tmp_path / "RAN"
    conf = json.loads((folder / "config.json").read_text())
    conf.update(model_type="evil_bert", auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                                  "AutoModel": "modeling_evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(conf))
    payload = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import BertConfig\n"
    (folder / "configuration_evil.py").write_text(payload + "class EvilConfig(BertConfig):\n    model_type = 'evil_bert'\n")
    (folder / "modeling_evil.py").write_text(payload + "from transformers import BertModel as EvilModel\n")
    script = ("import ctglip_sdk as cg, sys\nsys.path.insert(0, 'tests')\nfrom test_model_encode import TINY\n"
              "try:\n    cg.create('ctglip-tiny', overrides={**TINY, 'text': {'pretrained_path': sys.argv[1]}})\n"
              "except cg.ConfigError as e:\n    print('CONFIGERROR', e)\n")
    got = subprocess.run([sys.executable, "-c", script, str(folder)], input="y\ny\ny\n", capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert not marker.exists(), got.stdout + got.stderr
    assert "CONFIGERROR" in got.stdout and "[y/N]" not in got.stdout + got.stderr, got.stdout + got.stderr


def test_report_words_of_one_patient_never_become_tokens():
    """Trained on raw reports, the saved tokenizer held patients' names, MRNs and the institution as whole tokens
    (security review, 2026-12-06); a word must now be used by several documents (patients), and no word with
    four digits is learned."""
    common = "liver: hypodense lesion in segment seven. kidneys: no hydronephrosis. spleen normal."
    reports = [f"{common} patient zyxwvqutsr mrn 99887766 referred by dr leakyname" if i == 0 else
               f"{common} follow-up {i}" for i in range(12)]
    big = {**TINY, "text": {**TINY["text"], "vocab_size": 3000}}  # room for every whole word of the corpus
    model = cg.create("ctglip-tiny", overrides=big, corpus=reports, seed=0)
    vocab = set(model.tokenizer.get_vocab())
    for secret in ("zyxwvqutsr", "99887766", "leakyname", "mrn"):
        assert secret not in vocab
    assert "hydronephrosis" in vocab and "hypodense" in vocab  # shared words are still learned
    assert len(model.tokenizer.tokenize("zyxwvqutsr")) > 1  # and the name is still read, as pieces


def test_a_tokenizer_that_adds_no_cls_token_is_refused(tmp_path):
    """The tokenizers tutorial's pattern (no post-processor) adds no [CLS]: 'cls' pooling then read the first word
    and the text vectors changed by a cosine of 0.5 against the same weights (review, 2026-12-07)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from ctglip_sdk.model.text import load_tokenizer

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "liver", "cyst", "renal"])}
    raw = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    assert tok("liver")["input_ids"] == [5]  # really no [CLS]
    tok.save_pretrained(tmp_path / "bare")
    with pytest.raises(ConfigError, match=r"does not add its '\[CLS\]' token at the start"):
        load_tokenizer(tmp_path / "bare")
    good = _tokenizer()  # the library's own: a TemplateProcessing post-processor
    good.save_pretrained(tmp_path / "good")
    assert load_tokenizer(tmp_path / "good")("liver")["input_ids"][0] == good.cls_token_id


def test_weights_of_other_shapes_than_config_json_are_named(tmp_path):
    """A config.json edited to intermediate_size 128 over weights of 64: the error pointed at "the above report",
    which only transformers' logger had (review, 2026-12-07)."""
    folder = _bert_folder(tmp_path)
    conf = json.loads((folder / "config.json").read_text())
    conf["intermediate_size"] = 128
    (folder / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ConfigError, match=r"6 tensors differ in shape \(encoder\.layer\.0\.intermediate\.dense\.bias: "
                                          r"\(64,\) in the file, \(128,\) in config\.json"):
        _create(folder)
