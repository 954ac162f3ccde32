"""The paper's table from evaluation entries: aggregation over seeds, the paper's claims, markdown, JSON and PNG.

Contract:
- An *entry* is one ``training.evaluate.evaluate_engine`` report (``metrics``/``truth`` blocks, hallucination rate)
  of one (variant, seed) run; ``aggregate`` gives variant → column header (``training.evaluate.TABLE_COLUMNS``) →
  ``[mean, sample std, n]``, missing metrics skipped.
- ``shape_checks`` checks the paper's qualitative ordering (docs/alignment.md, "The paper's ordering") on the
  headline metrics (:data:`CHECK_METRICS`); ``diagnostics_from_log`` reads a run's ``train_log.json`` means.
- ``write_table_files`` writes ``paper_table.json`` (the whole document), ``paper_table.md`` (tables, diagnostics,
  claims) and ``paper_table.png`` (headline metrics with error bars), each atomically. Rows come in
  :data:`PAPER_NAMES` order, which is ``training.experiment.VARIANTS``' order (a test keeps them equal).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sid_index.atomic_files import save_figure_atomic, write_json_atomic, write_text_atomic
from training.evaluate import TABLE_COLUMNS
from training.stats import ALPHA
from training.trainer import TRAIN_LOG_FILE

# variant → the paper's name for its row, in the table's row order
PAPER_NAMES = {"sft": "SFT", "dpo": "DPO", "simpo": "SimPO", "orpo": "ORPO", "rad-dpo": "RAD-DPO",
               "rad-dpo-no-tlgd": "w/o TLGD", "rad-dpo-no-rdrw": "w/o RDRW", "rad-dpo-no-ml-sft": "w/o ML-SFT"}
# the paired standard error of item R@10 differences the default preset is sized for (issue 19)
TARGET_SE = 0.005
# the metrics the qualitative checks compare (the paper's headline columns)
CHECK_METRICS = (("item", "recall@10"), ("item", "mrr"), ("sid", "recall@8"), ("sid", "mrr"))


# ------------------------------------------------------------------------------------------------ aggregation
def metric_of(entry: dict[str, Any], block: str | None, key: str | None, truth: bool = False) -> float | None:
    """One number of an evaluation entry (``evaluate_engine``'s report); block None = hallucination rate."""
    if block is None or key is None:
        rate = entry.get("hallucination_rate")
        return None if rate is None or truth else float(rate)
    source: dict[str, dict[str, float]] = entry.get("truth" if truth else "metrics", {})
    v = source.get(block, {}).get(key)
    return None if v is None else float(v)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (ddof 1; 0 for one value), n)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0, int(arr.size)


def aggregate(runs: dict[str, list[dict[str, Any]]], truth: bool = False) -> dict[str, dict[str, list[float]]]:
    """variant → column header → [mean, std, n] over that variant's runs (missing metrics skipped)."""
    out: dict[str, dict[str, list[float]]] = {}
    for variant, entries in runs.items():
        row: dict[str, list[float]] = {}
        for header, block, key in TABLE_COLUMNS:
            vals = [v for e in entries if (v := metric_of(e, block, key, truth)) is not None]
            if vals:
                m, s, n = mean_std(vals)
                row[header] = [m, s, n]
        out[variant] = row
    return out


def _header_of(block: str, key: str) -> str:
    return next(h for h, b, k in TABLE_COLUMNS if b == block and k == key)


def _paired_p(paired: dict[str, dict[str, Any]], a: str, b: str, header: str) -> float | None:
    """p of the paired test between variants a and b on one column (either direction), None if not run."""
    for x, y in ((a, b), (b, a)):
        r = paired.get(x, {}).get(f"vs_{y}", {}).get(header)
        if r is not None:
            return float(r["p"])
    return None


