"""scripts/gpu_check.sh: its CPU dry run end to end (the GPU path differs only in shapes, device and
NCCL), and the MFU arithmetic and peak table by hand."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H200", 989), ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA L40S", 362), ("NVIDIA L4", 121), ("NVIDIA A10G", None), ("Tesla V100-SXM2-32GB", None),
])
def test_bf16_peak_from_the_device_name(name, peak):
    assert gpu_check.bf16_peak_tflops(name) == peak


def test_mfu_is_six_n_flops_per_token_over_the_peak():
    # 10,000 tokens/s x 6 x 0.5e9 = 3e13 FLOP/s on 2 GPUs of 989 TFLOPS: 3e13 / 1.978e15
    assert gpu_check.mfu(10_000, 500_000_000, 2, 989) == pytest.approx(3e13 / 1.978e15)
    assert gpu_check.mfu(10_000, 500_000_000, 1, None) is None


@pytest.mark.slow
def test_dry_run_trains_sft_dpo_ddp_and_fsdp2_and_reports_throughput(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert list(report["runs"]) == ["sft", "dpo", "sft ddp", "sft fsdp2"]
    assert [r["procs"] for r in report["runs"].values()] == [1, 1, 2, 2]
    assert all(r["tokens_per_s"] > 0 and r["mfu"] is None for r in report["runs"].values())  # no peak for a CPU
    table = [line.split() for line in proc.stdout.splitlines() if line.startswith(("sft ", "dpo "))]
    assert [row[0] for row in table] == ["sft", "dpo", "sft", "sft"] and all("n/a" in row for row in table)
