"""README.md stays true: its layout names every source file, and the two commands it shows are the Makefile's."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tracked(pattern: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line]


def test_layout_lists_every_source_file() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [
        path
        for path in _tracked("*.py")
        if not path.startswith("tests/") and not (path.endswith("__init__.py") and path != "loadtest/__init__.py")
        and path not in readme
    ]
    missing += [p for p in _tracked("docs/*.md") if p not in readme]
    assert not missing, f"README layout misses: {missing}"


def test_readme_commands_exist_in_makefile_and_ci_runs_the_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_docs_name_only_files_that_exist() -> None:
    """Every source path the README and docs/*.md mention (``decoding/engine.py``, ``scripts/setup.sh``) exists."""
    import re

    pattern = re.compile(r"\b(?:sid_index|decoding|training|server|cli|loadtest|benchmarks|tests|scripts)/"
                         r"[A-Za-z0-9_/]+\.(?:py|sh)\b")
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = sorted({f"{t.name}: {m}" for t in texts for m in pattern.findall(t.read_text())
                      if not (ROOT / m).exists()})
    assert not missing, f"docs name files that do not exist: {missing}"
