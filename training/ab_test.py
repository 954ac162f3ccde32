"""A simulated online A/B test between two served bundles, over HTTP (``radgr experiment ab``).

Contract, in the order :func:`run_ab` works:
1. Users: ``users`` fresh users of the world in ``world_dir`` (:class:`training.ab_users.Population`, seed
   ``seed``), each assigned to an arm by :func:`arm_of`: SHA-256 of ``"<salt>:<user_id>"``, first 8 bytes as a
   big-endian integer, even → A, odd → B (a 50/50 split that anyone with the salt can recompute).
2. Traffic: ``concurrency`` workers take users in index order; each plays one user's ``sessions_per_user``
   searches one after another (a session's history holds the clicks of the user's earlier sessions in that arm).
   Every search is one ``POST {url}/retrieve`` with the body of :meth:`Population.request_body`; request starts are
   paced to ``rate`` per second over both arms (0: as fast as the workers go), so at most ``concurrency`` are in
   flight.
3. Response: the first ``exposure_length`` returned items go through the simulator's examination, click and order
   model (:meth:`Population.respond`). A failed request — timeout, transport error, any non-200 status, a body
   without ``items`` — is counted per arm by kind (``timeout``, ``transport``, ``http_<status>``,
   ``bad_response``) and its session stays in the data as a session that showed nothing (no click, no order):
   failures are never dropped.
4. Tallies per user (sessions, items shown, clicks, orders, failed sessions) → per arm, by user
   (:mod:`training.ab_stats`): CTR = clicks / items shown, UCVR = share of users with an order, orders per
   session; the lift of B over A with its interval, p-value and users needed; client-side latency p50/p95; the
   cumulative lift over users (in user order) for the plot. :mod:`training.ab_report` writes the files.
With ``bundle_a``/``bundle_b`` instead of URLs, :func:`served_bundles` starts two real ``radgr serve`` processes on
127.0.0.1 (free ports, logs in ``out_dir``), waits for ``/ready``, and sends them SIGTERM at the end, also on error.
This module talks to servers over HTTP only; it never imports ``server``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from training.ab_stats import ALPHA, POWER, Lift, RatioEstimate, lift, ratio_estimate
from training.ab_users import Population, load_world

DEFAULT_SALT = "radgr-ab-v1"
ARMS = ("A", "B")
METRICS = ("ctr", "ucvr", "orders_per_session")
METRIC_NAMES = {"ctr": "CTR (clicks / items shown)", "ucvr": "UCVR (users who order)",
                "orders_per_session": "orders per session"}
REPO_ROOT = Path(__file__).resolve().parents[1]

Progress = Callable[[str, str | None], None]  # (arm, failure kind or None) after every request


@dataclass(frozen=True)
class AbConfig:
    """One A/B run. ``top_k = 0`` asks for the world's ``exposure_length`` items."""

    world_dir: Path
    url_a: str
    url_b: str
    out_dir: Path
    users: int = 2000
    sessions_per_user: int = 3
    salt: str = DEFAULT_SALT
    seed: int = 0
    rate: float = 0.0  # request starts per second over both arms; 0 = unpaced
    concurrency: int = 8
    timeout_s: float = 30.0
    top_k: int = 0
    beam_width: int = 128
    label_a: str = "A"
    label_b: str = "B"
    alpha: float = ALPHA
    power: float = POWER
    curve_points: int = 60
    api_key: str | None = field(default=None, repr=False)  # bearer key for both servers; never written out

    def __post_init__(self) -> None:
        for name in ("users", "sessions_per_user", "concurrency", "beam_width", "curve_points"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"AbConfig.{name} must be >= 1, given {getattr(self, name)}")
        if self.beam_width > 128:
            raise ValueError(f"AbConfig.beam_width must be <= 128, given {self.beam_width}")
        if self.top_k < 0:
            raise ValueError(f"AbConfig.top_k must be >= 0 (0 = the world's exposure_length), given {self.top_k}")
        if self.rate < 0:
            raise ValueError(f"AbConfig.rate must be >= 0 (0 = unpaced), given {self.rate}")
        if self.timeout_s <= 0:
            raise ValueError(f"AbConfig.timeout_s must be > 0, given {self.timeout_s}")
        for name in ("alpha", "power"):
            if not 0 < float(getattr(self, name)) < 1:
                raise ValueError(f"AbConfig.{name} must be in (0, 1), given {getattr(self, name)}")
        for name in ("url_a", "url_b"):
            if not str(getattr(self, name)).startswith(("http://", "https://")):
                raise ValueError(f"AbConfig.{name} must start with http:// or https://, given {getattr(self, name)!r}")
        if not self.salt:
            raise ValueError("AbConfig.salt must not be empty")

    def public_dict(self) -> dict[str, object]:
        """The config as the report records it (paths as strings, no API key)."""
        return {"world_dir": str(self.world_dir), "url_a": self.url_a, "url_b": self.url_b,
                "out_dir": str(self.out_dir), "users": self.users, "sessions_per_user": self.sessions_per_user,
                "salt": self.salt, "seed": self.seed, "rate": self.rate, "concurrency": self.concurrency,
                "timeout_s": self.timeout_s, "top_k": self.top_k, "beam_width": self.beam_width,
                "label_a": self.label_a, "label_b": self.label_b, "alpha": self.alpha, "power": self.power,
                "api_key_set": self.api_key is not None}


