"""Model folders: bit-exact save/load, strict loading errors, refused pickles, a local Hugging Face text tower."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import ctglip_sdk as cg
from ctglip_sdk.errors import CheckpointError, ConfigError
from ctglip_sdk.model import TextConfig, train_tokenizer
from test_model_encode import TINY, make_phantom


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = cg.create("ctglip-tiny", overrides=TINY, seed=0, corpus=["simple hepatic cyst", "no hydronephrosis"])
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(folder)
    return model, folder


def _copy(folder: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def test_save_load_round_trip_is_bit_exact(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["schema_version"] == 1 and "torch" in meta["library_versions"]
    assert meta["config"]["preprocess"]["spacing"] == [4.0, 4.0, 4.0]
    loaded = cg.load(folder)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config == model.config and loaded.config_hash == model.config_hash
    assert loaded.weights_hash() == model.weights_hash()
    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    vol, seg = make_phantom()
    np.testing.assert_array_equal(loaded.encode_organs(vol, seg).vectors, model.encode_organs(vol, seg).vectors)
    texts = ["simple hepatic cyst", "no hydronephrosis", "liver"]
    np.testing.assert_array_equal(loaded.encode_text(texts), model.encode_text(texts))


def _rewrite(folder: Path, change) -> None:
    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, folder / "model.safetensors")


@pytest.mark.parametrize("breakage,message", [
    (lambda f: _rewrite(f, lambda s: s.pop("logit_scale")), "missing keys.*logit_scale"),
    (lambda f: _rewrite(f, lambda s: s.update(extra_head=torch.zeros(3))), "unexpected keys.*extra_head"),
    (lambda f: _rewrite(f, lambda s: s.update({"vision_proj.weight": torch.zeros(16, 5)})),
     r"shape mismatch for vision_proj.weight: checkpoint \(16, 5\)"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-100]),
     "truncated or corrupt"),
    (lambda f: (f / "config.json").write_text(
        json.dumps({**json.loads((f / "config.json").read_text()), "schema_version": 99})), "schema version 99"),
    (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
    (lambda f: (f / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda f: __import__("shutil").rmtree(f / "tokenizer"), "tokenizer/ folder is missing"),
])
def test_strict_loading_names_the_problem(saved, tmp_path, breakage, message):
    _, folder = saved
    broken = _copy(folder, tmp_path)
    breakage(broken)
    with pytest.raises(CheckpointError, match=message):
        cg.load(broken)


def test_replaced_weights_fail_the_checksum(saved, tmp_path):
    _, folder = saved
    broken = _copy(folder, tmp_path)
    _rewrite(broken, lambda s: s["logit_scale"].fill_(1.0))
    with pytest.raises(CheckpointError, match="checksum"):
        cg.load(broken)


class _Payload:
    """Unpickling this object creates the marker file: proof that a pickle would have run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_in_a_model_folder_is_refused_and_never_opened(saved, tmp_path):
    _, folder = saved
    evil = _copy(folder, tmp_path)
    marker = tmp_path / "pwned.txt"
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*pickle"):
        cg.load(evil)
    assert not marker.exists()
    # the payload is real: unpickling a copy does run it
    probe = tmp_path / "probe.txt"
    pickle.loads(pickle.dumps(_Payload(probe))).close()
    assert probe.exists()


def _hf_folder(tmp_path: Path) -> Path:
    from transformers import BertConfig, BertModel

    tok = train_tokenizer(["the liver is normal", "simple renal cyst", "no pleural effusion"] * 5, vocab_size=120)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=48, max_position_embeddings=40))
    folder = tmp_path / "tiny-clinical-bert"
    bert.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_text_tower_from_a_local_folder(tmp_path):
    import shutil

    folder = _hf_folder(tmp_path)
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(folder, local_files_only=True)
    # max_length 40: the folder's BERT has 40 positions (the default 64 is refused, see below).
    text = {"pretrained_path": str(folder), "frozen": True, "pooling": "cls", "max_length": 40}
    model = cg.create("ctglip-tiny", overrides={**TINY, "text": text}, seed=0)
    emb = reference.embeddings.word_embeddings.weight
    assert torch.equal(model.text.encoder.embeddings.word_embeddings.weight, emb)
    assert not any(p.requires_grad for p in model.text.parameters())
    model.train()
    assert not model.text.encoder.training  # frozen tower stays in eval mode
    model.eval()
    before = model.encode_text(["simple renal cyst", "the liver"])
    assert before.shape == (2, 16)
    out = tmp_path / "ctglip"
    model.save_pretrained(out)
    shutil.rmtree(folder)  # a saved CT-GLIP model does not need the original text folder
    np.testing.assert_array_equal(cg.load(out).encode_text(["simple renal cyst", "the liver"]), before)


