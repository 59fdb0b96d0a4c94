"""Model review 27: what a local text tower may make transformers unpickle, and save_pretrained over a folder.

Every case writes real folders: a tiny BERT saved by transformers (``_bert_folder``), tiny CT-GLIP models saved
by ``save_pretrained``, and the bundled model. Each test failed before its fix:

1. a safetensors index (or config.json ``transformers_weights``) that sends transformers to a ``.bin`` file, or
   to a file outside the folder, is refused before anything is opened;
2. saving over a folder replaces tokenizer/ as a whole (an older tokenizer's files stayed and broke loading);
3. a save that fails (a value JSON cannot hold, the tokenizer, a rename) leaves the previous model loadable and
   no temporary files, and every failure is a CheckpointError;
4. registering a folder whose name and config equal a registered model's, but whose weights differ, needs
   ``overwrite=True``;
5. a model cast to another dtype than float32 is refused by save_pretrained (cg.load would refuse the folder).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import ctglip_sdk as cg
from ctglip_sdk.errors import CheckpointError, ConfigError
from ctglip_sdk.model import registry
from test_model_checkpoint import _Payload
from test_model_encode import TINY
from test_model_text_local import TEXTS, _bert_folder, _create

SHARD = "pytorch_model-00001-of-00001.bin"


@pytest.fixture
def torch_loads(monkeypatch):
    """Every path torch.load is asked to read while the test runs (it must stay empty)."""
    calls = []
    real = torch.load

    def spy(f, *args, **kwargs):
        calls.append(os.fspath(f) if isinstance(f, (str, os.PathLike)) else repr(f))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def _index_folder(tmp_path: Path, shard_bytes=None) -> Path:
    """A BERT folder whose weights sit in a pickle shard that model.safetensors.index.json maps every key to,
    next to an unrelated *.safetensors file (what passed the old "any *.safetensors" check)."""
    folder = _bert_folder(tmp_path)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    if shard_bytes is None:
        torch.save(state, folder / SHARD)  # loads even with weights_only=True: the old code created the model
    else:
        (folder / SHARD).write_bytes(shard_bytes)
    save_file({"x": torch.zeros(1)}, folder / "extra.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: SHARD for k in state}}))
    return folder


# -- 1. a local text tower: safetensors only, whatever an index or config.json names -----------------------------
def test_an_index_mapping_weights_to_a_pickle_shard_is_refused_unopened(tmp_path, torch_loads):
    folder = _index_folder(tmp_path)
    with pytest.raises(ConfigError, match=f"maps weights to '{SHARD}', not a \\*.safetensors file"):
        _create(folder)
    assert torch_loads == []


def test_a_pickle_payload_behind_an_index_never_runs(tmp_path, torch_loads):
    marker = tmp_path / "pwned.txt"
    folder = _index_folder(tmp_path, pickle.dumps(_Payload(marker)))
    with pytest.raises(ConfigError, match="never loaded"):
        _create(folder)
    assert torch_loads == [] and not marker.exists()


def test_config_transformers_weights_naming_a_pickle_is_refused(tmp_path, torch_loads):
    """transformers reads the file config.json's "transformers_weights" names, and accepts adapter_model.bin."""
    folder = _bert_folder(tmp_path)
    torch.save(load_file(folder / "model.safetensors"), folder / "adapter_model.bin")
    (folder / "model.safetensors").unlink()
    save_file({"x": torch.zeros(1)}, folder / "extra.safetensors")
    conf = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**conf, "transformers_weights": "adapter_model.bin"}))
    with pytest.raises(ConfigError, match="'transformers_weights' names 'adapter_model.bin'"):
        _create(folder)
    assert torch_loads == []


