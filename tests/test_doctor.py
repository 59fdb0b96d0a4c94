"""FAISS backend detection and `ctglip doctor`."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ctglip_sdk import faiss_backend
from ctglip_sdk.cli.main import cli


def test_faiss_imports_and_counts_gpus():
    faiss = faiss_backend.import_faiss()
    index = faiss.IndexFlatIP(4)
    assert index.d == 4
    assert faiss_backend.gpu_count() >= 0
    info = faiss_backend.backend_info()
    assert info["faiss_cpu"] or info["faiss_gpu"]
    assert "warning" not in info or (info["faiss_cpu"] and info["faiss_gpu"])


def test_doctor_json_reports_stack():
    res = CliRunner().invoke(cli, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["packages"]["torch"] and info["faiss"]["gpus"] >= 0
