"""The console entry point lists every command group."""

from cli.main import main


def test_help_lists_every_command(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("index", "data", "train", "eval", "export", "bundle", "serve", "demo", "experiment"):
        assert name in out
