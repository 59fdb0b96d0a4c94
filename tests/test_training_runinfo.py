"""The host and peak-memory record a training run writes into its summary."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from ctglip_sdk.training.runinfo import MemoryLog, host_info, peak_rss_mb


def test_host_info_names_the_cpu_its_instruction_set_and_versions():
    info = host_info()
    assert info["cpu"] and isinstance(info["cpu"], str)
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["torch"] == torch.__version__ and info["cores"] >= 1 and info["torch_threads"] >= 1
    json.dumps(info)  # goes into summary.json as is


def test_memory_log_marks_the_stage_that_raised_the_peak():
    # In a fresh interpreter: this test process's own high-water mark is set by whatever ran before it. Under a
    # large test runner this also checks that the child's peak is its own, not inherited across exec.
    code = (
        "import json, numpy as np\n"
        "from ctglip_sdk.training.runinfo import MemoryLog\n"
        "mem = MemoryLog()\n"
        "mem.mark('small')\n"
        "big = np.ones(300 * 2**20 // 8)  # 300 MiB, touched\n"
        "mem.mark('big')\n"
        "del big\n"
        "mem.mark('after')\n"
        "print(json.dumps(mem.as_dict()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    stages = json.loads(out.stdout)["stages_mb"]
    assert list(stages) == ["small", "big", "after"]
    assert stages["big"] - stages["small"] >= 250  # the allocation shows in the stage that made it
    # A high-water mark does not fall when memory is freed (Linux's RSS counters are per-thread caches, so
    # readings jitter by a fraction of a MiB).
    assert stages["after"] >= stages["big"] - 2


def test_peak_rss_is_positive_for_this_process():
    assert peak_rss_mb() > 0
    assert MemoryLog(torch.device("cpu")).as_dict().keys() == {"stages_mb", "workers_mb"}