@pytest.mark.parametrize("shard", ["../outside/model.safetensors", "/tmp/elsewhere.safetensors"])
def test_an_index_shard_outside_the_folder_is_refused(tmp_path, shard):
    folder = _bert_folder(tmp_path)
    state = load_file(folder / "model.safetensors")
    (tmp_path / "outside").mkdir()
    shutil.move(folder / "model.safetensors", tmp_path / "outside" / "model.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: shard for k in state}}))
    with pytest.raises(ConfigError, match="only a file inside the text model folder is read"):
        _create(folder)


def test_a_sharded_safetensors_folder_still_loads(tmp_path):
    from transformers import AutoModel

    folder = _bert_folder(tmp_path)
    model = AutoModel.from_pretrained(folder, local_files_only=True)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(folder / name, sharded / name)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert not (sharded / "model.safetensors").exists() and len(set(index["weight_map"].values())) > 1
    built = _create(sharded)
    assert torch.equal(built.text.encoder.embeddings.word_embeddings.weight,
                       model.embeddings.word_embeddings.weight)


# -- 2.-5. save_pretrained ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    """Two tiny models of one config (seeds 0 and 1): A is saved first, B over it."""
    a = cg.create("ctglip-tiny", overrides={**TINY, "name": "review27-tiny"}, seed=0)
    b = cg.create("ctglip-tiny", overrides={**TINY, "name": "review27-tiny"}, seed=1)
    assert a.weights_hash() != b.weights_hash()
    return a, b


def _listing(folder: Path):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _is(loaded, model) -> bool:
    return loaded.weights_hash() == model.weights_hash() and np.array_equal(loaded.encode_text(TEXTS),
                                                                          model.encode_text(TEXTS))


@pytest.mark.parametrize("stale", [
    # what an earlier save of a RoBERTa-tower model (transformers 4.x) left in tokenizer/
    {"special_tokens_map.json": json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                            "sep_token": "</s>", "pad_token": "<pad>", "cls_token": "<s>",
                                            "mask_token": "<mask>"}),
     "vocab.json": json.dumps({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "liver": 4}),
     "merges.txt": "#version: 0.2\n"},
    {"added_tokens.json": json.dumps({"hepatic": 299, "zzz": 300})},
], ids=["roberta-files", "added-tokens"])
def test_saving_over_a_folder_replaces_tokenizer_as_a_whole(models, tmp_path, stale):
    _, b = models
    fresh = tmp_path / "fresh"
    b.save_pretrained(fresh)
    folder = tmp_path / "m"
    (folder / "tokenizer").mkdir(parents=True)
    for name, text in stale.items():
        (folder / "tokenizer" / name).write_text(text)
    b.save_pretrained(folder)
    assert _listing(folder / "tokenizer") == _listing(fresh / "tokenizer")
    assert _is(cg.load(folder), b)


def test_numpy_values_in_calibration_source_are_saved_as_json_numbers(models, tmp_path):
    a, b = models
    folder = tmp_path / "m"
    a.save_pretrained(folder)
    b2 = copy.deepcopy(b)
    b2.calibration = {"liver_cyst": 0.5}
    b2.calibration_source = {"n_studies": np.int64(3), "share": np.float32(0.5), "ids": np.array([1, 2])}
    b2.save_pretrained(folder)
    loaded = cg.load(folder)
    assert loaded.calibration_source == {"n_studies": 3, "share": 0.5, "ids": [1, 2]}
    assert type(loaded.calibration_source["n_studies"]) is int and _is(loaded, b2)


def _failing_saves(b, monkeypatch, folder: Path):
    """Ways a save of ``b`` into ``folder`` fails: a value JSON cannot hold, the tokenizer, the last rename."""
    def not_json():
        b.calibration, b.calibration_source = {"liver_cyst": 0.5}, {"x": object()}

    def tokenizer():
        def boom(*args, **kwargs):
            raise OSError("disk full (simulated)")

        monkeypatch.setattr(b.tokenizer, "save_pretrained", boom)

    def last_rename():
        real = os.rename
        failed = []

        def rename(src, dst):
            if Path(dst) == folder / "config.json" and ".previous" not in Path(src).parts and not failed:
                failed.append(dst)
                raise OSError("rename failed (simulated)")
            return real(src, dst)

        monkeypatch.setattr(os, "rename", rename)

    return {"not-json": (not_json, "calibration_source.x: a 'object' value cannot be written"),
            "tokenizer": (tokenizer, "cannot write the tokenizer: OSError: disk full"),
            "last-rename": (last_rename, "rename failed")}


