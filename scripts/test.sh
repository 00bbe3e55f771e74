#!/usr/bin/env bash
# Set up the test environment and run the whole suite. Extra arguments go to pytest.
# RLHF_LAB_LANE=vllm runs them in the vLLM environment instead (.venv-vllm, `scripts/setup.sh vllm`).
# The main lane runs in parallel (pytest-xdist): one worker per core, at most 4, each test file on one
# worker (module fixtures built once), one torch thread per process (two workers of two threads each
# would oversubscribe two cores). RLHF_LAB_TEST_WORKERS=0 runs in one process.
set -uo pipefail
cd "$(dirname "$0")/.."
lane="${RLHF_LAB_LANE:-test}"
bash scripts/setup.sh "$lane" || exit 1
if [ "$lane" = vllm ]; then venv="${RLHF_LAB_VENV:-.venv-vllm}"; else venv="${RLHF_LAB_VENV:-.venv}"; fi
# Example third-party plugin packages are installed the way a user installs them.
for pkg in plugins/*/; do
  [ -f "$pkg/pyproject.toml" ] && { "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$pkg" || exit 1; }
done
export WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
parallel=()
if [ "$lane" != vllm ]; then
  cores="$(nproc 2>/dev/null || echo 1)"
  workers="${RLHF_LAB_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}"
  if [ "$workers" -gt 1 ]; then
    parallel=(-n "$workers" --dist loadfile)
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  fi
fi
"$venv/bin/python" -m pytest "${parallel[@]}" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
