"""The console entry point lists every command group."""

import pytest

from cli.main import main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("index", "data", "train", "eval", "export", "bundle", "serve", "demo", "experiment"):
        assert name in out


def _readme_cli_lines() -> list[str]:
    """The ``radgr ...`` command lines of the README's CLI section (continuation lines joined)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## CLI", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    lines: list[str] = []
    for raw in block.splitlines():
        line = raw.strip()
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1] + " " + line
        elif line.startswith("radgr "):
            lines.append(line)
    return lines


def test_every_cli_line_of_the_readme_is_a_real_command_with_real_options(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Each README command's ``--help`` exits 0 and lists every ``--option`` the README line uses."""
    import re

    lines = _readme_cli_lines()
    assert len(lines) >= 10, lines
    for line in lines:
        words = line.split()[1:]
        path = []
        for w in words:  # the subcommand path: words before the first option or placeholder
            if w.startswith("-") or w.startswith("[") or not re.fullmatch(r"[a-z][a-z-]*", w):
                break
            path.append(w)
        code: int | str | None
        try:
            code = main([*path, "--help"])
        except SystemExit as exc:
            code = exc.code
        assert code == 0, line
        out = capsys.readouterr().out
        for opt in re.findall(r"(--[a-z][a-z0-9-]*)", line):
            assert opt in out, f"`radgr {' '.join(path)}` has no option {opt} (README: {line})"
