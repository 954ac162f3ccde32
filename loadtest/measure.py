"""What a load test measures besides Locust: the server's ``/metrics`` and the CPU use of the client and server
processes (HTTP and psutil only; no radgr package is imported).

Contract: :func:`scrape_metrics` reads ``GET /metrics`` as ``{"name{labels}": value}`` (empty when unreachable);
:func:`server_metrics_delta` gives the mean batch size and rejections by reason between two scrapes;
:class:`CpuSampler` samples CPU seconds (user + system, with children) of named processes, and ``usage(name, start,
end)`` interpolates CPU seconds and percent (100 = one core) over a window; :func:`cpu_json` is the summary's block.
"""

from __future__ import annotations

import bisect
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any

import psutil


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""
    except (urllib.error.URLError, OSError):
        return 0, ""


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)")


def scrape_metrics(url: str) -> dict[str, float]:
    """``GET /metrics`` as ``{"name{labels}": value}``; empty when unreachable."""
    status, text = http_get(f"{url}/metrics")
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in text.splitlines():
        m = _METRIC_LINE.match(line)
        if m and not line.startswith("#"):
            try:
                out[m.group(1)] = float(m.group(2))
            except ValueError:
                continue
    return out


def server_metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Mean batch size (requests) and rejections by reason between two scrapes."""
    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    batches = delta("radgr_batch_requests_count")
    rejections = {re.sub(r'.*reason="([^"]*)".*', r"\1", k): delta(k) for k in after
                  if k.startswith("radgr_rejections_total{") and delta(k) > 0}
    return {"batches": batches, "mean_batch_requests": delta("radgr_batch_requests_sum") / batches if batches else None,
            "rejections": rejections}


class CpuSampler:
    """CPU seconds (user + system, with children) of named processes over time, sampled with psutil."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.samples: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}

    @staticmethod
    def _tree_cpu(proc: psutil.Process) -> float:
        t = proc.cpu_times()
        total = float(t.user + t.system + t.children_user + t.children_system)
        for child in proc.children(recursive=True):
            try:
                c = child.cpu_times()
                total += float(c.user + c.system)
            except psutil.Error:
                continue
        return total

    def sample(self) -> None:
        now = time.time()
        for name, proc in self.procs.items():
            try:
                self.samples[name].append((now, self._tree_cpu(proc)))
            except psutil.Error:  # exited and reaped: its last sample stands
                continue

    def cpu_at(self, name: str, t: float) -> float | None:
        """CPU seconds of ``name`` at unix time ``t``, interpolated (clamped to the first/last sample)."""
        pts = self.samples[name]
        if not pts:
            return None
        times = [p[0] for p in pts]
        i = bisect.bisect_left(times, t)
        if i == 0:
            return pts[0][1]
        if i >= len(pts):
            return pts[-1][1]
        (t0, c0), (t1, c1) = pts[i - 1], pts[i]
        return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1

    def usage(self, name: str, start: float, end: float) -> dict[str, Any]:
        """CPU seconds and percent of one core of ``name`` over ``[start, end]`` (unix seconds)."""
        a, b = self.cpu_at(name, start), self.cpu_at(name, end)
        window = max(end - start, 1e-9)
        if a is None or b is None:
            return {"cpu_seconds": None, "cpu_percent": None}
        return {"cpu_seconds": round(b - a, 3), "cpu_percent": round(100.0 * (b - a) / window, 1)}


def cpu_json(sampler: CpuSampler, start: float, end: float, client: dict[str, Any],
             server: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"machine_cpus": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2),
                           "window_s": round(end - start, 3),
                           "client": {**client, **sampler.usage("client", start, end)}}
    out["server"] = None if server is None else {"pid": server["pid"], "cpus": server["cpus"],
                                                 **sampler.usage("server", start, end)}
    return out
