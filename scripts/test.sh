#!/usr/bin/env bash
# The test command's body (run through `make test`, which installs first): lint, layer contracts, types, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "[test] ruff"
.venv/bin/ruff check .
echo "[test] import-linter"
.venv/bin/lint-imports
echo "[test] mypy"
.venv/bin/mypy  # files and strictness from [tool.mypy] in pyproject.toml
echo "[test] pytest"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "[test] pytest collected no tests: failing"; exit 1; fi
exit "$rc"