@pytest.mark.parametrize("how", ["not-json", "tokenizer", "last-rename"])
def test_a_failed_save_over_a_model_leaves_it_loadable_and_no_temp_files(models, tmp_path, monkeypatch, how):
    a, b = models
    b = copy.deepcopy(b)
    folder = tmp_path / "m"
    a.save_pretrained(folder)
    (folder / "README.md").write_text("my notes\n")  # files of the user's stay
    before = _listing(folder)
    breakage, message = _failing_saves(b, monkeypatch, folder)[how]
    breakage()
    with pytest.raises(CheckpointError, match=message):
        b.save_pretrained(folder)
    monkeypatch.undo()
    assert _listing(folder) == before and sorted(os.listdir(tmp_path)) == ["m"]
    assert _is(cg.load(folder), a)


@pytest.mark.parametrize("how", ["not-json", "tokenizer", "last-rename"])
def test_a_failed_first_save_leaves_no_folder(models, tmp_path, monkeypatch, how):
    _, b = models
    b = copy.deepcopy(b)
    folder = tmp_path / "new"
    breakage, message = _failing_saves(b, monkeypatch, folder)[how]
    breakage()
    with pytest.raises(CheckpointError, match=message):
        b.save_pretrained(folder)
    assert os.listdir(tmp_path) == []


def test_saving_to_a_file_is_a_checkpoint_error(models, tmp_path):
    a, _ = models
    path = tmp_path / "afile"
    path.write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        a.save_pretrained(path)
    assert path.read_text() == "x"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_a_model_of_another_dtype_than_float32_is_refused(models, tmp_path, dtype):
    a, _ = models
    folder = tmp_path / "m"
    with pytest.raises(CheckpointError, match=rf"cannot save a {str(dtype)[6:]} model.*model\.float\(\)"):
        copy.deepcopy(a).to(dtype).save_pretrained(folder)
    assert not folder.exists()


# -- 4. registering a folder whose weights differ from those registered under its name ------------------------
@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_USER_CONFIGS", {})
    monkeypatch.setattr(registry, "_USER_WEIGHTS", {})


def _resave_with_other_metadata(folder: Path) -> None:
    """Rewrite model.safetensors with the same tensors but other header bytes (and its checksum in config.json).

    safetensors orders the header's metadata by a hash map seeded per process, so saves of the same weights in
    two processes often differ in their bytes; the metadata here differs outright, so the test is not left to
    chance.
    """
    from ctglip_sdk.model.checkpoint import file_sha256

    before = file_sha256(folder / "model.safetensors")
    save_file(load_file(folder / "model.safetensors"), folder / "model.safetensors", metadata={"format": "pt"})
    meta = json.loads((folder / "config.json").read_text())
    meta["weights_sha256"] = file_sha256(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(meta))
    assert meta["weights_sha256"] != before


def test_registering_other_weights_under_a_registered_name_needs_overwrite(models, tmp_path, clean_registry):
    a, b = models
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "a-copy")
    assert cg.register_model_config(tmp_path / "a") == "review27-tiny"
    assert cg.register_model_config(tmp_path / "a") == "review27-tiny"  # again: the same folder
    assert cg.register_model_config(tmp_path / "a-copy") == "review27-tiny"  # a copy: the same weights
    _resave_with_other_metadata(tmp_path / "a-copy")  # the same tensors in other bytes, as another process saves
    assert cg.register_model_config(tmp_path / "a-copy") == "review27-tiny"
    with pytest.raises(ConfigError, match="'review27-tiny' already has other weights.*overwrite=True"):
        cg.register_model_config(tmp_path / "b")
    assert _is(cg.load("review27-tiny"), a)
    cg.register_model_config(tmp_path / "b", overwrite=True)
    assert _is(cg.load("review27-tiny"), b)


def test_a_fine_tuned_copy_of_the_bundled_model_does_not_shadow_it(tmp_path, clean_registry):
    model = cg.load("ctglip-tiny-synthetic")
    reference = model.weights_hash()
    with torch.no_grad():
        model.logit_scale.add_(0.01)
    model.save_pretrained(tmp_path / "my-finetune")
    with pytest.raises(ConfigError, match="'ctglip-tiny-synthetic' already has other weights"):
        cg.register_model_config(tmp_path / "my-finetune")
    assert cg.load("ctglip-tiny-synthetic").weights_hash() == reference
    assert registry.model_info("ctglip-tiny-synthetic")["weights"] != os.fspath((tmp_path / "my-finetune").resolve())
