"""The A/B report written: ``ab_report.json`` (the whole document), ``ab_report.md`` and ``ab_lift.png``.

Contract: :func:`write_ab_files` takes :func:`training.ab_test.summarize`'s document and writes the three files
atomically into ``out_dir``, returning their paths by kind (``json``, ``markdown``, ``png``). The markdown holds
one table of the arms (users, sessions, the three metrics with standard errors, failures, client latency) and one
of the lifts of B over A (absolute and relative, 95% intervals, p-value, users needed per arm for the observed
lift at the stated power). The PNG plots, per metric, the relative lift on the first k users against k with its
interval (y range fitted to the last 90% of users, so the first users' wide intervals do not flatten the curve).
``nan`` is written as JSON ``null``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sid_index.atomic_files import save_figure_atomic, write_json_atomic, write_text_atomic

JSON_FILE = "ab_report.json"
MARKDOWN_FILE = "ab_report.md"
PNG_FILE = "ab_lift.png"
METRIC_LABELS = {"ctr": "CTR", "ucvr": "UCVR", "orders_per_session": "orders/session"}


def _clean(obj: Any) -> Any:
    """nan/inf → None, tuples → lists, recursively (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def _f(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None or not math.isfinite(seconds) else f"{1000 * seconds:.0f}"


def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:+.2f}%"


def markdown(doc: dict[str, Any]) -> str:
    """The report as markdown (see the module docstring)."""
    cfg, arms, lifts = doc["config"], doc["arms"], doc["lifts"]
    lines = [
        f"Simulated A/B test: {cfg['users']:,} users × {cfg['sessions_per_user']} sessions, split by "
        f"SHA-256(salt `{cfg['salt']}`:user), seed {cfg['seed']}, top_k {cfg['top_k'] or 'exposure length'}, "
        f"beam {cfg['beam_width']}; {doc['requests']:,} requests in {doc['wall_seconds']:.1f} s "
        f"({doc['achieved_rps']:.1f} req/s, concurrency {cfg['concurrency']}, "
        f"rate {cfg['rate'] or 'unpaced'}).",
        "",
        "| arm | model | users | sessions | CTR | UCVR | orders/session | failed requests | p50 / p95 latency |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ("A", "B"):
        a = arms[arm]
        m = a["metrics"]
        fails = ", ".join(f"{k} {v}" for k, v in a["failures"].items()) or "none"
        lines.append(
            f"| {arm}: {a['label']} | {a['served'].get('model', '–')} | {a['users']:,} | {a['sessions']:,} | "
            + " | ".join(f"{_f(m[k]['value'])} ± {_f(m[k]['se'])}" for k in ("ctr", "ucvr", "orders_per_session"))
            + f" | {a['failed_requests']} ({fails}) | {_ms(a['latency_p50_s'])} / {_ms(a['latency_p95_s'])} ms |")
    lines += ["", f"Lift of B ({arms['B']['label']}) over A ({arms['A']['label']}), "
                  f"{100 * (1 - cfg['alpha']):.0f}% intervals by user (delta method):", "",
              "| metric | A | B | B − A [CI] | relative lift [CI] | p | significant | users/arm for this lift "
              f"at {100 * cfg['power']:.0f}% power |",
              "|---|---|---|---|---|---|---|---|"]
    for key, lf in lifts.items():
        need = lf["users_per_arm_needed"]
        lines.append(
            f"| {METRIC_LABELS[key]} | {_f(lf['a'])} | {_f(lf['b'])} | {_f(lf['diff'])} "
            f"[{_f(lf['diff_ci'][0])}, {_f(lf['diff_ci'][1])}] | {_pct(lf['rel'])} "
            f"[{_pct(lf['rel_ci'][0])}, {_pct(lf['rel_ci'][1])}] | {_f(lf['p_value'], 3)} | "
            f"{'yes' if lf['significant'] else 'no'} | {'–' if need is None else f'{need:,}'} |")
    return "\n".join(lines) + "\n"


def _plot(doc: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = doc["curve"]
    keys = list(METRIC_LABELS)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    users = curve["users"]
    for ax, key in zip(axes[0], keys, strict=True):
        c = curve[key]
        rel = [100 * v if v is not None and math.isfinite(v) else math.nan for v in c["rel"]]
        lo = [100 * v if v is not None and math.isfinite(v) else math.nan for v in c["lo"]]
        hi = [100 * v if v is not None and math.isfinite(v) else math.nan for v in c["hi"]]
        ax.fill_between(users, lo, hi, alpha=0.25, label=f"{100 * (1 - doc['config']['alpha']):.0f}% CI")
        ax.plot(users, rel, label="lift")
        ax.axhline(0.0, color="black", linewidth=0.8)
        # y range from the last 90% of the curve: the first few users' huge intervals would flatten the rest
        late = [(a, b) for k, a, b in zip(users, lo, hi, strict=True)
                if k >= 0.1 * users[-1] and math.isfinite(a) and math.isfinite(b)]
        if late:
            bottom, top = min(0.0, *(a for a, _ in late)), max(0.0, *(b for _, b in late))
            pad = 0.1 * (top - bottom) or 1.0
            ax.set_ylim(bottom - pad, top + pad)
        ax.set_title(METRIC_LABELS[key])
        ax.set_xlabel("users (both arms)")
        ax.set_ylabel("relative lift of B over A (%)")
        ax.legend(loc="best", fontsize=8)
    arms = doc["arms"]
    fig.suptitle(f"A/B: {arms['B']['label']} (B) vs {arms['A']['label']} (A), cumulative over users")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
    return path


def write_ab_files(doc: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write the JSON, markdown and PNG of one A/B run into ``out_dir``; returns their paths by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = _clean(doc)
    return {"json": write_json_atomic(out / JSON_FILE, clean, sort_keys=False),
            "markdown": write_text_atomic(out / MARKDOWN_FILE, markdown(clean)),
            "png": _plot(clean, out / PNG_FILE)}
