"""``radgr export`` and ``radgr bundle verify`` — turn a trained checkpoint into a servable bundle, check one.

- ``radgr export --checkpoint RUN_DIR/final --index INDEX_DIR --samples SAMPLES_DIR --out BUNDLE
  [--metrics eval.json] [--name NAME] [--overwrite]``: writes the bundle atomically and verifies it.
- ``radgr bundle verify BUNDLE``: every check of :func:`decoding.bundle.verify_bundle`; prints a summary.
Exit codes: 0 ok; 1 the bundle (or its inputs) is inconsistent or damaged (the message says which check and
file: a flipped byte in any bundle file fails its sha256, the manifest's own included); 2 bad input: an invalid
option, or an input file (checkpoint, index) missing, truncated or corrupt. Every error is one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def _fail(exc: BaseException, what: str = "error:", code: int = 2) -> int:
    """Report an error on one stderr line (the message names the file or check; no markup, no wrapping)."""
    err_console.print(f"[red]{escape(what)}[/red] {escape(' '.join(str(exc).split()))}", soft_wrap=True)
    return code


def _summary(manifest: dict[str, Any]) -> Table:
    table = Table(title=f"bundle {manifest['name']}")
    table.add_column("field")
    table.add_column("value")
    prov = manifest["provenance"]
    table.add_row("format", f"{manifest['format']} v{manifest['format_version']}")
    table.add_row("prompt version", str(manifest["prompt"]["version"]))
    table.add_row("method / steps", f"{prov.get('method')} / {prov.get('steps')}")
    table.add_row("SIDs / items", f"{manifest['index']['num_sids']:,} / {manifest['index']['num_items']:,}")
    levels = manifest["sid_layout"]["levels"]
    table.add_row("SID tokens", ", ".join(f"L{lv['level']}: {lv['size']} @ {lv['offset']}" for lv in levels))
    table.add_row("files (sha256 checked)", str(len(manifest["files"])))
    leaves = _numeric_leaves(prov.get("metrics") or {})
    if leaves:
        quality = [(k, v) for k, v in leaves if "recall" in k or "mrr" in k] or leaves
        table.add_row("metrics", ", ".join(f"{k}={v:.4f}" for k, v in quality[:6]))
    return table


def _numeric_leaves(obj: object, prefix: str = "") -> list[tuple[str, float]]:
    """Numbers in a nested JSON value as dotted paths (list elements by position), in document order."""
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float):
        return [(prefix, float(obj))]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    out: list[tuple[str, float]] = []
    for key, value in items:
        out.extend(_numeric_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def export_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Trained model directory, e.g. RUN_DIR/final."),
    index: Path = typer.Option(..., "--index", help="SID index directory the model was trained with."),
    samples: Path = typer.Option(..., "--samples", help="Samples directory (holds query_categorizer.json)."),
    out: Path = typer.Option(..., "--out", help="Bundle directory to write (atomically)."),
    metrics: Path | None = typer.Option(None, "--metrics", help="Evaluation JSON to record in the manifest."),
    name: str | None = typer.Option(None, "--name", help="Model name reported by the server."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle."),
) -> int:
    """Export a checkpoint and its SID index as a servable bundle."""
    from decoding.bundle import BundleError, read_manifest
    from training.export import ExportConfig, export_bundle

    try:
        cfg = ExportConfig(checkpoint=checkpoint, index_dir=index, samples_dir=samples, out=out,
                           metrics_path=metrics, name=name, overwrite=overwrite)
        with console.status("exporting bundle"):
            path = export_bundle(cfg)
    except BundleError as exc:
        return _fail(exc, "export failed:", 1)
    except (ValueError, OSError) as exc:
        return _fail(exc, "export failed:", 2)
    console.print(_summary(read_manifest(path)))
    console.print(f"bundle written and verified: {path}")
    return 0


def verify_command(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
) -> int:
    """Check a bundle's files, checksums, tokenizer SID tokens and index."""
    from decoding.bundle import BundleError, verify_bundle

    try:
        with console.status("verifying bundle"):
            manifest = verify_bundle(bundle)
    except BundleError as exc:
        return _fail(exc, f"bundle {bundle} is invalid:", 1)
    console.print(_summary(manifest))
    console.print(f"bundle {bundle}: OK")
    return 0
