"""Confidence intervals and paired tests on evaluation entries (``radgr eval`` and the paper table).

Contract:
- An *entry* is one ``training.evaluate.evaluate_engine`` / ``evaluate_popularity`` report: its ``metrics`` and
  ``truth`` blocks carry ``per_session`` values (``score_rankings``) and a model's entry carries
  ``hallucination_per_session`` (invalid and generated SIDs of each session's unconstrained pass).
- ``metric_sample(entries, block, key)`` stacks one metric of one or more entries (the seeds of one method) into a
  ``training.stats.MetricSample`` [seeds, sessions]; block None is the hallucination rate (a pooled ratio). The
  entries must hold the same sessions in the same order (checked by session id).
- ``intervals(entries)`` → column header (``training.evaluate.TABLE_COLUMNS``) → ``{"estimate", "lo", "hi",
  "se"}``: the 95 % bootstrap interval over test sessions (and seeds); ``compare(a, b)`` → header → the paired
  difference a − b (``training.stats.paired_difference``: diff, interval, se, p, paired_se, sessions).
- ``add_eval_statistics(entries)`` gives every ``radgr eval`` entry ``ci`` (and ``ci_truth``) and every entry
  after the first a ``paired`` comparison with the first (the reference model of ``--against``, else the model).
- ``strip_sessions(entry)``: a copy without the per-session lists (reports keep intervals, not raw values).
- ``paired_summary(entry)``: the paired differences of an entry with its reference as readable lines.
- ``ci_cell`` / ``write_chart``: the markdown cell ``0.3679 [0.351, 0.386]`` and the bar chart with interval
  whiskers that ``radgr eval`` writes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sid_index.atomic_files import save_figure_atomic
from training.evaluate import TABLE_COLUMNS
from training.stats import MetricSample, bootstrap_ci, paired_difference, significance_mark

HALLUCINATION_KEY = "hallucination_per_session"


def _session_ids(entry: dict[str, Any], truth: bool) -> list[str] | None:
    ps = entry.get("truth" if truth else "metrics", {}).get("per_session")
    return None if ps is None else list(ps["session_ids"])


def metric_sample(entries: Sequence[dict[str, Any]], block: str | None, key: str | None,
                  truth: bool = False) -> MetricSample | None:
    """[seeds, sessions] values of one metric over ``entries`` (one per seed); None when any entry lacks them."""
    if not entries:
        return None
    if block is None:  # hallucination rate: invalid / generated SIDs, pooled
        if truth or any(HALLUCINATION_KEY not in e for e in entries):
            return None
        return MetricSample.of([e[HALLUCINATION_KEY]["invalid"] for e in entries],
                               [e[HALLUCINATION_KEY]["total"] for e in entries])
    ids = [_session_ids(e, truth) for e in entries]
    if any(i is None for i in ids):
        return None
    if any(i != ids[0] for i in ids):
        raise ValueError("entries to stack must hold the same test sessions in the same order")
    rows = [e["truth" if truth else "metrics"]["per_session"][block].get(key) for e in entries]
    if any(r is None for r in rows) or not rows[0]:
        return None
    return MetricSample.of(rows)


def intervals(entries: Sequence[dict[str, Any]], truth: bool = False, resamples: int = 2000,
              seed: int = 0) -> dict[str, dict[str, float]]:
    """Column header → bootstrap interval of the method whose runs (seeds) are ``entries``."""
    out = {}
    for header, block, key in TABLE_COLUMNS:
        sample = metric_sample(entries, block, key, truth)
        if sample is not None:
            out[header] = bootstrap_ci(sample, resamples=resamples, seed=seed)
    return out


def compare(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], truth: bool = False, resamples: int = 2000,
            seed: int = 0) -> dict[str, dict[str, float]]:
    """Column header → paired difference a − b over the same sessions (and seeds)."""
    if a and b and _session_ids(a[0], truth) != _session_ids(b[0], truth):
        raise ValueError("compared methods must be evaluated on the same test sessions")
    out = {}
    for header, block, key in TABLE_COLUMNS:
        sa, sb = metric_sample(a, block, key, truth), metric_sample(b, block, key, truth)
        if sa is not None and sb is not None:
            out[header] = paired_difference(sa, sb, resamples=resamples, seed=seed)
    return out


def add_eval_statistics(entries: list[dict[str, Any]]) -> None:
    """``ci``/``ci_truth`` on every entry; ``paired`` (vs the first entry) on the others. In place."""
    for k, e in enumerate(entries):
        e["ci"] = intervals([e])
        if e.get("truth", {}).get("sessions"):
            e["ci_truth"] = intervals([e], truth=True)
        if k > 0:
            e["paired"] = {"against": entries[0]["name"], "metrics": compare([e], [entries[0]])}


def strip_sessions(entry: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``entry`` without per-session values."""
    out = copy.deepcopy(entry)
    out.pop(HALLUCINATION_KEY, None)
    for block in ("metrics", "truth"):
        if isinstance(out.get(block), dict):
            out[block].pop("per_session", None)
    return out


