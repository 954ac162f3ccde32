"""The paper's thesis on the simulator: RAD-DPO's gain over DPO and SimPO, and each ablation's loss, as the rates
that the paper says break DPO grow.

The sweep (``radgr experiment thesis-sweep``, ``cli/sweep_cmd.py``) builds one world per *point*: the base world,
then one knob moved to a lower and a higher level, others at base:

- ``position_bias``: examination of rank k is (k+1)^-bias, so more relevant items are shown and not clicked, i.e.
  more pseudo-negatives among the exposed negatives;
- ``relevant_breadth``: relevant items per query, i.e. more positives per session (multi-label) and more relevant
  items left unclicked (pseudo-negatives);
- ``codebooks``: fewer level-1 codes put more items under one first SID token, i.e. more (positive, negative)
  pairs that share a SID prefix.

Each point runs the paper table (``training.experiment``) on its own world. This module only reads what those
runs wrote; its contract:

- :func:`point_rates` reads a point's ``samples/stats.json`` (train split): the pseudo-negative rate (negatives
  truly relevant), positives per sample (multi-label), and the shares of pairs sharing the first / first two SID
  tokens.
- :func:`point_comparisons` reads the per-session evaluations under ``table/runs/*/eval.json`` and returns, for
  each comparison of :data:`COMPARISONS`, the paired difference (``training.eval_intervals.compare``: estimate,
  95 % interval over sessions and seeds, p) of each headline metric, against the simulator's true relevance
  (``truth``) and against the logged clicks and orders (``logged``).
- :func:`sweep_report` gathers every finished point; :func:`write_sweep_files` writes ``sweep.json``, ``sweep.md``
  (one table per knob) and ``sweep.png`` (one panel per knob and comparison, intervals as error bars), atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sid_index.atomic_files import save_figure_atomic, write_json_atomic, write_text_atomic

HEADLINE = ("R@10", "MRR")
# (label, variant a, variant b): the paired difference a − b; gains of RAD-DPO, losses of its ablations
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("RAD-DPO − DPO", "rad-dpo", "dpo"),
    ("RAD-DPO − SimPO", "rad-dpo", "simpo"),
    ("w/o TLGD − RAD-DPO", "rad-dpo-no-tlgd", "rad-dpo"),
    ("w/o RDRW − RAD-DPO", "rad-dpo-no-rdrw", "rad-dpo"),
    ("w/o ML-SFT − RAD-DPO", "rad-dpo-no-ml-sft", "rad-dpo"),
)
SWEEP_VARIANTS = ("sft", "dpo", "simpo", "rad-dpo", "rad-dpo-no-tlgd", "rad-dpo-no-rdrw", "rad-dpo-no-ml-sft")
RATE_OF_KNOB = {"position_bias": "pseudo_negative_rate", "relevant_breadth": "positives_per_sample",
                "codebooks": "share_first_token"}


@dataclass(frozen=True)
class SweepPoint:
    """One world of the sweep: ``knob`` moved to ``value`` (the base point has knob ``base``)."""

    name: str
    knob: str
    value: str
    sim_options: tuple[str, ...]  # extra ``radgr data simulate`` options
    codebooks: str


def point_rates(samples_dir: Path) -> dict[str, float | None]:
    """The rates the knobs move, measured on the point's training samples."""
    train = json.loads((samples_dir / "stats.json").read_text())["train"]
    return {"pseudo_negative_rate": train.get("negatives_truly_relevant"),
            "positives_per_sample": train.get("positives_per_sample"),
            "share_first_token": train.get("share_first_token"),
            "share_first_two_tokens": train.get("share_first_two_tokens")}


def _entries(table_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """variant → its evaluation entries (per-session values kept), seeds in order."""
    runs: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for path in sorted((table_dir / "runs").glob("*/eval.json")):
        entry = json.loads(path.read_text())["entry"]
        runs.setdefault(str(entry["variant"]), []).append((int(entry["seed"]), entry))
    return {v: [e for _, e in sorted(es, key=lambda t: t[0])] for v, es in runs.items()}


def point_comparisons(table_dir: Path) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """label → {"truth"|"logged": header → paired difference}; comparisons whose runs are missing are left out.
    Seeds are paired by position: only the seeds both variants have are used."""
    from training.eval_intervals import compare

    runs = _entries(table_dir)
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for label, a, b in COMPARISONS:
        if not runs.get(a) or not runs.get(b):
            continue
        n = min(len(runs[a]), len(runs[b]))
        ea, eb = runs[a][:n], runs[b][:n]
        out[label] = {}
        for block, truth in (("truth", True), ("logged", False)):
            diffs = compare(ea, eb, truth=truth)
            kept = {h: diffs[h] for h in HEADLINE if h in diffs}
            if kept:
                out[label][block] = kept
    return out


def sweep_report(points: Sequence[SweepPoint], root: Path) -> dict[str, Any]:
    """Every point whose table finished: its rates and comparisons (``root/points/<name>/{samples,table}``)."""
    rows = []
    for p in points:
        base = root / "points" / p.name
        table_json = base / "table" / "paper_table.json"
        if not table_json.is_file():
            continue
        table = json.loads(table_json.read_text())
        rows.append({"name": p.name, "knob": p.knob, "value": p.value, "rates": point_rates(base / "samples"),
                     "comparisons": point_comparisons(base / "table"),
                     "complete": table.get("runs_done") == table.get("runs_total"),
                     "test_sessions": table.get("test_sessions"), "seeds": table.get("seeds")})
    return {"points": rows}


def _cell(d: dict[str, float] | None) -> str:
    if d is None:
        return "–"
    from training.stats import significance_mark

    return f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]{significance_mark(d.get('p'))}"


