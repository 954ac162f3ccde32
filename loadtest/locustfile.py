"""Locust file of a constant-load run with pass/fail gates; speaks HTTP only.

Run (``radgr loadtest`` does this for you)::

    locust -f loadtest/locustfile.py --headless -u 30 -r 10 -t 120s --reset-stats --csv OUT/locust \
        --html OUT/report.html --host http://127.0.0.1:8000 --mix-file OUT/mix.json --user-qps 0.5 \
        --gate-p50-ms 300 --gate-p99-ms 1000 --gate-max-failure-ratio 0.01 --gate-min-qps 14 \
        --result-file OUT/result.json

Contract: the users are :class:`loadtest.retrieve_user.RetrieveUser`. When Locust quits, the gates
(``--gate-*`` options or ``RADGR_LT_*`` variables; defaults: the ``gpu-4090`` profile) are checked by
:func:`loadtest.gates.check_gates` on the exact numbers of the measured window (after the ramp): the process exit
code is 0 when every gate passed, 1 when one was missed (the log names it, e.g. ``missed gate(s): p50 12.3 ms >
0.001 ms``), 2 when the user code raised. ``--result-file`` receives the JSON: ``mode``, ``exit_code``,
``verdict``, ``gates`` (one object per gate), ``achieved`` (counts per outcome, p50/p99, failure ratio, goodput),
``window`` (unix start/end), ``engines`` (successful responses per engine name), and Locust's own (rounded)
aggregate numbers under ``locust``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from locust import events
from locust.env import Environment

from loadtest.gates import check_gates, verdict
from loadtest.profiles import PROFILES, Gates
from loadtest.retrieve_user import STATE, RetrieveUser, locust_numbers, write_result

__all__ = ["RetrieveUser"]

logger = logging.getLogger("radgr.loadtest")
_DEFAULT = PROFILES["gpu-4090"].gates


def _add_gate_arguments(parser: Any, **_: Any) -> None:
    parser.add_argument("--gate-p50-ms", type=float, default=_DEFAULT.p50_ms, env_var="RADGR_LT_P50_MS",
                        help="Upper bound of the successful responses' median, ms.")
    parser.add_argument("--gate-p99-ms", type=float, default=_DEFAULT.p99_ms, env_var="RADGR_LT_P99_MS",
                        help="Upper bound of the successful responses' 99th percentile, ms.")
    parser.add_argument("--gate-max-failure-ratio", type=float, default=_DEFAULT.max_failure_ratio,
                        env_var="RADGR_LT_MAX_FAILURE_RATIO", help="Upper bound of failed / all requests.")
    parser.add_argument("--gate-min-qps", type=float, default=_DEFAULT.min_qps, env_var="RADGR_LT_MIN_QPS",
                        help="Lower bound of successful responses per second.")


def _on_quitting(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    assert options is not None
    gates = Gates(p50_ms=options.gate_p50_ms, p99_ms=options.gate_p99_ms,
                  max_failure_ratio=options.gate_max_failure_ratio, min_qps=options.gate_min_qps)
    achieved = STATE.log.achieved(STATE.stopped_monotonic or time.monotonic())
    results = check_gates(achieved, gates)
    text = verdict(results)
    raised = bool(environment.runner is not None and environment.runner.exceptions)
    code = 2 if raised else 0 if all(r.passed for r in results) else 1
    environment.process_exit_code = code
    (logger.info if code == 0 else logger.error)("radgr loadtest: %s", text)
    if raised:
        logger.error("radgr loadtest: the user code raised; see the exceptions above")
    write_result(environment, {
        "mode": "constant", "exit_code": code, "verdict": text, "gates": [r.to_json() for r in results],
        "achieved": achieved.to_json(),
        "window": {"start_unix": STATE.window_start_unix, "end_unix": STATE.window_end_unix or time.time()},
        "engines": dict(STATE.engines), "locust": locust_numbers(environment)})


events.init_command_line_parser.add_listener(_add_gate_arguments)
events.quitting.add_listener(_on_quitting)