def arm_of(user_id: str, salt: str) -> str:
    """``A`` or ``B`` for a user: parity of the first 8 bytes of SHA-256(``"<salt>:<user_id>"``), big-endian."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return ARMS[int.from_bytes(digest[:8], "big") % 2]


@dataclass
class UserTally:
    arm: str
    sessions: int = 0
    shown: int = 0
    clicks: int = 0
    orders: int = 0
    failed: int = 0


@dataclass
class _Log:
    tallies: list[UserTally]
    failures: dict[str, Counter[str]]
    latencies: dict[str, list[float]]
    served: dict[str, dict[str, str]]  # arm → model and engine named by the server's first 200 answer
    unknown_items: Counter[str]
    wall_s: float = 0.0


class _Pacer:
    """Spaces request starts ``1/rate`` seconds apart (no catch-up bursts after a stall); rate 0 = no wait."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_at = -math.inf

    async def wait(self) -> None:
        if not self.interval:
            return
        now = asyncio.get_running_loop().time()
        start = max(self.next_at, now)
        self.next_at = start + self.interval  # claimed before awaiting: one event loop, no lock needed
        if start > now:
            await asyncio.sleep(start - now)


async def _retrieve(client: httpx.AsyncClient, url: str, body: dict[str, object], headers: dict[str, str]
                    ) -> tuple[list[str], str | None, dict[str, Any]]:
    """(item ids, failure kind or None, the response document) of one ``POST /retrieve``."""
    try:
        resp = await client.post(f"{url}/retrieve", json=body, headers=headers)
    except httpx.TimeoutException:
        return [], "timeout", {}
    except httpx.TransportError:
        return [], "transport", {}
    if resp.status_code != 200:
        return [], f"http_{resp.status_code}", {}
    try:
        doc = resp.json()
        items = [str(it["item_id"]) for it in doc["items"]]
    except (ValueError, KeyError, TypeError):
        return [], "bad_response", {}
    return items, None, doc


async def _replay(cfg: AbConfig, pop: Population, arms: list[str], progress: Progress | None,
                  transport: httpx.AsyncBaseTransport | None) -> _Log:
    log = _Log(tallies=[UserTally(arm) for arm in arms], failures={a: Counter() for a in ARMS},
               latencies={a: [] for a in ARMS}, served={}, unknown_items=Counter())
    urls = {"A": cfg.url_a.rstrip("/"), "B": cfg.url_b.rstrip("/")}
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    top_k = cfg.top_k or pop.cfg.exposure_length
    pacer = _Pacer(cfg.rate)
    users = iter(range(len(pop)))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in users:  # one shared iterator: each user is played by exactly one worker
            arm, tally = arms[i], log.tallies[i]
            for _ in range(cfg.sessions_per_user):
                intent = pop.intent(i)
                body = pop.request_body(i, intent, top_k, cfg.beam_width)
                await pacer.wait()
                t0 = time.perf_counter()
                items, failure, doc = await _retrieve(client, urls[arm], body, headers)
                if failure is None:
                    log.latencies[arm].append(time.perf_counter() - t0)
                    log.served.setdefault(arm, {"model": str(doc.get("model")), "engine": str(doc.get("engine"))})
                else:
                    log.failures[arm][failure] += 1
                    tally.failed += 1
                resp = pop.respond(i, intent, items)
                tally.sessions += 1
                tally.shown += resp.shown
                tally.clicks += resp.clicks
                tally.orders += int(resp.ordered)
                log.unknown_items[arm] += resp.unknown_items
                if progress is not None:
                    progress(arm, failure)

    limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=cfg.timeout_s, limits=limits, transport=transport) as client:
        await asyncio.gather(*(worker(client) for _ in range(cfg.concurrency)))
    log.wall_s = time.perf_counter() - t0
    return log


def metric_estimates(tallies: list[UserTally]) -> dict[str, RatioEstimate]:
    """CTR, UCVR and orders per session of a group of users, by user (:func:`training.ab_stats.ratio_estimate`)."""
    t = np.array([[u.sessions, u.shown, u.clicks, u.orders] for u in tallies], dtype=np.float64).reshape(-1, 4)
    sessions, shown, clicks, orders = t.T
    return {"ctr": ratio_estimate(clicks, shown), "ucvr": ratio_estimate((orders > 0).astype(np.float64),
                                                                         np.ones(len(t))),
            "orders_per_session": ratio_estimate(orders, sessions)}


