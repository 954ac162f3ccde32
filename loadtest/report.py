"""A load test's report files: Locust's stats history read back, the run's and the sweep's PNGs, JSON written.

Contract:
- :func:`read_history(path)` reads Locust's ``PREFIX_stats_history.csv`` (written with ``--csv-full-history``, so
  the percentiles are Locust's current ~10 s window) and returns the ``Aggregated`` rows as
  :class:`HistoryRow` (seconds since the first row, users, requests/s, failures/s, p50/p95/p99 ms; ``None``
  where Locust wrote ``N/A``).
- :func:`plot_run(rows, png, title, gates)` draws latency percentiles over time (log scale, the p50/p99 gates as
  dashed lines) above requests/s and failures/s over time (users on a second axis).
- :func:`plot_sweep(summary, png, title)` draws, against the offered load of each step: p50 and p99 of the
  successful responses (log scale, the p99 target dashed), and goodput and all answered requests per second
  (with the offered = achieved diagonal and the capacity marked).
- :func:`write_json(path, obj)` writes indented JSON through a temporary sibling and a rename. PNGs are written
  the same way; matplotlib (Agg) is imported only inside the plotting functions.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtest.profiles import Gates

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class HistoryRow:
    t_s: float
    users: int
    rps: float
    failures_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


def _number(text: str | None) -> float | None:
    if text is None or text in ("", "N/A"):
        return None
    return float(text)


def read_history(path: str | os.PathLike[str]) -> list[HistoryRow]:
    """The ``Aggregated`` rows of a Locust stats-history CSV (see the module docstring)."""
    rows: list[HistoryRow] = []
    t0: float | None = None
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            if rec.get("Name") != "Aggregated":
                continue
            t = float(rec["Timestamp"])
            t0 = t if t0 is None else t0
            rows.append(HistoryRow(t_s=t - t0, users=int(float(rec["User Count"])),
                                   rps=_number(rec["Requests/s"]) or 0.0,
                                   failures_per_s=_number(rec["Failures/s"]) or 0.0, p50_ms=_number(rec.get("50%")),
                                   p95_ms=_number(rec.get("95%")), p99_ms=_number(rec.get("99%"))))
    return rows


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(out)
    return out


def _save(fig: Figure, png: str | os.PathLike[str]) -> Path:
    import matplotlib.pyplot as plt

    out = Path(png)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


def plot_run(rows: Sequence[HistoryRow], png: str | os.PathLike[str], title: str, gates: Gates | None) -> Path:
    """Latency percentiles and throughput over time (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_rps) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    t = [r.t_s for r in rows]
    for name, values, style in (("p50", [r.p50_ms for r in rows], "-"), ("p95", [r.p95_ms for r in rows], "-"),
                                ("p99", [r.p99_ms for r in rows], "-")):
        ax_lat.plot(t, [float("nan") if v is None else v for v in values], style, label=name)
    if gates is not None:
        ax_lat.axhline(gates.p50_ms, color="C0", ls="--", lw=1, label=f"p50 gate {gates.p50_ms:g} ms")
        ax_lat.axhline(gates.p99_ms, color="C2", ls="--", lw=1, label=f"p99 gate {gates.p99_ms:g} ms")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("response time, ms (Locust, ~10 s window)")
    ax_lat.legend(loc="upper left", fontsize=8)
    ax_lat.grid(alpha=0.3)
    ax_lat.set_title(title, fontsize=10)
    ax_rps.plot(t, [r.rps for r in rows], label="requests/s")
    ax_rps.plot(t, [r.failures_per_s for r in rows], label="failures/s", color="C3")
    if gates is not None and gates.min_qps > 0:
        ax_rps.axhline(gates.min_qps, color="C0", ls="--", lw=1, label=f"QPS gate {gates.min_qps:g}")
    ax_rps.set_xlabel("seconds since start")
    ax_rps.set_ylabel("per second")
    ax_rps.grid(alpha=0.3)
    ax_users = ax_rps.twinx()
    ax_users.plot(t, [r.users for r in rows], color="grey", ls=":", label="users")
    ax_users.set_ylabel("users")
    lines = ax_rps.get_legend_handles_labels()
    more = ax_users.get_legend_handles_labels()
    ax_rps.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    fig.tight_layout()
    return _save(fig, png)


def plot_sweep(summary: dict[str, Any], png: str | os.PathLike[str], title: str) -> Path:
    """Latency and goodput against offered load (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = summary["steps"]
    offered = [s["offered_qps"] for s in steps]
    fig, (ax_lat, ax_good) = plt.subplots(1, 2, figsize=(12, 4.8))

    def ms(key: str) -> list[float]:
        return [float("nan") if s[key] is None else s[key] for s in steps]

    ax_lat.plot(offered, ms("p50_ms"), "o-", label="p50")
    ax_lat.plot(offered, ms("p99_ms"), "s-", label="p99")
    ax_lat.axhline(summary["config"]["p99_ms"], color="C1", ls="--", lw=1,
                   label=f"p99 target {summary['config']['p99_ms']:g} ms")
    ax_lat.set_yscale("log")
    ax_lat.set_xlabel("offered load, requests/s")
    ax_lat.set_ylabel("response time of successful requests, ms")
    ax_lat.grid(alpha=0.3, which="both")
    ax_good.plot(offered, [s["qps"] for s in steps], "o-", label="goodput (successful/s)")
    ax_good.plot(offered, [s["answered_qps"] for s in steps], "^-", alpha=0.7, label="answered/s (incl. 503/504)")
    top = max(offered, default=1.0)
    ax_good.plot([0, top], [0, top], color="grey", ls=":", lw=1, label="offered = achieved")
    ax_good.set_xlabel("offered load, requests/s")
    ax_good.set_ylabel("requests/s")
    ax_good.grid(alpha=0.3)
    fail = ax_good.twinx()
    fail.plot(offered, [s["failure_ratio"] for s in steps], "x--", color="C3", label="failure ratio")
    fail.set_ylim(0, 1.05)
    fail.set_ylabel("failure ratio")
    if summary.get("capacity_offered_qps") is not None:
        for ax in (ax_lat, ax_good):
            ax.axvline(summary["capacity_offered_qps"], color="green", ls="--", lw=1,
                       label=f"capacity {summary['capacity_qps']:.3g} req/s")
    ax_lat.legend(fontsize=8, loc="upper left")
    lines = ax_good.get_legend_handles_labels()
    more = fail.get_legend_handles_labels()
    ax_good.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, png)
