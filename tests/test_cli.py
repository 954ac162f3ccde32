"""The console entry point lists every command group."""

import pytest

from cli.main import main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("index", "data", "train", "eval", "export", "bundle", "serve", "demo", "experiment"):
        assert name in out