def test_missing_or_pickled_text_checkpoint_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="pretrained_path"):
        cg.create("ctglip-tiny", overrides={**TINY, "text": {"pretrained_path": str(tmp_path / "nope")}})
    folder = _hf_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "text-pwned.txt"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ConfigError, match="never loaded"):
        cg.create("ctglip-tiny", overrides={**TINY, "text": {"pretrained_path": str(folder)}})
    assert not marker.exists()
    assert TextConfig(pretrained_path=str(folder)).pretrained_path == str(folder)


def test_registered_model_folder_loads_by_name(saved):
    model, folder = saved
    cfg = json.loads((folder / "config.json").read_text())["config"]
    renamed = folder.parent / "renamed"
    if not renamed.exists():
        import shutil

        shutil.copytree(folder, renamed)
        meta = json.loads((renamed / "config.json").read_text())
        meta["config"]["name"] = "ctglip-test-registered"
        (renamed / "config.json").write_text(json.dumps(meta))
    name = cg.register_model_config(renamed)
    assert name == "ctglip-test-registered" and name in cg.list_models()
    info = cg.model.model_info(name)
    assert info["has_weights"] and info["embed_dim"] == cfg["projection"]["embed_dim"]
    loaded = cg.load(name)
    assert torch.equal(loaded.logit_scale, model.logit_scale)
    with pytest.raises(CheckpointError, match="without weights"):
        cg.load("ctglip-vit")


def test_a_replaced_tokenizer_or_a_bad_text_config_is_a_checkpoint_error(saved, tmp_path):
    """The tokenizer decides the text vectors as much as the weights; a text config transformers rejects is
    reported as the folder's problem, not as a raw transformers exception."""
    _, folder = saved
    broken = _copy(folder, tmp_path)
    vocab = broken / "tokenizer" / "tokenizer.json"
    vocab.write_text(vocab.read_text().replace('"hepatic"', '"hepatik"', 1))
    with pytest.raises(CheckpointError, match="tokenizer/ does not match the checksum"):
        cg.load(broken)
    for change, message in ((dict(hidden_size=33), "cannot build a 'bert' model"),
                            (dict(num_hidden_layers="one"), "num_hidden_layers")):
        bad = tmp_path / f"bad{len(message)}"
        __import__("shutil").copytree(folder, bad)
        meta = json.loads((bad / "config.json").read_text())
        meta["text_model_config"].update(change)
        (bad / "config.json").write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match="'text_model_config' does not match its checksum"):
            cg.load(bad)  # an edit is caught by the checksum first (since 2026-12-07) ...
        meta.pop("text_model_config_sha256")  # ... and in a folder without one, by building the model
        (bad / "config.json").write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match=message):
            cg.load(bad)


