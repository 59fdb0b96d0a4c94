"""Fixes of the benchmark review: scratch cleanup, thread pinning, alternating order, medians, reuse checks,
run.py's argument checks and gpu_check's stage isolation (cheap: helpers, plus one tiny bench_query run)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from types import ModuleType

import pytest

from bench_loader import BENCH


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported under its own name (registered in sys.modules, which the dataclasses of
    common.py and bench_query.py need), with benchmarks/ on sys.path only while importing."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def common():
    return load_benchmark("common")


@pytest.fixture(scope="module")
def bench_query():
    return load_benchmark("bench_query")


def test_query_cleanup_removes_only_its_own_folders(bench_query, tmp_path):
    (tmp_path / "notes.txt").write_text("the user's")
    (tmp_path / "idx-5000").mkdir()  # another size: not this one's
    for folder in bench_query.size_folders(tmp_path, 2000):
        (folder / "sub").mkdir(parents=True)
    bench_query.remove_size_folders(tmp_path, 2000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx-5000", "notes.txt"]


def test_query_tiny_run_keeps_workdir_files_and_pins_blas(tmp_path):
    """The script end to end at 2,000 rows (~10 s): a user file in --workdir survives, --threads 1 reaches
    OpenBLAS, the text rows are unfiltered cosine search (exact recall), the numpy baseline says how it ran."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    out = tmp_path / "q.json"
    subprocess.run([sys.executable, "-W", "ignore", str(BENCH / "bench_query.py"), "--sizes", "2000", "--queries", "4",
                    "--text-queries", "2", "--sql-queries", "2", "--no-peers", "--threads", "1", "--workdir", str(work),
                    "--json-out", str(out)], check=True, capture_output=True, text=True, timeout=300)
    assert (work / "keep.txt").read_text() == "x"
    res = json.loads(out.read_text())
    blas = res["machine"]["blas_threads"]
    assert blas in (1, None)  # None: no OpenBLAS to ask (then the baseline runs in blocks)
    rows = res["sizes"][0]["rows"]
    text = [r for r in rows if r["system"].startswith("index text")]
    assert text and all(r["system"] == "index text (e2e, cosine)" for r in text)
    assert all(r["recall@10"] == 1.0 for r in text if r["strategy"] in ("exact", "scan"))
    numpy_rows = [r for r in rows if r["system"].startswith("numpy")]
    assert {r["numpy_baseline"] for r in numpy_rows} <= {"1 BLAS thread", "1024-row blocks"}


def test_threads_from_argv_and_blas_limit(common):
    assert common.threads_from_argv(["--quick", "--threads", "3"]) == (3, True)
    assert common.threads_from_argv(["--threads=1"]) == (1, True)
    assert common.threads_from_argv(["--quick"], default=2) == (2, False)
    before = common.blas_threads()
    with common.blas_limit(1) as applied:
        if applied:
            assert common.blas_threads() == 1
    assert common.blas_threads() == before


def test_interleaved_times_alternates_the_order(common):
    calls = []
    times = common.interleaved_times({"base": lambda: calls.append("base"), "alt": lambda: calls.append("alt")},
                                     repeats=4, warmup=0)
    assert calls == ["base", "alt", "alt", "base", "base", "alt", "alt", "base"]
    assert {k: len(v) for k, v in times.items()} == {"base": 4, "alt": 4}


def test_ingest_median_is_statistics_median_and_names_its_run():
    mod = (load_benchmark("bench_ingest"))
    runs = [{"seconds": 7.45, "timings": {"read": 2}}, {"seconds": 6.22, "timings": {"read": 1}}]
    pick = mod.median_run(runs)
    assert pick["median_seconds"] == pytest.approx((7.45 + 6.22) / 2)
    assert pick["stages_from_run"] == 2 and pick["timings"] == {"read": 1}  # the lower median, a real run
    assert mod.median_run(runs + [{"seconds": 9.0, "timings": {}}])["stages_from_run"] == 1


