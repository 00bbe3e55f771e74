#!/usr/bin/env bash
# Set up a virtual environment with rlhf_lab installed (editable) and the extras given as $1
# (e.g. "test" or "lora,bench"). Safe to re-run: it reinstalls only when pyproject.toml changed.
#
# torch: on a machine without an NVIDIA driver, constraints/cpu.txt pins torch==2.13.0, the CPU
# build (no CUDA packages). With a driver, pip picks its usual CUDA build. Force either with
# RLHF_LAB_TORCH=cpu or RLHF_LAB_TORCH=any. The venv location is RLHF_LAB_VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
venv="${RLHF_LAB_VENV:-.venv}"
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
want="$(cat pyproject.toml constraints/cpu.txt | sha256sum | cut -c1-16) extras=$extras torch=${constraint[*]:-any}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${constraint[@]}" -e ".${extras:+[$extras]}"
  echo "$want" > "$stamp"
fi