def _knob_rows(report: dict[str, Any], knob: str) -> list[dict[str, Any]]:
    """The points of one knob's axis, the base point included, ordered by the rate the knob moves."""
    rows = [r for r in report["points"] if r["knob"] in (knob, "base")]
    rate = RATE_OF_KNOB[knob]
    return sorted(rows, key=lambda r: (r["rates"].get(rate) is None, r["rates"].get(rate) or 0.0))


def sweep_markdown(report: dict[str, Any], block: str = "truth") -> str:
    against = "true relevance" if block == "truth" else "logged clicks and orders"
    lines = [f"Paired differences of item R@10 against the simulator's {against} (95 % interval over test sessions "
             "and seeds; * p < 0.05, ** p < 0.01).", ""]
    for knob in RATE_OF_KNOB:
        rows = _knob_rows(report, knob)
        if len(rows) < 2:
            continue
        lines += [f"### {knob}", "", "| value | pseudo-neg. rate | positives/sample | share 1st token | "
                  + " | ".join(label for label, _, _ in COMPARISONS) + " |", "|" + "---|" * (4 + len(COMPARISONS))]
        for r in rows:
            rates = r["rates"]
            value = "base" if r["knob"] == "base" else r["value"]
            cells = [_cell(r["comparisons"].get(label, {}).get(block, {}).get("R@10")) for label, _, _ in COMPARISONS]
            lines.append(f"| {value} | {rates['pseudo_negative_rate']:.3f} | {rates['positives_per_sample']:.2f} | "
                         f"{rates['share_first_token']:.3f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_sweep_plot(report: dict[str, Any], path: Path, block: str = "truth", header: str = "R@10") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    knobs = [k for k in RATE_OF_KNOB if len(_knob_rows(report, k)) >= 2]
    fig, axes = plt.subplots(1, max(len(knobs), 1), figsize=(5.2 * max(len(knobs), 1), 4.2), squeeze=False)
    for ax, knob in zip(axes[0], knobs, strict=False):
        rows = _knob_rows(report, knob)
        rate = RATE_OF_KNOB[knob]
        xs = [r["rates"][rate] for r in rows]
        for k, (label, _, _) in enumerate(COMPARISONS):
            pts = [(x, r["comparisons"].get(label, {}).get(block, {}).get(header)) for x, r in zip(xs, rows,
                                                                                               strict=True)]
            pts = [(x, d) for x, d in pts if d is not None]
            if not pts:
                continue
            jitter = (k - len(COMPARISONS) / 2) * 0.004 * (max(xs) - min(xs) or 1.0)
            ax.errorbar([x + jitter for x, _ in pts], [d["diff"] for _, d in pts],
                        yerr=[[d["diff"] - d["lo"] for _, d in pts], [d["hi"] - d["diff"] for _, d in pts]],
                        marker="o", capsize=3, label=label, linestyle="-" if k < 2 else ":")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel(f"{rate.replace('_', ' ')} (knob: {knob})")
        ax.set_ylabel(f"Δ item {header} ({block})")
        ax.set_title(knob)
    if knobs:
        axes[0][0].legend(fontsize=7)
    else:
        axes[0][0].text(0.5, 0.5, "no knob has two finished points yet", ha="center", va="center")
    fig.suptitle("RAD-DPO's gain and its ablations' loss as the paper's failure rates grow (95 % intervals)")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def write_sweep_files(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    paths = {"json": out_dir / "sweep.json", "markdown": out_dir / "sweep.md", "png": out_dir / "sweep.png"}
    write_json_atomic(paths["json"], report, indent=1, sort_keys=False)
    md = "# Thesis sweep\n\n## Against true relevance\n\n" + sweep_markdown(report, "truth") + \
        "\n## Against logged clicks and orders\n\n" + sweep_markdown(report, "logged") + "\n"
    write_text_atomic(paths["markdown"], md)
    write_sweep_plot(report, paths["png"])
    return paths