def test_run_rejects_unknown_names_and_drops_old_json(tmp_path):
    run = [sys.executable, str(BENCH / "run.py"), "--out", str(tmp_path)]
    for bad in (["--only", "qurey"], ["--skip", "nosuch"], ["--extra", "querry=--sizes 10"]):
        res = subprocess.run(run + bad, capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and "unknown benchmark" in res.stderr
    (tmp_path / "stats.json").write_text('{"stale": true}')
    res = subprocess.run(run + ["--only", "stats", "--extra", "stats=--no-such-flag"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 1
    assert not (tmp_path / "stats.json").exists()
    assert "data" not in json.loads((tmp_path / "summary.json").read_text())["results"]["stats"]


def test_seeds_table_reuses_an_evaluation_only_for_the_same_weights_and_archive(tmp_path):
    seeds = (load_benchmark("seeds_table"))
    import ctglip_sdk as cg
    from test_model_encode import TINY

    model_dir = tmp_path / "model"
    cg.create("ctglip-tiny", overrides=TINY, seed=0).save_pretrained(model_dir)
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "manifest.csv").write_text("x\n")
    (archive / "synth.json").write_text(json.dumps({"seed": 7, "n_patients": 2, "preset": {"name": "small"}}))
    assert seeds.archive_matches(archive, 7, 2, "small")
    assert not seeds.archive_matches(archive, 7, 3, "small") and not seeds.archive_matches(archive, 7, 2, "default")
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    req = seeds.request_record(str(model_dir), archive, "calib", "all")
    assert not seeds._same_request(out / "metrics.json", req)  # no request.json: an older script's result
    (out / "request.json").write_text(json.dumps(req))
    assert seeds._same_request(out / "metrics.json", req)
    cg.create("ctglip-tiny", overrides=TINY, seed=1).save_pretrained(model_dir)  # other weights, same folder
    assert not seeds._same_request(out / "metrics.json", seeds.request_record(str(model_dir), archive, "calib", "all"))
    # A registered name is identified by its config hash and the sha256 of its bundled weights, not its name.
    ident = seeds.model_identity("ctglip-tiny-synthetic")
    assert ident["config_hash"] and (ident["weights_sha256"] or not cg.model.model_info(
        "ctglip-tiny-synthetic")["has_weights"])


def test_results_table_moves_a_run_made_for_another_request_aside(tmp_path):
    rt = (load_benchmark("results_table"))
    run_dir = tmp_path / "runs" / "clip-cnn"
    run_dir.mkdir(parents=True)
    req = {"steps": 600, "config_hash": "a"}
    (run_dir / "request.json").write_text(json.dumps(req))
    assert rt.reuse_or_move(run_dir, req)
    assert not rt.reuse_or_move(run_dir, {"steps": 50, "config_hash": "a"})  # --steps changed
    assert not run_dir.exists() and len(list((tmp_path / "runs").glob("clip-cnn.replaced-*"))) == 1
    assert rt.config_hash("ctglip-tiny") != rt.config_hash(rt.tiny_vit_config("ctglip-tiny"))


def test_gpu_check_keeps_other_stages_when_one_fails(tmp_path):
    gc = (load_benchmark("gpu_check"))
    out: dict = {}
    path = tmp_path / "g.json"

    def boom() -> dict:
        raise RuntimeError("no kernel image")

    assert not gc.run_stage(out, "train", boom, str(path))
    assert json.loads(path.read_text())["train"]["error"] == "RuntimeError: no kernel image"
    assert gc.run_stage(out, "faiss", lambda: gc.stage_faiss(2000, 16, 4, dry_run=True), str(path))
    saved = json.loads(path.read_text())
    assert saved["train"]["failed"] and saved["faiss"]["recall@10_gpu_vs_cpu"] == 1.0
    with gc.observe("cpu") as rec:
        import torch

        torch.nn.Linear(4, 2)(torch.zeros(1, 4))
    assert rec["layer_output_dtypes"] == {"float32": 1} and rec["max_memory_allocated_mb"] is None
