"""``radgr data simulate | import-amazon | samples`` — make sessions and turn them into training samples.

    radgr data simulate --out runs/sim [--items 2400 --users 800 --sessions-per-day 1500 --days 8
                        --position-bias 1.0 --ranker-noise 1.0 --relevant-breadth 6 --seed 0]
                        [--catalog real_catalog.parquet]
    radgr data import-amazon --dataset ../shared/datasets/amazon18-industrial --out runs/amazon [--expand-histories]
    radgr data samples --sessions runs/sim/sessions.parquet --index runs/sim/index --catalog runs/sim/catalog.parquet
                       --out runs/sim/samples [--no-hard-search] [--num-negatives 3] [--max-history 50]
                       [--split-by-day | --split-file splits.csv] [--shards N [--ray local|auto|HOST:PORT]]

Each command builds a config, calls ``training.data``, prints what it made and returns 0; bad input (an invalid
option, a missing, truncated or corrupted file) prints one line naming the field or file and returns 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from decoding.request_prompt import PromptConfig
from sid_index.catalog import read_catalog
from sid_index.index import SidIndex
from training.data.amazon import AmazonImportConfig, import_amazon
from training.data.samples import SampleConfig, build_samples, read_split_file
from training.data.schema import count_sessions
from training.data.shards import build_samples_sharded
from training.data.shards_ray import RayMissingError, build_samples_ray, check_address
from training.data.sim_config import SimConfig
from training.data.simulator import simulate_to_dir

app = typer.Typer(no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)
MAX_SHARDS = 10_000  # shard jobs of one build (each writes its own folder; the merge opens them one by one)


def _progress() -> Progress:
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def _fail(exc: BaseException) -> int:
    """Report bad input on one stderr line (the message names the file or field; no markup, no wrapping): exit 2."""
    err_console.print(f"[red]error:[/red] {escape(' '.join(str(exc).split()))}", soft_wrap=True)
    return 2


def _table(title: str, rows: dict[str, Any]) -> Table:
    t = Table(title=title)
    t.add_column("statistic")
    t.add_column("value", justify="right")
    for k, v in rows.items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    return t


@app.command("simulate")
def simulate_command(
    out: Path = typer.Option(..., help="Output directory: catalog.parquet, sessions.parquet, sim_stats.json."),
    catalog: Path | None = typer.Option(None, help="Sit on a real catalog (titles); categories are derived."),
    items: int = typer.Option(SimConfig.items, help="Items in a generated catalog."),
    users: int = typer.Option(SimConfig.users),
    sessions_per_day: int = typer.Option(SimConfig.sessions_per_day),
    days: int = typer.Option(SimConfig.days),
    exposure_length: int = typer.Option(SimConfig.exposure_length),
    position_bias: float = typer.Option(SimConfig.position_bias, help="Examination of rank k = (k+1)^-bias."),
    ranker_noise: float = typer.Option(SimConfig.ranker_noise),
    popularity_weight: float = typer.Option(SimConfig.popularity_weight),
    relevant_breadth: int = typer.Option(SimConfig.relevant_breadth, help="Max relevant items per query."),
    typo_rate: float = typer.Option(SimConfig.typo_rate),
    real_categories: int = typer.Option(SimConfig.real_categories, help="Categories to derive (0 = auto)."),
    seed: int = typer.Option(SimConfig.seed),
) -> int:
    """Simulate search sessions with ground truth."""
    try:
        cfg = SimConfig(items=items, users=users, sessions_per_day=sessions_per_day, days=days,
                        exposure_length=exposure_length, position_bias=position_bias, ranker_noise=ranker_noise,
                        popularity_weight=popularity_weight, relevant_breadth=relevant_breadth, typo_rate=typo_rate,
                        real_categories=real_categories, seed=seed)
        with _progress() as prog:
            task = prog.add_task("simulating sessions", total=cfg.sessions_per_day * cfg.days)
            stats = simulate_to_dir(cfg, out, catalog, progress=lambda n: prog.advance(task, n))
    except (ValueError, OSError) as exc:
        return _fail(exc)
    console.print(_table(f"simulated → {out}", stats.to_dict()))
    return 0


@app.command("import-amazon")
def import_amazon_command(
    dataset: Path = typer.Option(..., help="Directory with items.json, valid.csv, test.csv (MiniOneRec layout)."),
    out: Path = typer.Option(..., help="Output directory: catalog.parquet, sessions.parquet."),
    expand_histories: bool = typer.Option(False, help="Also make next-item sessions from history prefixes."),
    min_history: int = typer.Option(1, help="Shortest history prefix of an expanded session."),
) -> int:
    """Import an Amazon-2018 category (empty queries, purchase = click + order, day 1 = train, day 2 = test)."""
    try:
        cfg = AmazonImportConfig(expand_histories=expand_histories, min_history=min_history)
        _, stats = import_amazon(dataset, out, cfg)
    except (ValueError, OSError) as exc:
        return _fail(exc)
    console.print(_table(f"imported → {out}", {"items": stats.items, "train sessions (day 1)": stats.train_sessions,
                                               "test sessions (day 2)": stats.test_sessions,
                                               "expanded sessions": stats.expanded_sessions,
                                               "files": ", ".join(stats.files)}))
    return 0


@app.command("samples")
def samples_command(
    sessions: Path = typer.Option(..., help="sessions.parquet"),
    index: Path = typer.Option(..., help="SID index directory (radgr index build)."),
    out: Path = typer.Option(..., help="Output directory: train/test.parquet, stats.json, query_categorizer.json."),
    catalog: Path | None = typer.Option(None, help="Catalog: random negatives are drawn from its items."),
    hard_search: bool = typer.Option(True, "--hard-search/--no-hard-search", help="Filter history by category."),
    num_negatives: int = typer.Option(3),
    max_history: int = typer.Option(50),
    split_by_day: bool = typer.Option(False, "--split-by-day", help="Last day = test, earlier = train (default)."),
    split_file: Path | None = typer.Option(None, help="CSV session_id,split instead of the split by day."),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(8192, help="Sessions per streamed batch."),
    shards: int = typer.Option(1, help="Independent shard jobs (training/data/shards.py; same files as one job). "
                                       "1 = one job; N > 1 = N fit and N build jobs, in this process unless --ray."),
    ray_address: str | None = typer.Option(None, "--ray", metavar="local|auto|HOST:PORT",
                                           help="Run the shard jobs as Ray tasks: 'local' starts Ray on this "
                                                "machine, 'auto' or HOST:PORT joins a running cluster (needs the "
                                                "cluster extra)."),
) -> int:
    """Build training samples (prompt, positives, top positive, N negatives) split into train and test."""
    if split_by_day and split_file is not None:
        return _fail(ValueError("--split-by-day and --split-file exclude each other; give one"))
    if not 1 <= shards <= MAX_SHARDS:
        return _fail(ValueError(f"--shards must be in [1, {MAX_SHARDS}], given {shards}"))
    try:
        address = check_address(ray_address)
    except ValueError as exc:
        return _fail(ValueError(f"--ray: {exc}"))
    try:
        cfg = SampleConfig(num_negatives=num_negatives, prompt=PromptConfig(max_history=max_history,
                                                                            hard_search=hard_search),
                           split="file" if split_file is not None else "day", seed=seed, batch_size=batch_size)
        split_map = read_split_file(split_file) if split_file is not None else None
        pool = read_catalog(catalog).item_ids if catalog is not None else None
        if ray_address is not None:
            with console.status(f"building samples: {shards} shard jobs as Ray tasks ({ray_address})"):
                stats = build_samples_ray(sessions, index, out, cfg, shards, address=address, split_map=split_map,
                                          pool_item_ids=pool)
        elif shards > 1:
            sid_index = SidIndex.load(index)
            with console.status(f"building samples: {shards} shard jobs in this process"):
                stats = build_samples_sharded(sessions, sid_index, out, cfg, shards, split_map, pool)
        else:
            sid_index = SidIndex.load(index)
            total = count_sessions(sessions)
            with _progress() as prog:
                task = prog.add_task("building samples", total=total)
                stats = build_samples(sessions, sid_index, out, cfg, split_map, pool,
                                      progress=lambda n: prog.advance(task, n))
    except RayMissingError as exc:
        return _fail(ValueError(f"--ray: {exc}"))
    except (ValueError, OSError, KeyError) as exc:  # KeyError: a session names an item the index lacks
        return _fail(exc)
    head = {k: v for k, v in stats.items() if not isinstance(v, dict)}
    console.print(_table(f"samples → {out}", head))
    for split in ("train", "test"):
        console.print(_table(f"{split}", stats[split]))
    console.print(f"stats: {json.dumps(stats['all'])}")
    return 0
