"""``radgr train align``, ``radgr experiment paper-table`` and ``radgr experiment ab``.

    radgr train align --method dpo|simpo|orpo|rad-dpo [--no-tlgd --no-rdrw --no-ml-sft]
                      --sft RUN_DIR/final --samples DIR --out RUN_DIR
                      [--resume --max-steps N --epochs 1 --batch-size 8 --grad-accum 1 --lr 1e-4 --seed 0
                       --save-steps 200 --logging-steps 10 --rdrw-window 4096 --rdrw-layer -1 --limit N]
    radgr experiment paper-table --samples DIR --index DIR --sft RUN_DIR/final --out DIR
                      [--seeds 3] [--config default|tiny] [--methods sft,dpo,...] [--dataset-name simulated]
                      [--tuned TUNE_DIR/tune.json]
    radgr experiment ab --world SIM_DIR (--url-a URL --url-b URL | --bundle-a BUNDLE --bundle-b BUNDLE) --out DIR
                      [--users 2000 --sessions-per-user 3 --rate 0 --concurrency 8 --salt radgr-ab-v1 --seed 0
                       --label-a A --label-b B --beam-width 128 --engine auto --server-threads 1]

Each command builds a config, calls ``training.align`` / ``training.experiment`` / ``training.ab_test``, prints a
table and returns 0 (2 on bad input, with a message naming the field; ``ab``: 1 when failed requests exceed
``--max-failure-rate`` in an arm).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

def _fail(exc: BaseException) -> int:
    """Report bad input on one stderr line (the message names the file or field; no markup, no wrapping): exit 2."""
    err_console.print(f"[red]error:[/red] {escape(' '.join(str(exc).split()))}", soft_wrap=True)
    return 2


# the rows of the paper's table (training.experiment.VARIANTS; a test keeps the two equal)
ALL_ROWS = "sft,dpo,simpo,orpo,rad-dpo,rad-dpo-no-tlgd,rad-dpo-no-rdrw,rad-dpo-no-ml-sft"


def align_command(
    method: str = typer.Option(..., "--method", help="dpo, simpo, orpo or rad-dpo."),
    sft: Path = typer.Option(..., "--sft", help="The SFT checkpoint: RUN_DIR/final of radgr train sft."),
    samples: Path = typer.Option(..., "--samples", help="Samples directory (radgr data samples): train.parquet."),
    out: Path = typer.Option(..., "--out",
                             help="Run directory: final/, checkpoints/, train_log.json, loss.png, rdrw_auc.png."),
    no_tlgd: bool = typer.Option(False, "--no-tlgd", help="RAD-DPO ablation: no token-level gradient detachment."),
    no_rdrw: bool = typer.Option(False, "--no-rdrw", help="RAD-DPO ablation: no dynamic reward weighting (w = 1)."),
    no_ml_sft: bool = typer.Option(False, "--no-ml-sft", help="RAD-DPO ablation: SFT term on y* only."),
    beta: float | None = typer.Option(None, "--beta",
                                      help="Loss β of dpo, simpo or rad-dpo (default: the method's, "
                                           "docs/alignment.md)."),
    gamma: float | None = typer.Option(None, "--gamma", help="Reward margin γ of simpo or rad-dpo."),
    orpo_lambda: float | None = typer.Option(None, "--orpo-lambda", help="ORPO's odds-ratio weight λ."),
    epochs: float = typer.Option(1.0, "--epochs"),
    max_steps: int = typer.Option(-1, "--max-steps", help="Stop after N optimizer steps (-1: use --epochs)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sessions per micro-batch (baselines: their pairs)."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    lr: float = typer.Option(1e-4, "--lr", help="Peak learning rate (cosine schedule, 5% warm-up)."),
    seed: int = typer.Option(0, "--seed"),
    save_steps: int = typer.Option(200, "--save-steps", help="Checkpoint every N optimizer steps."),
    logging_steps: int = typer.Option(10, "--logging-steps"),
    rdrw_window: int = typer.Option(4096, "--rdrw-window", help="RDRW warm-up and sliding window M, in pairs."),
    rdrw_layer: int = typer.Option(-1, "--rdrw-layer",
                                   help="Hidden state RDRW compares: 0 = embeddings, i = after layer i, "
                                        "-1 = last layer after the final norm (the paper's)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out."),
    limit: int | None = typer.Option(None, "--limit", help="Use only the first N sessions."),
) -> int:
    """Preference alignment from an SFT checkpoint."""
    from training.align import AlignConfig, run_align
    from training.losses import loss_configs
    from training.model import read_train_info
    from training.rdrw import RdrwConfig
    from training.rdrw_detector import RDRW_AUC_PLOT_FILE
    from training.train_config import TrainConfig
    from training.trainer import LOSS_PLOT_FILE, TRAIN_LOG_FILE

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        losses = loss_configs(method, beta=beta, gamma=gamma, orpo_lambda=orpo_lambda,
                              rad_switches={"tlgd": not no_tlgd, "rdrw": not no_rdrw, "ml_sft": not no_ml_sft})
        cfg = AlignConfig(
            method=method, sft_dir=sft, samples_dir=samples, out_dir=out,
            train=TrainConfig(epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
                              save_steps=save_steps, logging_steps=logging_steps, seed=seed),
            dpo=losses["dpo"], simpo=losses["simpo"], orpo=losses["orpo"], rad=losses["rad"],
            rdrw=RdrwConfig(window=rdrw_window, hidden_layer=rdrw_layer), resume=resume, limit=limit,
        )
        final = run_align(cfg)
    except (ValueError, OSError) as exc:
        return _fail(exc)
    info = read_train_info(final)
    t = Table(title=f"align {info.get('variant')} → {final}")
    t.add_column("statistic")
    t.add_column("value", justify="right")
    for key in ("steps", "train_loss", "sessions", "wall_seconds"):
        v = info.get(key)
        t.add_row(key, f"{v:.4f}" if isinstance(v, float) else str(v))
    if info.get("rdrw_final"):
        t.add_row("rdrw pairs seen", str(info["rdrw_final"]["seen"]))
        q = info["rdrw_final"]["quartiles"]
        t.add_row("rdrw quartiles", "warm-up" if q is None else ", ".join(f"{x:.3f}" for x in q))
    det = info.get("rdrw_auc")
    if det and det["pairs"]:
        auc = "n/a (one class)" if det["auc"] is None else f"{det['auc']:.4f}"
        t.add_row("rdrw detector AUC (1 − w)", f"{auc} over {det['pairs']} post-warm-up pairs "
                                               f"({det['relevant']} truly relevant)")
    console.print(t)
    console.print(f"log: {out / TRAIN_LOG_FILE}  loss curve: {out / LOSS_PLOT_FILE}")
    if (out / RDRW_AUC_PLOT_FILE).is_file():
        console.print(f"rdrw detector AUC per logging window: {out / RDRW_AUC_PLOT_FILE}")
    return 0


def paper_table_command(
    samples: Path = typer.Option(..., "--samples", help="Samples directory: train.parquet and test.parquet."),
    index: Path = typer.Option(..., "--index", help="SID index directory."),
    sft: Path = typer.Option(..., "--sft", help="The SFT checkpoint every method starts from (RUN_DIR/final)."),
    out: Path = typer.Option(..., "--out", help="Output directory: paper_table.{json,md,png}, runs/."),
    seeds: int = typer.Option(3, "--seeds", help="Seeds per aligned method."),
    config: str = typer.Option("default", "--config", help="default (≈ 60 min on 2 CPU cores) or tiny (CI)."),
    methods: str = typer.Option(ALL_ROWS, "--methods", help="Comma-separated subset of the rows."),
    dataset_name: str = typer.Option("simulated", "--dataset-name",
                                     help="Label of the data in the report, e.g. simulated or amazon."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Override the preset's steps per run."),
    lr: float | None = typer.Option(None, "--lr", help="Override the preset's learning rate."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Override the preset's sessions per step."),
    eval_limit: int | None = typer.Option(None, "--eval-limit", help="Override the preset's test sessions."),
    rdrw_window: int | None = typer.Option(None, "--rdrw-window", help="Override the preset's RDRW window M."),
    tuned: Path | None = typer.Option(None, "--tuned", help="tune.json of `radgr experiment tune`: each method "
                                                            "trains with its hyper-parameters chosen on validation."),
) -> int:
    """SFT, DPO, SimPO, ORPO, RAD-DPO and the three ablations from one SFT checkpoint, over seeds."""
    from training.experiment import ExperimentConfig, run_experiment
    from training.experiment_report import PAPER_NAMES

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    overrides: dict[str, object] = {}
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    if lr is not None:
        overrides["lr"] = lr
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    try:
        chosen: dict[str, dict[str, float]] = {}
        if tuned is not None:
            if not tuned.is_file():
                raise ValueError(f"--tuned {tuned} does not exist")
            chosen = {m: dict(c["overrides"]) for m, c in json.loads(tuned.read_text())["chosen"].items()}
        cfg = ExperimentConfig(samples_dir=samples, index_dir=index, sft_dir=sft, out_dir=out, seeds=seeds,
                               preset=config, variants=tuple(m.strip() for m in methods.split(",") if m.strip()),
                               dataset_name=dataset_name, overrides=overrides, eval_limit=eval_limit,
                               rdrw_window=rdrw_window, tuned=chosen)
        paths = run_experiment(cfg, progress=lambda msg: console.print(f"[bold]{msg}"))
    except (ValueError, OSError, KeyError) as exc:
        return _fail(exc)
    doc = json.loads(paths["json"].read_text())
    t = Table(title=f"paper table — {dataset_name} ({config}, {seeds} seed(s))")
    heads = ("halluc.", "R@10", "MRR", "SID R@8", "SID MRR")
    t.add_column("method")
    for h in heads:
        t.add_column(h, justify="right")
    for variant, row in doc["aggregate"].items():
        t.add_row(PAPER_NAMES[variant], *(f"{row[h][0]:.4f} ± {row[h][1]:.4f}" if h in row else "–" for h in heads))
    console.print(t)
    for c in doc["checks"]:
        console.print(f"{c['claim']}: holds on {c['holds_on']}/{c['of']} headline metrics")
    console.print(f"table: {paths['markdown']}  json: {paths['json']}  chart: {paths['png']}")
    return 0


def ab_command(
    world: Path = typer.Option(..., "--world", help="The simulated world: radgr data simulate's output directory."),
    out: Path = typer.Option(..., "--out", help="Output directory: ab_report.{json,md}, ab_lift.png, server logs."),
    url_a: str | None = typer.Option(None, "--url-a", help="Arm A's server, e.g. http://127.0.0.1:8000."),
    url_b: str | None = typer.Option(None, "--url-b", help="Arm B's server."),
    bundle_a: Path | None = typer.Option(None, "--bundle-a", help="Start radgr serve for this bundle as arm A."),
    bundle_b: Path | None = typer.Option(None, "--bundle-b", help="Start radgr serve for this bundle as arm B."),
    users: int = typer.Option(2000, "--users", help="Simulated users over both arms."),
    sessions_per_user: int = typer.Option(3, "--sessions-per-user", help="Searches per user, one after another."),
    rate: float = typer.Option(0.0, "--rate", help="Request starts per second over both arms (0 = unpaced)."),
    concurrency: int = typer.Option(8, "--concurrency", help="Requests in flight at most (users played at once)."),
    timeout_s: float = typer.Option(30.0, "--timeout-s", help="Per-request timeout; a timeout counts as a failure."),
    salt: str = typer.Option("radgr-ab-v1", "--salt", help="Salt of the user → arm hash."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulated users and their clicks."),
    top_k: int = typer.Option(0, "--top-k", help="Items asked for (0 = the world's exposure length)."),
    beam_width: int = typer.Option(128, "--beam-width", help="Beam width of every request."),
    label_a: str = typer.Option("A", "--label-a", help="Arm A's name in the report, e.g. SFT."),
    label_b: str = typer.Option("B", "--label-b", help="Arm B's name in the report, e.g. RAD-DPO."),
    engine: str = typer.Option("auto", "--engine", envvar="RADGR_ENGINE",
                               help="Engine of servers started with --bundle-a/--bundle-b: auto, torch or vllm."),
    server_threads: int = typer.Option(1, "--server-threads", help="torch threads of each started server."),
    max_failure_rate: float = typer.Option(0.01, "--max-failure-rate",
                                           help="Exit 1 when an arm's failed-request share exceeds this."),
) -> int:
    """A simulated online A/B test: simulated users of a world replayed against two servers over HTTP."""
    import contextlib
    import dataclasses
    import os
    import time
    from contextlib import AbstractContextManager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from training.ab_report import write_ab_files
    from training.ab_test import AbConfig, run_ab, served_bundles

    given = [x is not None for x in (url_a, url_b, bundle_a, bundle_b)]
    if given not in ([True, True, False, False], [False, False, True, True]):
        err_console.print("[red]error:[/red] give either --url-a and --url-b, or --bundle-a and --bundle-b")
        return 2
    for name, path in (("--bundle-a", bundle_a), ("--bundle-b", bundle_b)):
        if path is not None and not (path / "manifest.json").is_file():
            err_console.print(f"[red]error:[/red] {name}: {path} is not a bundle (no manifest.json)")
            return 2
    try:  # bad options fail before any server starts
        cfg = AbConfig(world_dir=world, url_a=url_a or "http://127.0.0.1", url_b=url_b or "http://127.0.0.1",
                       out_dir=out, users=users, sessions_per_user=sessions_per_user, salt=salt, seed=seed, rate=rate,
                       concurrency=concurrency, timeout_s=timeout_s, top_k=top_k, beam_width=beam_width,
                       label_a=label_a, label_b=label_b, api_key=os.environ.get("RADGR_API_KEY") or None)
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        return 2
    servers: AbstractContextManager[tuple[str, str]] = contextlib.nullcontext((cfg.url_a, cfg.url_b))
    if bundle_a is not None and bundle_b is not None:
        console.print(f"starting radgr serve ({engine}) for {bundle_a} and {bundle_b} …")
        servers = served_bundles(bundle_a, bundle_b, out, engine=engine, threads=server_threads)
    failed = {"A": 0, "B": 0}
    t_start = time.perf_counter()
    try:
        with servers as (a, b), Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                                         MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("requests", total=users * sessions_per_user)

            def tick(arm: str, failure: str | None) -> None:
                if failure is not None:
                    failed[arm] += 1
                bar.update(task, advance=1, description=f"requests (failed: A {failed['A']}, B {failed['B']})")

            doc = run_ab(dataclasses.replace(cfg, url_a=a, url_b=b), progress=tick)
    except (ValueError, RuntimeError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        return 2
    doc["total_wall_seconds"] = time.perf_counter() - t_start
    paths = write_ab_files(doc, out)
    t = Table(title=f"A/B: {label_b} (B) vs {label_a} (A), {users:,} users, {doc['wall_seconds']:.0f} s")
    for col in ("metric", "A", "B", "relative lift [95% CI]", "significant", "users/arm needed"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for key, lf in doc["lifts"].items():
        need = lf["users_per_arm_needed"]
        t.add_row(key, f"{lf['a']:.4f}", f"{lf['b']:.4f}",
                  f"{100 * lf['rel']:+.2f}% [{100 * lf['rel_ci'][0]:+.2f}, {100 * lf['rel_ci'][1]:+.2f}]",
                  "yes" if lf["significant"] else "no", "–" if need is None else f"{need:,}")
    console.print(t)
    rc = 0
    for arm, s in doc["arms"].items():
        if s["failed_requests"]:
            console.print(f"[red]arm {arm}: {s['failed_requests']} failed requests {s['failures']}[/red]")
        if s["failure_rate"] > max_failure_rate:
            rc = 1
    console.print(f"report: {paths['markdown']}  json: {paths['json']}  chart: {paths['png']}")
    return rc
