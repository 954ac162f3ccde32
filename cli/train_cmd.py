"""``radgr train sft`` and ``radgr eval``.

    radgr train sft --samples DIR --index DIR --out RUN_DIR [--preset tiny | --model PATH] [--catalog PATH]
                    [--epochs 1 --min-steps 600 --max-epochs 30 --val-fraction 0.05 --patience 4 --eval-every 0
                     --restore-best|--keep-last --lr 3e-3 --batch-size 64 --grad-accum 1 --save-steps 200
                     --max-steps -1 --seed 0 --resume --limit N]
    radgr eval --model RUN_DIR/final --index DIR --samples DIR [--against OTHER/final] [--baseline popularity]
               [--beam-width 128 --top-k 500 --batch-size 8 --limit N --no-hallucination --out eval.json]

Each command builds a config, calls ``training.sft`` / ``training.evaluate``, prints a table, returns 0 (2 on bad
input: one line naming the field, or the file that is missing, truncated or corrupt).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def _fail(exc: BaseException) -> int:
    """Report bad input on one stderr line (the message names the file or field; no markup, no wrapping): exit 2."""
    err_console.print(f"[red]error:[/red] {escape(' '.join(str(exc).split()))}", soft_wrap=True)
    return 2


class _D:
    """``training.sft.SFT_TRAIN_DEFAULTS`` as plain numbers, so ``radgr --help`` does not import torch
    (``tests/test_sft_cli.py`` checks they agree)."""

    epochs = 1.0
    lr = 3e-3
    batch_size = 64
    grad_accum = 1
    save_steps = 200
    logging_steps = 10
    max_steps = -1
    seed = 0
    # training.sft.SFT_SCHEDULE_DEFAULTS
    min_steps = 600
    max_epochs = 30.0
    val_fraction = 0.05
    patience = 4
    eval_every = 0
    restore_best = True



def sft_command(
    samples: Path = typer.Option(..., "--samples", help="Samples directory (radgr data samples): train.parquet."),
    index: Path = typer.Option(..., "--index", help="SID index directory (radgr index build)."),
    out: Path = typer.Option(..., "--out", help="Run directory: final/, checkpoints/, train_log.json, loss.png."),
    preset: str = typer.Option("tiny", "--preset",
                               help="Model preset: tiny, small, 0.6b, 1.7b (ignored with --model)."),
    model: Path | None = typer.Option(None, "--model", help="A local Hugging Face causal-LM directory instead."),
    catalog: Path | None = typer.Option(None, "--catalog", help="Catalog whose titles also train the tokenizer."),
    epochs: float = typer.Option(_D.epochs, "--epochs", help="Lower bound of the budget in epochs."),
    min_steps: int = typer.Option(_D.min_steps, "--min-steps",
                                  help="At least this many steps (unless --max-epochs passes come first)."),
    max_epochs: float = typer.Option(_D.max_epochs, "--max-epochs", help="At most this many passes over the data."),
    val_fraction: float = typer.Option(_D.val_fraction, "--val-fraction",
                                       help="Share of training sessions held out for validation loss (0: none)."),
    patience: int = typer.Option(_D.patience, "--patience",
                                 help="Stop after N validations without a new best (0: never early)."),
    restore_best: bool = typer.Option(_D.restore_best, "--restore-best/--keep-last",
                                      help="Final model: the best validation evaluation's weights, or the last "
                                           "step's."),
    eval_every: int = typer.Option(_D.eval_every, "--eval-every",
                                   help="Validation every N steps (0: planned steps / 20, in 10..200)."),
    lr: float = typer.Option(_D.lr, "--lr", help="Peak learning rate (cosine schedule, 5% warm-up)."),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", help="Pairs per device micro-batch."),
    grad_accum: int = typer.Option(_D.grad_accum, "--grad-accum", help="Micro-batches per optimizer step."),
    save_steps: int = typer.Option(_D.save_steps, "--save-steps", help="Checkpoint every N optimizer steps."),
    logging_steps: int = typer.Option(_D.logging_steps, "--logging-steps"),
    max_steps: int = typer.Option(_D.max_steps, "--max-steps",
                                  help="Exactly N steps (-1: the adaptive budget; early stopping applies)."),
    seed: int = typer.Option(_D.seed, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out."),
    limit: int | None = typer.Option(None, "--limit", help="Use only the first N (prompt, positive) pairs."),
    tokenizer_vocab: int = typer.Option(2048, "--tokenizer-vocab", help="BPE vocabulary size (presets)."),
) -> int:
    """Supervised next-SID training on every (prompt, positive) pair."""
    from training.sft import SftConfig, run_sft
    from training.sft_schedule import SCHEDULE_PLOT_FILE, SftSchedule
    from training.train_config import TrainConfig
    from training.trainer import LOSS_PLOT_FILE, TRAIN_LOG_FILE

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = SftConfig(
            samples_dir=samples, index_dir=index, out_dir=out, preset=preset, model_path=model, catalog_path=catalog,
            train=TrainConfig(epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
                              save_steps=save_steps, logging_steps=logging_steps, seed=seed),
            resume=resume, tokenizer_vocab_size=tokenizer_vocab, limit=limit,
            schedule=SftSchedule(min_steps=min_steps, max_epochs=max_epochs, val_fraction=val_fraction,
                                 patience=patience, eval_every=eval_every, restore_best=restore_best),
        )
        final = run_sft(cfg)
    except (ValueError, OSError) as exc:
        return _fail(exc)
    from training.model import read_train_info

    info = read_train_info(final)
    t = Table(title=f"SFT → {final}")
    t.add_column("statistic")
    t.add_column("value", justify="right")
    for key in ("steps", "train_loss", "val_loss", "pairs", "sessions", "wall_seconds"):
        v = info.get(key)
        t.add_row(key, f"{v:.4f}" if isinstance(v, float) else str(v))
    sched = info.get("schedule", {})
    t.add_row("planned steps", f"{sched.get('planned_steps')} ({sched.get('rule')})")
    t.add_row("stopped early", f"{sched.get('stopped_early')} (best validation loss at step {sched.get('best_step')})")
    restored = sched.get("restored_best_step")
    t.add_row("final weights", f"step {restored} (best validation)" if restored is not None
              else f"step {info.get('steps')} (last)")
    t.add_row("parameters", str(info.get("model", {}).get("parameters")))
    console.print(t)
    console.print(f"log: {out / TRAIN_LOG_FILE}  loss curve: {out / LOSS_PLOT_FILE}  "
                  f"schedule: {out / SCHEDULE_PLOT_FILE}")
    return 0


def eval_command(
    index: Path = typer.Option(..., "--index", help="SID index directory."),
    samples: Path = typer.Option(..., "--samples", help="Samples directory: test.parquet (and train.parquet)."),
    model: Path | None = typer.Option(None, "--model", help="Model directory (e.g. RUN_DIR/final)."),
    baseline: str | None = typer.Option(None, "--baseline", help="'popularity': rank by train popularity, no model."),
    against: Path | None = typer.Option(None, "--against", help="A reference model evaluated on the same sessions; "
                                        "--model is compared with it by a paired test (e.g. RAD-DPO against SFT)."),
    beam_width: int = typer.Option(128, "--beam-width", help="Beam width 1..128."),
    top_k: int = typer.Option(500, "--top-k", help="Items returned per session."),
    batch_size: int = typer.Option(8, "--batch-size", help="Requests per engine call."),
    limit: int | None = typer.Option(None, "--limit", help="Evaluate the first N test sessions only."),
    hallucination: bool = typer.Option(True, "--hallucination/--no-hallucination",
                                       help="Also decode without the trie to measure hallucination."),
    out: Path | None = typer.Option(None, "--out", help="Report JSON (plus .md table and .png chart)."),
    engine: str = typer.Option("auto", "--engine", envvar="RADGR_ENGINE",
                               help="auto (vLLM where installed, else PyTorch), torch or vllm."),
) -> int:
    """Offline evaluation: item/SID Recall and MRR, hallucination rate, MiniOneRec HR/NDCG@3,5,10; optional
    popularity baseline."""
    from training.evaluate import EvalConfig, EvalRun, markdown_table, run_eval, write_report

    try:
        run = EvalRun(index_dir=index, samples_dir=samples, model_dir=model, baseline=baseline, engine=engine,
                      against_dir=against,
                      eval=EvalConfig(beam_width=beam_width, top_k=top_k, batch_size=batch_size, limit=limit,
                                      hallucination=hallucination))
        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as prog:

            def factory(name: str, total: int) -> Callable[[int], None]:
                task = prog.add_task(name, total=total)
                return lambda n: prog.advance(task, n)

            entries, meta = run_eval(run, progress_factory=factory)
    except (ValueError, OSError) as exc:
        return _fail(exc)
    console.print(markdown_table(entries), soft_wrap=True, markup=False, highlight=False)
    if against is not None:
        from training.eval_intervals import paired_summary

        console.print(paired_summary(entries[1]), soft_wrap=True, markup=False, highlight=False)
    from training.minionerec_eval import minionerec_markdown, write_minionerec_table

    console.print(minionerec_markdown(entries), soft_wrap=True, markup=False, highlight=False)
    if out is not None:
        paths = write_report(entries, out, meta)
        console.print(f"report: {paths['json']}  table: {paths['markdown']}  chart: {paths['png']}  MiniOneRec "
                      f"protocol: {write_minionerec_table(entries, out)}")
    return 0
