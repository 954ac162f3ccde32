"""``radgr`` — the console entry point; ``radgr --help`` lists every command.

Each command group lives in its own module (``cli/index_cmd.py``, ``cli/data_cmd.py``, ...); this file only
assembles them. ``main(argv)`` returns the exit code, so tests call it directly; ``console_main()`` (the installed
``radgr`` script and ``python -m cli.main``) also leaves a ``torchrun`` process group cleanly before exiting.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from cli import (
    align_cmd,
    data_cmd,
    demo_cmd,
    export_cmd,
    index_cmd,
    loadtest_cmd,
    serve_cmd,
    sweep_cmd,
    train_cmd,
    tune_cmd,
)

app = typer.Typer(name="radgr", help="Generative retrieval with Semantic IDs and RAD-DPO.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
app.add_typer(index_cmd.app, name="index", help="Build and inspect Semantic-ID indexes.")
app.add_typer(data_cmd.app, name="data", help="Simulate, import and turn search logs into training samples.")

train_app = typer.Typer(no_args_is_help=True, help="SFT and preference alignment.")
train_app.command("sft", help="Supervised next-SID training.")(train_cmd.sft_command)
train_app.command("align", help="Preference alignment: dpo, simpo, orpo, rad-dpo.")(align_cmd.align_command)
app.add_typer(train_app, name="train")

experiment_app = typer.Typer(no_args_is_help=True, help="Experiments.")
experiment_app.command("paper-table", help="SFT, baselines, RAD-DPO and ablations over seeds.")(
    align_cmd.paper_table_command
)
experiment_app.command("tune", help="Alignment hyper-parameters chosen on the validation split.")(
    tune_cmd.tune_command
)
experiment_app.command("thesis-sweep", help="RAD-DPO's gain vs DPO/SimPO and its ablations' loss across simulator "
                       "knobs.")(sweep_cmd.thesis_sweep_command)
experiment_app.command("ab", help="Simulated online A/B test of two served bundles over HTTP.")(align_cmd.ab_command)
app.add_typer(experiment_app, name="experiment")

bundle_app = typer.Typer(no_args_is_help=True, help="Servable bundles.")
bundle_app.command("verify", help="Check a bundle's files, checksums, tokenizer and index.")(
    export_cmd.verify_command
)
app.add_typer(bundle_app, name="bundle")

app.command("eval", help="Offline evaluation of a checkpoint.")(train_cmd.eval_command)
app.command("export", help="Export a checkpoint and its SID index as a servable bundle.")(export_cmd.export_command)
app.command("serve", help="Serve a bundle over HTTP (POST /retrieve).")(serve_cmd.serve_command)
app.command("loadtest", help="Load-test a server with Locust: gates decide the exit code; --sweep measures capacity.")(
    loadtest_cmd.loadtest_command
)
app.command("demo", help="The whole path from nothing: simulate, index, train, evaluate, export, serve.")(
    demo_cmd.demo_command
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of exiting (tests call ``main([...])``)."""
    try:
        rv = app(args=list(argv) if argv is not None else sys.argv[1:], standalone_mode=False)
    except SystemExit as exc:  # typer raises for --help and errors
        return int(exc.code or 0)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return int(rv) if isinstance(rv, int) else 0


def end_distributed() -> None:
    """Under ``torchrun``: leave the process group cleanly (a barrier, then destroy) before the process exits, so no
    rank aborts at exit ("terminate called without an active exception") while another tears its connections
    down. A no-op anywhere else (torch.distributed not imported, or no process group)."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def console_main() -> int:
    """The ``radgr`` console script: :func:`main`, then :func:`end_distributed`."""
    rc = main()
    end_distributed()
    return rc


if __name__ == "__main__":
    raise SystemExit(console_main())
