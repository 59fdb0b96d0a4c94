"""The bundled default model still loads strictly into the current architecture (so it cannot rot)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ctglip_sdk as cg

NAME = "ctglip-tiny-synthetic"
FOLDER = Path(cg.__file__).resolve().parent / "model" / "weights" / NAME

pytestmark = pytest.mark.skipif(not (FOLDER / "model.safetensors").is_file(),
                                reason=f"bundled weights not present at {FOLDER} (train them: docs/model-card.md)")


def test_bundled_weights_match_current_architecture():
    assert NAME in cg.list_models()
    model = cg.load(NAME)  # load_pretrained is strict: missing/unexpected keys or shapes raise CheckpointError
    assert (FOLDER / "model.safetensors").stat().st_size <= 25 * 2**20
    # Rebuild the architecture from the bundled config with today's code and compare every tensor's shape.
    from ctglip_sdk.model.modeling import CTGlipModel

    fresh = CTGlipModel(model.config, model.tokenizer)
    saved = load_file(str(FOLDER / "model.safetensors"))
    current = fresh.state_dict()
    assert set(saved) == set(current)
    assert all(tuple(saved[k].shape) == tuple(current[k].shape) for k in saved)
    fresh.load_state_dict(saved, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v.cpu(), saved[k]), k
    # The card's provenance is recorded next to the weights.
    meta = json.loads((FOLDER / "config.json").read_text())
    assert "ctglip-tiny" in json.dumps(meta)


def test_bundled_model_encodes_a_synthetic_patient():
    model = cg.load(NAME)
    p = cg.synth.generate_patient(3, "small", findings=["liver_cyst"])
    emb = model.encode_organs(p.volume, p.segmentation, organs=["liver", "spleen"])
    assert emb.names == ["liver", "spleen"] and np.allclose(np.linalg.norm(emb.vectors, axis=1), 1, atol=1e-4)
    zs = cg.ZeroShotClassifier(model)
    ids = zs.identify_vectors(emb.vectors)
    assert ids.shape == (2, 104) and np.allclose(ids.sum(1), 1, atol=1e-4)