def shape_checks(agg: dict[str, dict[str, list[float]]],
                 paired: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The paper's qualitative ordering (docs/alignment.md, "The paper's ordering"), each claim checked on our means
    for the headline metrics.

    Claims: DPO < SFT; SimPO > SFT; ORPO > SFT; RAD-DPO ≥ every other method; each ablation < RAD-DPO.
    A claim "holds" on a metric when the means are ordered as claimed; ``p`` is the paired test's p-value where
    one of the two is SFT or RAD-DPO (``variant_statistics``), ``significant`` = p < 0.05; ``within_noise`` marks
    differences smaller than the larger of the two standard deviations over seeds.
    """
    claims: list[tuple[str, str, str, str]] = [("DPO below SFT", "dpo", "<", "sft"),
                                               ("SimPO above SFT", "simpo", ">", "sft"),
                                               ("ORPO above SFT", "orpo", ">", "sft")]
    for other in ("sft", "dpo", "simpo", "orpo"):
        claims.append((f"RAD-DPO above {PAPER_NAMES[other]}", "rad-dpo", ">", other))
    for abl in ("rad-dpo-no-tlgd", "rad-dpo-no-rdrw", "rad-dpo-no-ml-sft"):
        claims.append((f"{PAPER_NAMES[abl]} below RAD-DPO", abl, "<", "rad-dpo"))
    out = []
    for text, a, op, b in claims:
        if a not in agg or b not in agg:
            continue
        per_metric: dict[str, dict[str, Any]] = {}
        for block, key in CHECK_METRICS:
            h = _header_of(block, key)
            if h not in agg[a] or h not in agg[b]:
                continue
            (ma, sa, _), (mb, sb, _) = agg[a][h][:3], agg[b][h][:3]
            holds = ma < mb if op == "<" else ma > mb
            p = _paired_p(paired or {}, a, b, h)
            per_metric[f"{block} {key}"] = {"holds": bool(holds), "diff": ma - mb,
                                            "within_noise": bool(abs(ma - mb) <= max(sa, sb)), "p": p,
                                            "significant": p is not None and p < ALPHA}
        if per_metric:
            n_hold = sum(bool(v["holds"]) for v in per_metric.values())
            out.append({"claim": text, "metrics": per_metric, "holds_on": n_hold, "of": len(per_metric)})
    return out


def diagnostics_from_log(run_dir: Path) -> dict[str, float]:
    """Means over the logged steps of a training run: RDRW weights of pseudo-/irrelevant negatives (after warm-up),
    RDRW's detector AUC (mean over logging windows), their similarities, shared-prefix shares, final loss and reward
    margin."""
    path = run_dir / TRAIN_LOG_FILE
    if not path.is_file():
        return {}
    log = [r for r in json.loads(path.read_text()) if "loss" in r]
    if not log:
        return {}
    out: dict[str, float] = {}
    warm = [r for r in log if r.get("rdrw/warm") == 1.0]
    for key in ("rdrw/weight_pseudo_neg", "rdrw/weight_irrelevant_neg", "rdrw/mean_weight"):
        vals = [r[key] for r in warm if key in r]
        if vals:
            out[key] = float(np.mean(vals))
    for key in ("rdrw/auc", "rdrw/similarity_pseudo_neg", "rdrw/similarity_irrelevant_neg", "pairs/shared_first",
                "pairs/shared_two", "rewards/margin", "rewards/accuracy"):
        vals = [r[key] for r in log if key in r]
        if vals:
            out[key] = float(np.mean(vals))
    out["final_loss"] = float(log[-1]["loss"])
    return out


# ------------------------------------------------------------------------------------------------ report
def _fmt(cell: list[float] | None, ci: dict[str, float] | None = None, mark: str = "") -> str:
    """``mean ± std`` over seeds, or with a bootstrap interval ``mean [lo, hi]`` and significance marks."""
    if cell is None:
        return "–"
    m, s, n = cell
    if ci is not None:
        return f"{m:.4f}{mark} [{ci['lo']:.3f}, {ci['hi']:.3f}]"
    return f"{m:.4f}" if n <= 1 else f"{m:.4f} ± {s:.4f}"


def _marks(doc: dict[str, Any], variant: str, header: str) -> str:
    """† p < 0.05 against SFT, ‡ p < 0.05 against RAD-DPO (paired tests over the same sessions and seeds)."""
    paired = doc.get("statistics", {}).get("paired", {}).get(variant, {})
    out = ""
    for ref, sym in (("sft", "†"), ("rad-dpo", "‡")):
        r = paired.get(f"vs_{ref}", {}).get(header)
        if r is not None and r["p"] < ALPHA:
            out += sym
    return out


def variant_statistics(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Bootstrap intervals of every variant (over sessions and seeds) and paired tests against SFT and RAD-DPO.

    ``{"intervals": {variant: {header: ci}}, "intervals_truth": {...}, "paired": {variant: {"vs_sft": {header:
    diff}, "vs_rad-dpo": {...}}}}`` (``training.eval_intervals``); entries without per-session values give none.
    """
    from training.eval_intervals import compare, intervals

    stats: dict[str, Any] = {"intervals": {}, "intervals_truth": {}, "paired": {}}
    for v, entries in runs.items():
        stats["intervals"][v] = intervals(entries)
        if any(e.get("truth", {}).get("sessions") for e in entries):
            stats["intervals_truth"][v] = intervals(entries, truth=True)
        for ref in ("sft", "rad-dpo"):
            if ref in runs and ref != v:
                stats["paired"].setdefault(v, {})[f"vs_{ref}"] = compare(entries, runs[ref])
    stats["sizing"] = sizing(stats["paired"])
    return stats


def sizing(paired: dict[str, dict[str, Any]], header: str = "R@10", target_se: float = TARGET_SE
           ) -> dict[str, dict[str, float]]:
    """Per comparison: the measured paired standard error of ``header`` differences (sd of the per-session,
    seed-averaged differences / √n) and the test sessions that would bring it to ``target_se``: ⌈(sd / target)²⌉."""
    from training.stats import sessions_needed

    out = {}
    for v, refs in paired.items():
        for ref, cols in refs.items():
            r = cols.get(header)
            if r is None or not math.isfinite(r["paired_se"]):
                continue
            sd = r["paired_se"] * math.sqrt(r["sessions"])
            out[f"{v} {ref}"] = {"paired_se": r["paired_se"], "per_session_sd": sd, "sessions": r["sessions"],
                                 "sessions_for_target": sessions_needed(sd, target_se) if sd > 0 else 0,
                                 "target_se": target_se}
    return out


def paired_table(doc: dict[str, Any]) -> list[str]:
    """Markdown lines: each variant minus SFT and minus RAD-DPO on the headline metrics, interval and p."""
    paired = doc.get("statistics", {}).get("paired", {})
    heads = [_header_of(b, k) for b, k in CHECK_METRICS]
    lines = ["| method | vs | " + " | ".join(f"Δ {'item ' + h if h in ('R@10', 'MRR') else h}" for h in heads)
             + " |", "|" + "---|" * (len(heads) + 2)]
    for v in PAPER_NAMES:
        for ref in ("sft", "rad-dpo"):
            row = paired.get(v, {}).get(f"vs_{ref}")
            if not row:
                continue
            cells = [(f"{row[h]['diff']:+.4f} [{row[h]['lo']:+.3f}, {row[h]['hi']:+.3f}] p {row[h]['p']:.3f}"
                      if h in row else "–") for h in heads]
            lines.append("| " + " | ".join([PAPER_NAMES[v], PAPER_NAMES[ref], *cells]) + " |")
    return lines if len(lines) > 2 else []


def markdown_report(doc: dict[str, Any]) -> str:
    """The whole markdown page: table(s), diagnostics, claims."""
    variants = [v for v in PAPER_NAMES if v in doc["aggregate"]]
    head = "| method | " + " | ".join(h for h, _, _ in TABLE_COLUMNS) + " |"
    sep = "|" + "---|" * (len(TABLE_COLUMNS) + 1)
    lines = [f"## Paper table — {doc['dataset']} data ({doc['preset']} config, {doc['seeds']} seed(s))", "",
             head, sep]
    ivs = doc.get("statistics", {}).get("intervals", {})
    for v in variants:
        cells = [_fmt(doc["aggregate"][v].get(h), ivs.get(v, {}).get(h), _marks(doc, v, h))
                 for h, _, _ in TABLE_COLUMNS]
        lines.append("| " + " | ".join([PAPER_NAMES[v], *cells]) + " |")
    note = ("mean over seeds [95% bootstrap interval over test sessions and seeds]; † / ‡: a paired test against "
            "SFT / RAD-DPO over the same sessions and seeds gives p < 0.05" if ivs else "mean ± sample std over seeds")
    lines += ["", f"{note}; SFT is one checkpoint (n = 1). {doc['test_sessions']} test sessions, "
              f"beam {doc['eval']['beam_width']}, top-{doc['eval']['top_k']} items."]
    siz = doc.get("statistics", {}).get("sizing", {})
    if siz:
        worst = max(siz.values(), key=lambda r: r["paired_se"])
        lines += ["", f"Paired standard error of item R@10 differences: at most {worst['paired_se']:.4f} here "
                  f"(target {TARGET_SE}); the largest per-session sd {worst['per_session_sd']:.3f} needs "
                  f"{worst['sessions_for_target']} test sessions for the target."]
    ptab = paired_table(doc)
    if ptab:
        lines += ["", "### Paired differences (method − reference, same sessions and seeds; paired bootstrap)", "",
                  *ptab]
    truth = doc.get("aggregate_truth", {})
    if any(truth.get(v) for v in variants):
        lines += ["", "### Against the simulator's true relevance", "", head, sep]
        ivt = doc.get("statistics", {}).get("intervals_truth", {})
        for v in variants:
            cells = [_fmt(truth[v].get(h), ivt.get(v, {}).get(h)) if h in truth.get(v, {}) else "–"
                     for h, _, _ in TABLE_COLUMNS]
            lines.append("| " + " | ".join([PAPER_NAMES[v], *cells]) + " |")
    diag = doc.get("diagnostics", {})
    if diag:
        keys = [("rdrw/mean_weight", "mean w"), ("rdrw/auc", "RDRW AUC"),
                ("rdrw/weight_pseudo_neg", "w pseudo-neg"), ("rdrw/weight_irrelevant_neg", "w irrelevant neg"),
                ("rdrw/similarity_pseudo_neg", "cos pseudo-neg"), ("rdrw/similarity_irrelevant_neg", "cos irrel."),
                ("pairs/shared_first", "share 1st tok"), ("pairs/shared_two", "share 2 tok"),
                ("rewards/margin", "reward margin"), ("rewards/accuracy", "margin > 0"), ("final_loss", "final loss")]
        lines += ["", "### Alignment diagnostics (means over logged steps and seeds; RDRW weights after warm-up)", "",
                  "| method | " + " | ".join(n for _, n in keys) + " |", "|" + "---|" * (len(keys) + 1)]
        for v in variants:
            if v in diag:
                lines.append("| " + " | ".join([PAPER_NAMES[v], *(f"{diag[v][k]:.4f}" if k in diag[v] else "–"
                                                                   for k, _ in keys)]) + " |")
    if doc.get("run_info"):
        from training.run_info import format_run_info

        lines += ["", format_run_info(doc["run_info"]), f"Wall time: {doc.get('wall_seconds', 0.0):.0f} s."]
    checks = doc.get("checks", [])
    if checks:
        lines += ["", "### The paper's ordering, checked (item R@10, item MRR, SID R@8, SID MRR; p: paired test)", "",
                  "| claim | holds on | details |", "|---|---|---|"]
        for c in checks:
            det = "; ".join(f"{m}: {'✓' if r['holds'] else '✗'} {r['diff']:+.4f}"
                            + (f" (p {r['p']:.3f}{', significant' if r['significant'] else ''})"
                               if r.get("p") is not None else
                               f"{' (within noise)' if r['within_noise'] else ''}")
                            for m, r in c["metrics"].items())
            lines.append(f"| {c['claim']} | {c['holds_on']}/{c['of']} | {det} |")
    return "\n".join(lines) + "\n"


def write_chart(doc: dict[str, Any], path: Path) -> None:
    """Grouped bars with std error bars: the headline metrics per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in PAPER_NAMES if v in doc["aggregate"]]
    heads = [_header_of(b, k) for b, k in CHECK_METRICS]
    fig, axes = plt.subplots(1, len(heads), figsize=(4 * len(heads), 4), dpi=100)
    colors = plt.get_cmap("tab10")(np.arange(len(variants)))
    for ax, h in zip(np.atleast_1d(axes), heads, strict=True):
        cells = [doc["aggregate"][v].get(h) for v in variants]
        means = [c[0] if c else 0.0 for c in cells]
        stds = [c[1] if c else 0.0 for c in cells]
        ax.bar(range(len(variants)), means, yerr=stds, color=colors, capsize=3)
        ax.set_xticks(range(len(variants)), [PAPER_NAMES[v] for v in variants], rotation=45, ha="right")
        lo = min(means) if means else 0.0
        hi = max(m + s for m, s in zip(means, stds, strict=True)) if means else 1.0
        ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo + 1e-9) - 0.01), hi + 0.05 * (hi - lo + 1e-9) + 1e-4)
        ax.set_title("item " + h if h in ("R@10", "MRR") else h)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{doc['dataset']} data: mean ± std over {doc['seeds']} seed(s)")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)


def mean_diagnostics(diagnostics: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """variant → each diagnostic's mean over that variant's runs (runs lacking a key are skipped for it)."""
    return {v: {key: float(np.mean([d[key] for d in ds if key in d])) for key in {k for d in ds for k in d}}
            for v, ds in diagnostics.items()}


def write_table_files(out_dir: Path, doc: dict[str, Any], done: int, total: int) -> dict[str, Path]:
    """``paper_table.json`` / ``.md`` / ``.png`` in ``out_dir``, atomically; the markdown is marked partial while
    ``done < total``. Returns their paths."""
    paths = {"json": out_dir / "paper_table.json", "markdown": out_dir / "paper_table.md",
             "png": out_dir / "paper_table.png"}
    write_json_atomic(paths["json"], doc, indent=1, sort_keys=False)
    md = markdown_report(doc)
    if done < total:
        md = f"**Partial: {done} of {total} runs finished.**\n\n" + md
    write_text_atomic(paths["markdown"], md)
    write_chart(doc, paths["png"])
    return paths
