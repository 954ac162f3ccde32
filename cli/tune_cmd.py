"""``radgr experiment tune --samples DIR --index DIR --sft RUN_DIR/final --out DIR [--methods dpo,simpo,orpo,rad-dpo]
[--lrs 1e-4,3e-4] [--steps 100,200] [--limit N]`` — alignment hyper-parameters chosen on the validation split
(``training.align_tune`` holds the contract). Prints the chosen setting per method and the paper-table command that
uses them; exit 2 on bad input, naming the option.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cli.align_cmd import _fail

console = Console()


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, given {text!r}") from None


def tune_command(
    samples: Path = typer.Option(..., "--samples", help="Samples directory: train.parquet (test is never read)."),
    index: Path = typer.Option(..., "--index", help="SID index directory."),
    sft: Path = typer.Option(..., "--sft", help="The SFT checkpoint every trial starts from (RUN_DIR/final)."),
    out: Path = typer.Option(..., "--out", help="Output directory: tune.{json,md,png}, trials/, val_samples/."),
    methods: str = typer.Option("dpo,simpo,orpo,rad-dpo", "--methods", help="Comma-separated methods to tune."),
    lrs: str = typer.Option("1e-4,3e-4", "--lrs", help="Learning rates tried."),
    steps: str = typer.Option("100,200", "--steps", help="Optimizer steps tried."),
    limit: int | None = typer.Option(None, "--limit", help="Train on the first N sessions only (smoke runs)."),
) -> int:
    """Choose each alignment method's learning rate, steps and loss setting on the validation split."""
    from training.align_tune import TuneConfig, run_tune

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = TuneConfig(samples_dir=samples, index_dir=index, sft_dir=sft, out_dir=out,
                         methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                         lrs=_floats(lrs, "--lrs"), steps=tuple(int(s) for s in _floats(steps, "--steps")),
                         train_limit=limit)
        paths = run_tune(cfg, progress=lambda msg: console.print(f"[bold]{msg}"))
    except (ValueError, OSError) as exc:
        return _fail(exc)
    import json

    doc = json.loads(paths["json"].read_text())
    t = Table(title=f"chosen on {doc['val_sessions']} validation sessions (SFT: R@10 {doc['sft_val']['R@10']:.4f})")
    for col in ("method", "lr", "steps", "loss", "val R@10", "val MRR"):
        t.add_column(col)
    for m, c in doc["chosen"].items():
        o = c["overrides"]
        loss = ", ".join(f"{k} {v:g}" for k, v in o.items() if k not in ("lr", "max_steps"))
        t.add_row(m, f"{o['lr']:g}", f"{o['max_steps']:g}", loss, f"{c['val']['R@10']:.4f}", f"{c['val']['MRR']:.4f}")
    console.print(t)
    console.print(f"table: {paths['markdown']}  json: {paths['json']}  chart: {paths['png']}")
    console.print(f"next: radgr experiment paper-table --samples {samples} --index {index} --sft {sft} "
                  f"--out DIR --tuned {paths['json']}")
    return 0
