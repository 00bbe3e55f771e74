#!/usr/bin/env bash
# The GPU check: SFT and DPO in bf16-mixed on a ~0.5B-parameter random-init Llama-shaped model on
# one GPU, then SFT with DDP and FSDP2 (NCCL) over every GPU; prints tokens/s and MFU against the
# GPU's bf16 peak. Under 8 minutes on one GPU. Runs go to outputs/gpu_check/<time>/.
#
#   bash scripts/gpu_check.sh              # on a GPU machine, after scripts/setup.sh
#   bash scripts/gpu_check.sh --dry-run    # the same path on the CPU at tiny shapes (what the tests run)
#
# Options: --steps N, --batch-size N, --out DIR (scripts/gpu_check.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${RLHF_LAB_VENV:-.venv}"
python="$venv/bin/python"
[ -x "$python" ] || python="${PYTHON:-python3}"
exec "$python" scripts/gpu_check.py "$@"
