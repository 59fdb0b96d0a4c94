"""TrainConfig: file loading, typed `key=value` overrides and errors that name the key."""

from __future__ import annotations

import json

import pytest

from ctglip_sdk.errors import ConfigError
from ctglip_sdk.training.config import TrainConfig


def test_defaults_and_round_trip(tmp_path):
    cfg = TrainConfig()
    path = tmp_path / "cfg.json"
    cfg.save(path)
    assert TrainConfig.from_file(path) == cfg
    assert json.loads(path.read_text())["objective"] == "ctglip"


def test_file_then_overrides(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"lr": 0.002, "max_steps": 50, "text_lr": 1e-4}))
    cfg = TrainConfig.from_sources(path, ["max_steps=7", "bf16=no", "text_lr=null", "w_abnormality=0",
                                          "extra={\"note\": \"ablation\"}"])
    assert cfg.lr == 0.002 and cfg.max_steps == 7 and cfg.bf16 is False and cfg.text_lr is None
    assert cfg.w_abnormality == 0.0 and isinstance(cfg.w_abnormality, float)
    assert cfg.extra == {"note": "ablation"}
    # Integers are accepted for floats in files.
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0


def test_unknown_keys_name_the_key(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(ConfigError, match="learning_rate") as info:
        TrainConfig.from_file(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="batchsize"):
        TrainConfig().with_overrides(["batchsize=3"])


@pytest.mark.parametrize("override, key", [
    ("max_steps=ten", "max_steps"), ("bf16=maybe", "bf16"), ("lr=fast", "lr"), ("max_steps=0", "max_steps"),
    ("objective=siglip", "objective"), ("false_negatives=drop", "false_negatives"), ("lr=-1", "lr"),
    ("min_lr_ratio=2", "min_lr_ratio"), ("noequals", "noequals"),
])
def test_bad_overrides_raise(override, key):
    with pytest.raises(ConfigError, match=key):
        TrainConfig().with_overrides([override])


def test_wrong_types_in_file(tmp_path):
    for doc, key in (({"max_steps": 1.5}, "max_steps"), ({"bf16": 1}, "bf16"), ({"lr": "x"}, "lr"),
                     ({"model": None}, "model")):
        path = tmp_path / "c.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(ConfigError, match=key):
            TrainConfig.from_file(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.from_file(path)
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.from_file(tmp_path / "missing.json")


def test_all_zero_weights_rejected():
    with pytest.raises(ConfigError, match="nothing to train"):
        TrainConfig(w_organ_text=0, w_abnormality=0, w_identity=0)
    # The CLIP objective ignores the CT-GLIP weights.
    assert TrainConfig(objective="clip", w_organ_text=0, w_abnormality=0, w_identity=0).objective == "clip"


def test_the_no_dictionary_ablation_refuses_the_readout_stage():
    from ctglip_sdk.errors import ConfigError

    # The readout fits the dictionary's finding prompts: with it, w_abnormality=0 trained on the dictionary anyway.
    with pytest.raises(ConfigError, match="w_abnormality=0"):
        TrainConfig.from_dict({"w_abnormality": 0, "readout_epochs": 2})
    assert TrainConfig.from_dict({"w_abnormality": 0}).readout_epochs == 0
