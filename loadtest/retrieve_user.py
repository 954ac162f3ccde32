"""The Locust user both locustfiles share: it sends ``POST /retrieve`` bodies drawn from a mix file and records
every outcome. Loaded only inside Locust processes (importing Locust patches the process with gevent).

Contract:
- Options (Locust command line, or the environment variable named beside each): ``--mix-file``
  (``RADGR_LT_MIX_FILE``, a :class:`~loadtest.mix.RequestMix` JSON, required), ``--user-qps``
  (``RADGR_LT_USER_QPS``: requests per second per user, 0 = no wait), ``--mix-seed``, ``--request-timeout-s``
  (client-side), ``--result-file`` (where the locustfile writes its JSON result).
- :class:`RetrieveUser`: each user draws bodies with its own ``random.Random`` (seeded from ``--mix-seed`` and the
  user's number), paces itself like Locust's ``constant_throughput`` at :data:`STATE`'s current per-user rate
  (which the sweep's shape changes between steps; a random first delay spreads users over one period), sends over
  one keep-alive ``requests`` session, and reports each request to Locust itself, named by its outcome
  (:data:`loadtest.outcomes.REQUEST_NAMES`): shed 503s and timed-out 504s are failures on their own rows, an
  invalid 200 body a failure naming the broken check. The response time is measured up to the body's arrival.
- :data:`STATE` holds the run's shared state: the mix, the per-user rate, the :class:`~loadtest.outcomes.OutcomeLog`
  (reset when Locust resets its statistics after the ramp, ``--reset-stats``), the engines named by successful
  responses, and the measured window's start and end (``time.time()``).
- :func:`locust_numbers` reads Locust's own aggregate numbers; :func:`write_result` writes a locustfile's JSON
  result to ``--result-file`` (temporary sibling, then rename).
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from locust import User, events, task
from locust.env import Environment

from loadtest.mix import RequestMix
from loadtest.outcomes import REQUEST_NAMES, Outcome, OutcomeLog, classify


class RetrieveFailure(Exception):
    """A failed ``/retrieve`` as Locust reports it (the message is the failure's stable kind)."""


@dataclass
class RunState:
    mix: RequestMix | None = None
    user_qps: float = 0.0
    seed: int = 0
    timeout_s: float = 60.0
    log: OutcomeLog = field(default_factory=lambda: OutcomeLog(start=time.monotonic()))
    window_start_unix: float = field(default_factory=time.time)
    window_end_unix: float | None = None
    stopped_monotonic: float | None = None
    engines: Counter[str] = field(default_factory=Counter)

    def reset_window(self) -> None:
        self.log.reset(time.monotonic())
        self.window_start_unix = time.time()


STATE = RunState()
_user_numbers = itertools.count()


def _add_arguments(parser: Any, **_: Any) -> None:
    parser.add_argument("--mix-file", type=str, default="", env_var="RADGR_LT_MIX_FILE",
                        help="Request mix JSON (radgr loadtest writes one).")
    parser.add_argument("--user-qps", type=float, default=0.0, env_var="RADGR_LT_USER_QPS",
                        help="Requests per second per user (constant throughput); 0 = no wait.")
    parser.add_argument("--mix-seed", type=int, default=0, env_var="RADGR_LT_SEED", help="Seed of the draws.")
    parser.add_argument("--request-timeout-s", type=float, default=60.0, help="Client-side timeout per request.")
    parser.add_argument("--result-file", type=str, default="", help="Where to write the JSON result.")


def _on_init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:  # a library user building its own Environment: configure STATE directly
        return
    if not options.mix_file:
        raise SystemExit("radgr locustfile: --mix-file (or RADGR_LT_MIX_FILE) is required")
    STATE.mix = RequestMix.load(options.mix_file)
    STATE.user_qps = float(options.user_qps)
    STATE.seed = int(options.mix_seed)
    STATE.timeout_s = float(options.request_timeout_s)
    STATE.reset_window()

    def on_spawning_complete(user_count: int, **_: Any) -> None:
        if environment.reset_stats:  # Locust drops the ramp from its statistics; so do we
            STATE.reset_window()

    environment.events.spawning_complete.add_listener(on_spawning_complete)


def _on_test_stop(environment: Environment, **_: Any) -> None:
    STATE.stopped_monotonic = time.monotonic()
    STATE.window_end_unix = time.time()


def locust_numbers(environment: Environment) -> dict[str, Any]:
    """Locust's own aggregate numbers (its percentiles round to ~2 significant digits above 100 ms)."""
    total = environment.stats.total
    return {"requests": total.num_requests, "failures": total.num_failures, "rps": total.total_rps,
            "p50_ms": total.get_response_time_percentile(0.5) if total.num_requests else None,
            "p99_ms": total.get_response_time_percentile(0.99) if total.num_requests else None}


def write_result(environment: Environment, result: dict[str, Any]) -> None:
    path = environment.parsed_options.result_file if environment.parsed_options else ""
    if path:
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(path)


events.init_command_line_parser.add_listener(_add_arguments)
events.init.add_listener(_on_init)
events.test_stop.add_listener(_on_test_stop)


class RetrieveUser(User):
    """Sends ``POST /retrieve`` bodies from the mix (see the module docstring)."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        number = next(_user_numbers)
        self.rng = random.Random(STATE.seed * 1_000_003 + number)
        self.session = requests.Session()
        self.last_start = time.monotonic()

    def wait_time(self) -> float:
        rate = STATE.user_qps
        return 0.0 if rate <= 0 else max(0.0, self.last_start + 1.0 / rate - time.monotonic())

    def on_start(self) -> None:
        if STATE.user_qps > 0:
            time.sleep(self.rng.uniform(0.0, 1.0 / STATE.user_qps))  # gevent-patched: yields to other users

    def on_stop(self) -> None:
        self.session.close()

    @task
    def retrieve(self) -> None:
        assert STATE.mix is not None, "the mix is loaded in the init event"
        body = STATE.mix.body(self.rng)
        self.last_start = time.monotonic()
        t0 = time.perf_counter()
        status, length, payload, retry_after = 0, 0, None, False
        try:
            resp = self.session.post(f"{self.host}/retrieve", json=body, timeout=STATE.timeout_s)
            response_ms = (time.perf_counter() - t0) * 1000.0
            status, length = resp.status_code, len(resp.content)
            retry_after = "retry-after" in resp.headers
            try:
                payload = resp.json()
            except ValueError:
                payload = None
        except requests.RequestException:
            response_ms = (time.perf_counter() - t0) * 1000.0
        outcome, message = classify(status, payload, body["beam_width"], body["top_k"], retry_after)
        STATE.log.record(outcome, response_ms)
        if outcome is Outcome.OK:
            STATE.engines[str(payload.get("engine")) if isinstance(payload, dict) else "?"] += 1
        self.environment.events.request.fire(
            request_type="POST", name=REQUEST_NAMES[outcome], response_time=response_ms, response_length=length,
            exception=None if message is None else RetrieveFailure(message), context={"outcome": str(outcome)})