def paired_summary(entry: dict[str, Any], headers: Sequence[str] = ("R@10", "MRR")) -> str:
    """One line per column: the entry's paired difference with its reference, its 95 % interval and p-value
    (``item R@10: rad-dpo − sft = +0.0123 [-0.0040, +0.0290], p = 0.14 (400 sessions, ...)``)."""
    paired = entry.get("paired")
    if not paired:
        raise ValueError(f"entry {entry.get('name')!r} has no paired comparison")
    lines = []
    for header in headers:
        d = paired["metrics"].get(header)
        if d is None:
            continue
        lines.append(f"item {header}: {entry['name']} − {paired['against']} = {d['diff']:+.4f} [{d['lo']:+.4f}, "
                     f"{d['hi']:+.4f}], p = {d['p']:.3g} ({d['sessions']} sessions, paired bootstrap)"
                     f"{' — significant' if d['p'] < 0.05 else ' — not significant at 5%'}")
    return "\n".join(lines)


def ci_cell(value: float | None, ci: dict[str, float] | None, mark: str = "") -> str:
    """``0.3679 [0.351, 0.386]`` (with a significance mark appended); ``–`` for no value."""
    if value is None:
        return "–"
    if ci is None:
        return f"{value:.4f}{mark}"
    return f"{value:.4f}{mark} [{ci['lo']:.3f}, {ci['hi']:.3f}]"


def paired_mark(entry: dict[str, Any], header: str) -> str:
    """Significance mark of an entry's paired comparison on one column (``training.stats.significance_mark``)."""
    p = entry.get("paired", {}).get("metrics", {}).get(header, {}).get("p")
    return significance_mark(p)


def write_chart(entries: Sequence[dict[str, Any]], path: Path) -> None:
    """Bars of every recall and MRR per method, with 95 % interval whiskers when the entries have ``ci``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in TABLE_COLUMNS if c[1] is not None]
    x = np.arange(len(cols))
    width = 0.8 / max(len(entries), 1)
    fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
    for k, e in enumerate(entries):
        vals = np.array([float(e["metrics"].get(kind, {}).get(key, 0.0)) for _, kind, key in cols])
        ci = e.get("ci", {})
        err = np.array([[max(v - ci[h]["lo"], 0.0), max(ci[h]["hi"] - v, 0.0)] if h in ci else [0.0, 0.0]
                        for v, (h, _, _) in zip(vals, cols, strict=True)]).T
        ax.bar(x + k * width, vals, width, yerr=err, capsize=2, label=e["name"])
    ax.set_xticks(x + width * (len(entries) - 1) / 2, [c[0] for c in cols], rotation=30)
    ax.set_ylabel("value (95% bootstrap interval over sessions)")
    ax.set_title("retrieval metrics on the test sessions")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)
