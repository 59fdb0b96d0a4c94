"""IVF tuning on far (text-like) queries, the model's tuning texts, and blocked exact scoring."""

from __future__ import annotations

import numpy as np

from ctglip_sdk.index.ann import FLAT_MAX, AnnIndex, choose_factory, text_queries
from ctglip_sdk.index.planner import SCORE_BLOCK, exact_topk

from test_index_common import tiny_model


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _recall(ann, ids, x, q, k=10):
    truth = np.argsort(-(q @ x.T), axis=1)[:, :k]
    _, found = ann.search(q, k)
    rows = np.searchsorted(ids, found)
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(rows, truth)]))


def test_tune_reaches_the_target_on_far_queries_too():
    rng = np.random.default_rng(0)
    d, n = 32, 8000
    centres = _unit(rng.standard_normal((40, d)))
    x = _unit(centres[rng.integers(0, 40, n)] + 0.15 * rng.standard_normal((n, d)))
    ids = np.arange(1, n + 1, dtype=np.int64)
    ivf = AnnIndex.build(d, "IVF64,Flat")
    ivf.train(x)
    ivf.add(ids, x)
    near_only = ivf.tune(ids, x, target_recall=0.95, queries=x[:1])["nprobe"]  # a "far" sample that is near
    far = _unit(rng.standard_normal((100, d)))
    tuned = ivf.tune(ids, x, target_recall=0.95, queries=far)["nprobe"]
    assert tuned >= near_only and ivf.tuned_recall >= 0.95
    # Recall holds on other far queries than those tuned on (within sampling noise), and near ones stay exact.
    assert _recall(ivf, ids, x, _unit(rng.standard_normal((200, d)))) >= 0.9
    assert _recall(ivf, ids, x, x[rng.choice(n, 100, replace=False)]) >= 0.95
    ivf.tune(ids, x, target_recall=0.95)  # without queries: random directions
    assert ivf.params["nprobe"] >= near_only


def test_text_queries_are_the_models_unit_vectors():
    model = tiny_model()
    q = text_queries(model, limit=20)
    assert q is not None and q.shape == (20, model.embed_dim)
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-4)

    class Broken:
        def encode_text(self, texts):
            raise RuntimeError("no text tower")

    assert text_queries(Broken()) is None  # tuning falls back to random directions, never fails a build


def test_flat_below_flat_max_and_ivf_trainable_from_it():
    assert choose_factory(FLAT_MAX - 1, 128) == "Flat"
    factory = choose_factory(FLAT_MAX, 128)
    nlist = int(factory.split(",")[0][3:])
    assert factory.endswith(",Flat") and nlist * 39 <= FLAT_MAX  # FAISS needs 39 training points per list


def test_blocked_exact_scores_match_one_product():
    rng = np.random.default_rng(1)
    v = _unit(rng.standard_normal((3 * SCORE_BLOCK + 17, 16)))
    q = _unit(rng.standard_normal((1, 16)))[0]
    s = v @ q
    rows = np.sort(rng.choice(v.shape[0], 2 * SCORE_BLOCK + 5, replace=False))
    got_s, got_r = exact_topk(v, q, 10, rows=rows)
    want = rows[np.argsort(-s[rows])[:10]]
    assert got_r.tolist() == want.tolist() and np.allclose(got_s, s[want], atol=1e-6)
    mask = np.zeros(v.shape[0], bool)
    mask[rows] = True
    assert exact_topk(v, q, 10, mask=mask)[1].tolist() == want.tolist()
    assert exact_topk(v, q, 5)[1].tolist() == np.argsort(-s)[:5].tolist()
