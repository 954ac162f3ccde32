"""Checkpoint export: a trained model directory plus its SID index and query categorizer become one servable
bundle (format in :mod:`decoding.bundle`).

Usage: ``radgr export --checkpoint RUN_DIR/final --index INDEX_DIR --samples SAMPLES_DIR --out BUNDLE
[--metrics eval.json]``.

Contract of ``export_bundle(cfg)``:
1. the checkpoint is a Hugging Face model directory (config.json, safetensors, fast tokenizer) that passes
   :func:`training.model.check_model_dir` (every file the training run wrote has its sha256, so a bundle is never
   sealed around a truncated or corrupt file); its ``radgr_train.json`` (if any) gives the provenance (method,
   steps, data) and must carry this code's prompt version and the index's codebook sizes;
2. ``SAMPLES_DIR/query_categorizer.json`` is the hard-search categorizer the samples were built with, and
   ``SAMPLES_DIR/stats.json`` (if any) gives the prompt config (history cap, hard search);
3. ``--metrics`` (a JSON object, e.g. ``radgr eval``'s output) is copied into the provenance;
4. :func:`decoding.bundle.write_bundle` writes the bundle atomically, then it is verified once more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decoding.bundle import BundleError, verify_bundle, write_bundle
from decoding.prompt import PROMPT_VERSION
from decoding.request_prompt import PromptConfig

TRAIN_INFO_FILE = "radgr_train.json"  # written by training.model.save_model_dir


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path
    index_dir: Path
    samples_dir: Path
    out: Path
    metrics_path: Path | None = None
    name: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        for field_name in ("checkpoint", "index_dir", "samples_dir", "out"):
            if not isinstance(getattr(self, field_name), Path):
                raise ValueError(f"ExportConfig.{field_name} must be a Path, given {getattr(self, field_name)!r}")
        if self.name is not None and not 1 <= len(self.name) <= 128:
            raise ValueError(f"ExportConfig.name must be 1..128 characters, given {len(self.name)}")


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BundleError(f"{what} {str(path)!r} cannot be read: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise BundleError(f"{what} {str(path)!r} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{what} {str(path)!r} must hold a JSON object, given {type(data).__name__}")
    return data


def provenance_from_train_info(info: dict[str, Any], checkpoint: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """The manifest's provenance: where the weights came from and how good they were."""
    model = info.get("model") if isinstance(info.get("model"), dict) else {}
    return {
        "method": str(info.get("method", "unknown")),
        "steps": int(info.get("steps", 0)),
        "data": info.get("data", {}),
        "metrics": metrics,
        "checkpoint": str(checkpoint),
        "model": model,
        "train_loss": info.get("train_loss"),
        "parent": info.get("parent") or info.get("init_from"),
    }


def default_bundle_name(info: dict[str, Any]) -> str:
    raw = info.get("model")
    model: dict[str, Any] = raw if isinstance(raw, dict) else {}
    base = model.get("preset") or Path(str(model.get("base_model") or "model")).name
    return f"radgr-{base}-{info.get('method', 'unknown')}-step{int(info.get('steps', 0))}"


def export_bundle(cfg: ExportConfig) -> Path:
    """Write the bundle (see the module docstring); returns its path."""
    if not (cfg.checkpoint / "config.json").is_file():
        raise BundleError(f"checkpoint {str(cfg.checkpoint)!r} is not a model directory (no config.json)")
    from training.model import check_model_dir

    check_model_dir(cfg.checkpoint)  # ValueError naming the file: never seal a bundle around a damaged one
    info_path = cfg.checkpoint / TRAIN_INFO_FILE
    info = _read_json_object(info_path, "training info") if info_path.is_file() else {}
    if "prompt_version" in info and info["prompt_version"] != PROMPT_VERSION:
        raise BundleError(f"checkpoint was trained on prompt version {info['prompt_version']!r}, this code renders "
                          f"{PROMPT_VERSION!r}")
    categorizer = cfg.samples_dir / "query_categorizer.json"
    if not categorizer.is_file():
        raise BundleError(f"samples directory {str(cfg.samples_dir)!r} has no query_categorizer.json")
    stats_path = cfg.samples_dir / "stats.json"
    stats = _read_json_object(stats_path, "samples stats") if stats_path.is_file() else {}
    if "prompt_version" in stats and stats["prompt_version"] != PROMPT_VERSION:
        raise BundleError(f"samples were rendered with prompt version {stats['prompt_version']!r}, this code renders "
                          f"{PROMPT_VERSION!r}")
    defaults = PromptConfig()
    prompt_cfg = PromptConfig(max_history=int(stats.get("max_history", defaults.max_history)),
                              hard_search=bool(stats.get("hard_search", defaults.hard_search)))
    metrics = _read_json_object(cfg.metrics_path, "metrics") if cfg.metrics_path is not None else {}
    provenance = provenance_from_train_info(info, cfg.checkpoint, metrics)
    provenance["samples"] = str(cfg.samples_dir)
    provenance["index"] = str(cfg.index_dir)
    if "codebook_sizes" in info:
        from sid_index.index import SidIndex

        sizes = tuple(SidIndex.load(cfg.index_dir).codebook_sizes)
        if tuple(int(s) for s in info["codebook_sizes"]) != sizes:
            raise BundleError(f"checkpoint was trained on codebook sizes {tuple(info['codebook_sizes'])}, the index "
                              f"has {sizes}")
    out = write_bundle(cfg.out, cfg.checkpoint, cfg.index_dir, categorizer, provenance,
                       name=cfg.name or default_bundle_name(info), prompt_config=prompt_cfg, overwrite=cfg.overwrite)
    verify_bundle(out)
    return out