def cumulative_lift(tallies: list[UserTally], points: int, alpha: float, power: float
                    ) -> dict[str, Any]:
    """The lift of each metric on the first k users (user order), at up to ``points`` values of k."""
    ks = sorted({int(k) for k in np.linspace(0, len(tallies), points + 1)[1:] if k >= 2})
    curve: dict[str, Any] = {"users": ks, **{m: {"rel": [], "lo": [], "hi": []} for m in METRICS}}
    for k in ks:
        a = metric_estimates([u for u in tallies[:k] if u.arm == "A"])
        b = metric_estimates([u for u in tallies[:k] if u.arm == "B"])
        for m in METRICS:
            lf = lift(a[m], b[m], alpha, power)
            curve[m]["rel"].append(lf.rel)
            curve[m]["lo"].append(lf.rel_ci[0])
            curve[m]["hi"].append(lf.rel_ci[1])
    return curve


def _arm_summary(arm: str, label: str, log: _Log, est: dict[str, RatioEstimate]) -> dict[str, Any]:
    users = [u for u in log.tallies if u.arm == arm]
    requests = sum(u.sessions for u in users)
    failed = sum(u.failed for u in users)
    lat = np.array(log.latencies[arm]) if log.latencies[arm] else np.array([math.nan])
    return {
        "label": label, "users": len(users), "sessions": requests, "requests": requests,
        "items_shown": sum(u.shown for u in users), "clicks": sum(u.clicks for u in users),
        "orders": sum(u.orders for u in users), "users_with_order": sum(u.orders > 0 for u in users),
        "failed_requests": failed, "failure_rate": failed / requests if requests else math.nan,
        "failures": dict(sorted(log.failures[arm].items())), "unknown_items": log.unknown_items[arm],
        "latency_p50_s": float(np.percentile(lat, 50)), "latency_p95_s": float(np.percentile(lat, 95)),
        "served": log.served.get(arm, {}),
        "metrics": {m: {"value": e.value, "se": e.se} for m, e in est.items()},
    }


def summarize(cfg: AbConfig, log: _Log) -> dict[str, Any]:
    """The report document: config, per-arm summaries, lifts, cumulative curve, wall time and achieved rate."""
    by_arm = {arm: metric_estimates([u for u in log.tallies if u.arm == arm]) for arm in ARMS}
    lifts: dict[str, Lift] = {m: lift(by_arm["A"][m], by_arm["B"][m], cfg.alpha, cfg.power) for m in METRICS}
    requests = sum(u.sessions for u in log.tallies)
    return {
        "config": cfg.public_dict(),
        "arms": {arm: _arm_summary(arm, label, log, by_arm[arm])
                 for arm, label in (("A", cfg.label_a), ("B", cfg.label_b))},
        "lifts": {m: lf.to_dict() for m, lf in lifts.items()},
        "requests": requests, "wall_seconds": log.wall_s,
        "achieved_rps": requests / log.wall_s if log.wall_s > 0 else math.nan,
        "curve": cumulative_lift(log.tallies, cfg.curve_points, cfg.alpha, cfg.power),
    }


def run_ab(cfg: AbConfig, progress: Progress | None = None,
           transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any]:
    """Replay the users against both URLs; returns :func:`summarize`'s document (the caller writes the files).

    ``transport`` replaces httpx's network transport (tests pass an ``httpx.MockTransport``).
    """
    world, sim_cfg = load_world(cfg.world_dir)
    pop = Population(world, sim_cfg, cfg.users, cfg.seed)
    arms = [arm_of(pop.user_id(i), cfg.salt) for i in range(len(pop))]
    log = asyncio.run(_replay(cfg, pop, arms, progress, transport))
    return summarize(cfg, log)


# ------------------------------------------------------------------------------------------------ servers
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise RuntimeError(f"radgr serve exited with code {proc.returncode} before /ready ({log_path}):\n{tail}")
        try:
            if httpx.get(f"{url}/ready", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"radgr serve at {url} was not ready within {timeout_s:.0f} s (log: {log_path})")


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def served_bundles(bundle_a: Path, bundle_b: Path, log_dir: Path, *, engine: str = "auto", threads: int = 1,
                   ready_timeout_s: float = 300.0) -> Iterator[tuple[str, str]]:
    """Start ``radgr serve`` for both bundles on 127.0.0.1 and yield their URLs; SIGTERM both on exit.

    Each server gets ``threads`` torch/OpenMP threads and logs to ``log_dir/server-{a,b}.log``.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs: list[tuple[subprocess.Popen[bytes], str, Path]] = []
    try:
        for name, bundle in (("a", bundle_a), ("b", bundle_b)):
            port = free_port()
            log_path = log_dir / f"server-{name}.log"
            with log_path.open("wb") as log_file:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "cli.main", "serve", "--bundle", str(bundle), "--port", str(port),
                     "--engine", engine, "--torch-threads", str(threads), "--log-level", "warning"],
                    cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
            procs.append((proc, f"http://127.0.0.1:{port}", log_path))
        for proc, url, log_path in procs:
            _wait_ready(url, proc, log_path, ready_timeout_s)
        yield procs[0][1], procs[1][1]
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _, _ in procs:
            _stop(proc)
