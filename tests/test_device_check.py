"""experiments/device_check.sh and bench_seg's bf16 peak table (run on a GPU; checked here)."""

import runpy
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return runpy.run_path(str(ROOT / "experiments" / "bench_seg.py"))


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-40GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("Tesla T4", 65.0),
        ("Tesla V100-SXM2-16GB", 125.0),
        ("TPU v4", 275.0),
        ("TPU v5 lite", 197.0),
        ("TPU v5p", 459.0),
        ("TPU v6 lite", 918.0),
        ("NVIDIA GeForce RTX 4090", None),
        ("cpu", None),
    ],
)
def test_bf16_peak_by_device_kind(bench, kind, peak):
    assert bench["bf16_peak_tflops"](kind) == peak


def test_device_check_script_parses_and_refuses_unknown_options():
    script = ROOT / "experiments" / "device_check.sh"
    assert "set -euo pipefail" in script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    res = subprocess.run(["bash", str(script), "--gpu"], capture_output=True, text=True)
    assert res.returncode == 2 and "usage" in res.stderr
