"""The A/B runner without model servers: failures counted per arm by kind and never dropped (httpx's
MockTransport at the client seam), pacing, the report files, and the CLI's checks and exit codes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.main import main
from training.ab_report import write_ab_files
from training.ab_test import AbConfig, arm_of, free_port, run_ab
from training.ab_users import load_world
from training.data.sim_config import SimConfig
from training.data.simulator import simulate_to_dir

SMALL = SimConfig(items=200, users=20, sessions_per_day=40, days=1, seed=5)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    simulate_to_dir(SMALL, out)
    return out


def _user_number(request: httpx.Request) -> int:
    return int(json.loads(request.content)["user_id"][1:])


def test_failures_are_counted_per_arm_and_kept_as_sessions(world_dir: Path, tmp_path: Path) -> None:
    """Arm A answers every request with the same 10 items, except users ≡ 0 (mod 5) who get a body without
    ``items`` (bad_response). Arm B answers users ≡ 0 (mod 3) with 503 and times out users ≡ 1 (mod 3).
    Every session stays in the data; a failed one shows nothing."""
    world, _ = load_world(world_dir)
    items = [{"item_id": world.item_ids[i], "sid": "<s0_0><s1_0><s2_0>", "score": -1.0, "rank": i + 1}
             for i in range(10)]

    def handler(request: httpx.Request) -> httpx.Response:
        u = _user_number(request)
        if request.url.host == "arm-a":
            if u % 5 == 0:
                return httpx.Response(200, json={"oops": True})
            return httpx.Response(200, json={"items": items, "model": "fixed-a", "engine": "fake"})
        if u % 3 == 0:
            return httpx.Response(503, json={"error": {"message": "queue full", "type": "overloaded_error"}})
        if u % 3 == 1:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(200, json={"items": items[::-1], "model": "fixed-b", "engine": "fake"})

    cfg = AbConfig(world_dir=world_dir, url_a="http://arm-a", url_b="http://arm-b", out_dir=tmp_path, users=120,
                   sessions_per_user=3, concurrency=4)
    ticks: list[tuple[str, str | None]] = []
    doc = run_ab(cfg, progress=lambda arm, failure: ticks.append((arm, failure)),
                 transport=httpx.MockTransport(handler))
    users = [f"u{i:03d}" for i in range(120)]
    arm = {u: arm_of(u, cfg.salt) for u in users}
    a_users = [int(u[1:]) for u in users if arm[u] == "A"]
    b_users = [int(u[1:]) for u in users if arm[u] == "B"]
    a, b = doc["arms"]["A"], doc["arms"]["B"]
    assert (a["users"], b["users"]) == (len(a_users), len(b_users))
    assert a["failures"] == {"bad_response": 3 * sum(u % 5 == 0 for u in a_users)}
    assert b["failures"] == {"http_503": 3 * sum(u % 3 == 0 for u in b_users),
                             "timeout": 3 * sum(u % 3 == 1 for u in b_users)}
    assert a["sessions"] + b["sessions"] == 360 == doc["requests"] == len(ticks)  # nothing dropped
    assert b["items_shown"] == 10 * 3 * sum(u % 3 == 2 for u in b_users)
    assert b["failure_rate"] == pytest.approx(b["failed_requests"] / b["sessions"])
    assert sum(f is not None for _, f in ticks) == a["failed_requests"] + b["failed_requests"]
    assert (a["served"], b["served"]) == ({"model": "fixed-a", "engine": "fake"},
                                         {"model": "fixed-b", "engine": "fake"})

    paths = write_ab_files(doc, tmp_path)
    md = paths["markdown"].read_text()
    assert "http_503" in md and "timeout" in md and "bad_response" in md
    saved = json.loads(paths["json"].read_text())
    assert saved["config"]["salt"] == "radgr-ab-v1" and "api_key" not in saved["config"]
    assert set(saved["lifts"]) == {"ctr", "ucvr", "orders_per_session"}
    assert saved["curve"]["users"][-1] == 120
    assert paths["png"].stat().st_size > 1000


def test_rate_paces_request_starts(world_dir: Path, tmp_path: Path) -> None:
    """20 requests at 40 req/s: starts 25 ms apart, so ≥ 19 × 25 ms = 0.475 s even with 8 workers."""
    starts: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        starts.append(time.perf_counter())
        return httpx.Response(200, json={"items": []})

    cfg = AbConfig(world_dir=world_dir, url_a="http://a", url_b="http://b", out_dir=tmp_path, users=10,
                   sessions_per_user=2, rate=40.0, concurrency=8)
    doc = run_ab(cfg, transport=httpx.MockTransport(handler))
    assert len(starts) == 20 and starts[-1] - starts[0] >= 0.47
    assert doc["achieved_rps"] <= 20 / 0.475  # 20 requests in at least 19 gaps of 25 ms (was 42.0: 42.03 in CI)


def test_config_names_the_field_and_bound(tmp_path: Path) -> None:
    base: dict[str, Any] = {"world_dir": tmp_path, "url_a": "http://a", "url_b": "http://b", "out_dir": tmp_path}
    for field, value, message in (("users", 0, "AbConfig.users must be >= 1"),
                                  ("beam_width", 200, "AbConfig.beam_width must be <= 128"),
                                  ("rate", -1.0, "AbConfig.rate must be >= 0"),
                                  ("alpha", 1.0, "AbConfig.alpha must be in (0, 1)"),
                                  ("url_b", "localhost:8000", "AbConfig.url_b must start with http://")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            AbConfig(**{**base, field: value})


def test_cli_checks_its_options_and_fails_on_unreachable_servers(world_dir: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    base = ["experiment", "ab", "--world", str(world_dir), "--out", str(tmp_path / "out")]
    assert main([*base, "--url-a", "http://127.0.0.1:1"]) == 2
    assert "either --url-a and --url-b" in capsys.readouterr().err
    assert main([*base, "--url-a", "http://x", "--url-b", "http://y", "--bundle-a", str(tmp_path)]) == 2
    assert main([*base, "--bundle-a", str(tmp_path), "--bundle-b", str(tmp_path)]) == 2
    assert "is not a bundle" in capsys.readouterr().err
    assert main([*base, "--url-a", "http://x", "--url-b", "http://y", "--users", "0"]) == 2
    assert "AbConfig.users must be >= 1" in capsys.readouterr().err
    # nobody listens: every request fails (transport), every session is kept, exit 1 (over --max-failure-rate)
    dead = f"http://127.0.0.1:{free_port()}"
    assert main([*base, "--url-a", dead, "--url-b", dead, "--users", "10", "--sessions-per-user", "2",
                 "--timeout-s", "2"]) == 1
    doc = json.loads((tmp_path / "out" / "ab_report.json").read_text())
    assert sum(doc["arms"][a]["failures"].get("transport", 0) for a in "AB") == 20 == doc["requests"]
    assert "failed requests" in capsys.readouterr().out