# -- text.max_length against the text model's position table ---------------------------------------------------
def test_a_max_length_longer_than_the_position_table_is_refused_at_load(saved, tmp_path):
    """It loaded, then failed at the first long text deep inside torch ("expanded size ... must match")."""
    _, folder = saved
    broken = _copy(folder, tmp_path)
    meta = json.loads((broken / "config.json").read_text())
    positions = meta["text_model_config"]["max_position_embeddings"]
    assert meta["config"]["text"]["max_length"] == positions  # the saved one fits exactly and loads (above)
    # Refused even though this tokenizer would cut texts at its own model_max_length: the config must say what
    # the model reads (docs/model.md), and a replaced tokenizer would not cut.
    meta["config"]["text"]["max_length"] = positions + 1
    meta.pop("config_sha256")  # a folder saved before the checksum (with it, the edit is refused first: below)
    (broken / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        cg.load(broken)
    text = str(err.value)
    assert err.value.path == str(broken) and text.startswith(f"{broken}: config.json: ")
    assert f"text.max_length {positions + 1} exceeds" in text and f"max_position_embeddings {positions}" in text


def _roberta_folder(tmp_path: Path, positions: int) -> Path:
    from transformers import RobertaConfig, RobertaModel

    tok = train_tokenizer(["the liver is normal", "simple renal cyst"] * 5, vocab_size=120)
    model = RobertaModel(RobertaConfig(vocab_size=len(tok), hidden_size=24, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=48, pad_token_id=1,
                                       max_position_embeddings=positions), add_pooling_layer=False)
    folder = tmp_path / "tiny-roberta"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_max_length_longer_than_the_position_table_is_refused_when_built(tmp_path):
    """A model built from a config (a local text folder, or a text_model_config dict) is checked too."""
    from ctglip_sdk.model.modeling import CTGlipModel
    from ctglip_sdk.model.text import max_text_tokens

    bert = _hf_folder(tmp_path)  # max_position_embeddings 40
    text = {"pretrained_path": str(bert), "max_length": 41}
    with pytest.raises(ConfigError, match=rf"text.max_length 41 exceeds the 40 tokens the text model in {bert} "
                                          r"can embed \(max_position_embeddings 40\)"):
        cg.create("ctglip-tiny", overrides={**TINY, "text": text})
    fits = cg.create("ctglip-tiny", overrides={**TINY, "text": {**text, "max_length": 40}}, seed=0)
    assert max_text_tokens(fits.text.encoder) == 40
    long_text = " ".join(["simple renal cyst"] * 30)  # more tokens than 40: cut, and encoded without error
    assert fits.encode_text([long_text]).shape == (1, 16)
    # RoBERTa numbers positions after its padding index (1, as in roberta-base): 42 rows hold 40 tokens.
    roberta = _roberta_folder(tmp_path, positions=42)
    model = cg.create("ctglip-tiny", overrides={**TINY, "text": {"pretrained_path": str(roberta), "max_length": 40}})
    assert max_text_tokens(model.text.encoder) == 40 and model.encode_text([long_text]).shape == (1, 16)
    with pytest.raises(ConfigError, match=r"41 exceeds the 40 tokens .* \(max_position_embeddings 42\)"):
        cg.create("ctglip-tiny", overrides={**TINY, "text": {"pretrained_path": str(roberta), "max_length": 41}})
    # The text_model_config path that loading uses, called directly.
    cfg = cg.model.CTGlipConfig.from_dict({**fits.config.to_dict(), "text": {**fits.config.text.to_dict(),
                                                                            "pretrained_path": None}})
    hf = {**fits.text.hf_config_dict(), "max_position_embeddings": 16}
    with pytest.raises(ConfigError, match=r"text.max_length 40 exceeds the 16 tokens the text model "
                                          r"\(text_model_config\)"):
        CTGlipModel(cfg, fits.tokenizer, hf_text_config=hf)


def test_a_model_with_tied_weights_saves_and_loads_bit_exact(tmp_path):
    """ctglip-cnn's MONAI DynUNet reaches some blocks twice (skip_layers): safetensors refused the shared memory,
    so the registered CNN could be neither saved nor trained (review, 2026-12-06)."""
    import torch

    import ctglip_sdk as cg

    model = cg.create("ctglip-cnn", seed=0)
    sd = model.state_dict()
    ptrs = [v.untyped_storage().data_ptr() for v in sd.values() if v.numel()]
    assert len(ptrs) > len(set(ptrs))  # the architecture does tie tensors: the case this test is about
    model.save_pretrained(tmp_path / "cnn")
    again = cg.load(tmp_path / "cnn").state_dict()
    assert sd.keys() == again.keys() and all(torch.equal(sd[k], again[k]) for k in sd)


def test_an_edited_config_is_refused_but_a_renamed_copy_loads(saved, tmp_path):
    """Editing pooling in config.json used to change every text vector and load without a word (review,
    2026-12-07); a renamed copy (name, description) is how a model is registered under another name."""
    model, folder = saved
    for edit in (lambda m: m["config"]["text"].update(pooling="cls" if m["config"]["text"]["pooling"] != "cls"
                                                      else "mean"),
                 lambda m: m["text_model_config"].update(layer_norm_eps=1e-3)):
        bad = _copy(folder, tmp_path / f"e{len(list(tmp_path.iterdir()))}")
        meta = json.loads((bad / "config.json").read_text())
        edit(meta)
        (bad / "config.json").write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match="does not match its checksum"):
            cg.load(bad)
    renamed = _copy(folder, tmp_path / "renamed")
    meta = json.loads((renamed / "config.json").read_text())
    meta["config"].update(name="my-copy", description="renamed")
    (renamed / "config.json").write_text(json.dumps(meta))
    assert cg.load(renamed).name == "my-copy"


def test_a_folder_given_with_a_tilde_is_the_home_folder(saved, tmp_path, monkeypatch):
    model, _ = saved
    monkeypatch.setenv("HOME", str(tmp_path))
    model.save_pretrained("~/models/tiny")
    assert (tmp_path / "models" / "tiny" / "config.json").is_file() and not Path("~").exists()
    assert torch.equal(cg.load("~/models/tiny").logit_scale, model.logit_scale)
