#!/usr/bin/env bash
# Create .venv/ at the repository root if missing and install radgr with every extra and the dev group,
# pinned by constraints.txt. Idempotent: a second run with an unchanged pyproject/constraints is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.radgr-installed
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] installing into .venv (first time takes a few minutes)"
.venv/bin/python -m pip install --quiet --upgrade "pip==26.0.1"
# torch first: the CPU build (pip takes it from the machine's local wheel folder where there is one).
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[serving,loadtest]" --group dev
echo "$want" > "$stamp"
echo "[setup] done"
