"""Locust file of the capacity sweep: a load shape that steps the offered load; speaks HTTP only.

Run (``radgr loadtest --sweep`` does this for you)::

    locust -f loadtest/sweep_locustfile.py --headless --csv OUT/locust --html OUT/report.html \
        --host http://127.0.0.1:8000 --mix-file OUT/mix.json --sweep-p99-ms 1000 --sweep-max-failure-ratio 0.01 \
        --sweep-start-qps 2 --sweep-factor 1.5 --sweep-step-s 15 --result-file OUT/result.json

Contract: the users are :class:`loadtest.retrieve_user.RetrieveUser`; :class:`CapacitySweep` (a Locust
``LoadTestShape``, so ``-u``/``-r``/``-t`` do not apply) runs the steps :mod:`loadtest.sweep` plans from the
``--sweep-*`` options (a :class:`~loadtest.profiles.SweepConfig`): each step sets ``ceil(offered / user_qps)``
users, each paced at ``offered / users`` requests per second, resets the outcome log ``settle_s`` into the step
and judges the step at its end; the shape stops when :func:`loadtest.sweep.next_offered_qps` says so. When Locust
quits, ``--result-file`` receives ``{"mode": "sweep", "exit_code", "verdict", **sweep_summary, "engines",
"locust"}``, each step with its measured window (unix seconds); the exit code is 0 when some step met the targets,
1 when none did, 2 when the user code raised.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from locust import LoadTestShape, events
from locust.env import Environment

from loadtest.profiles import SweepConfig
from loadtest.retrieve_user import STATE, RetrieveUser, locust_numbers, write_result
from loadtest.sweep import StepResult, judge_step, next_offered_qps, sweep_summary

__all__ = ["CapacitySweep", "RetrieveUser"]

logger = logging.getLogger("radgr.loadtest")
_DEFAULT = SweepConfig()


def _add_sweep_arguments(parser: Any, **_: Any) -> None:
    for name, default, text in (
            ("p99-ms", _DEFAULT.p99_ms, "A step breaks when its p99 (successful responses) exceeds this, ms."),
            ("max-failure-ratio", _DEFAULT.max_failure_ratio, "A step breaks when failed / all exceeds this."),
            ("start-qps", _DEFAULT.start_qps, "Offered load of the first step."),
            ("factor", _DEFAULT.factor, "Each step offers this many times the previous one."),
            ("step-s", _DEFAULT.step_s, "Seconds per step."),
            ("settle-s", _DEFAULT.settle_s, "Seconds at the start of a step that are not measured."),
            ("user-qps", _DEFAULT.user_qps, "Most requests per second one user offers (sets the user count)."),
            ("overload-multiple", _DEFAULT.overload_multiple, "Continue until offered = this × capacity."),
            ("max-steps", float(_DEFAULT.max_steps), "Most steps."),
            ("spawn-rate", _DEFAULT.spawn_rate, "Users started per second at a step change.")):
        parser.add_argument(f"--sweep-{name}", type=float, default=default, help=text)


def sweep_config(options: Any) -> SweepConfig:
    return SweepConfig(p99_ms=options.sweep_p99_ms, max_failure_ratio=options.sweep_max_failure_ratio,
                       start_qps=options.sweep_start_qps, factor=options.sweep_factor, step_s=options.sweep_step_s,
                       settle_s=options.sweep_settle_s, user_qps=options.sweep_user_qps,
                       overload_multiple=options.sweep_overload_multiple, max_steps=int(options.sweep_max_steps),
                       spawn_rate=options.sweep_spawn_rate)


@dataclass
class _Step:
    index: int
    offered_qps: float
    users: int
    started: float  # shape run time, s
    measuring: bool = False


class CapacitySweep(LoadTestShape):
    """Steps the offered load (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Locust leaves LoadTestShape.__init__ bare
        self.steps: list[StepResult] = []
        self.windows: list[tuple[float, float]] = []
        self.current: _Step | None = None
        self._cfg: SweepConfig | None = None

    @property
    def cfg(self) -> SweepConfig:
        if self._cfg is None:
            assert self.runner is not None
            self._cfg = sweep_config(self.runner.environment.parsed_options)
        return self._cfg

    def _start(self, offered: float, now: float) -> _Step:
        users = self.cfg.users_for(offered)
        STATE.user_qps = offered / users
        logger.info("sweep step %d: offering %.3g requests/s with %d users", len(self.steps), offered, users)
        return _Step(len(self.steps), offered, users, now)

    def tick(self) -> tuple[int, float] | None:
        cfg, now = self.cfg, time.perf_counter() - self.start_time  # LoadTestShape.get_run_time, typed
        step = self.current
        if step is None:
            first = next_offered_qps(self.steps, cfg)
            assert first is not None
            step = self.current = self._start(first, now)
        elif not step.measuring and now - step.started >= cfg.settle_s:
            STATE.reset_window()
            step.measuring = True
        elif step.measuring and now - step.started >= cfg.step_s:
            achieved = STATE.log.achieved(time.monotonic())
            result = judge_step(step.index, step.offered_qps, step.users, achieved, cfg)
            self.steps.append(result)
            self.windows.append((STATE.window_start_unix, time.time()))
            logger.info("sweep step %d: offered %.3g, goodput %.3g requests/s, p99 %s ms: %s", step.index,
                        step.offered_qps, achieved.qps, achieved.p99_ms, result.reason)
            offered = next_offered_qps(self.steps, cfg)
            if offered is None:
                return None
            step = self.current = self._start(offered, now)
        return step.users, cfg.spawn_rate


SHAPE_RESULTS: list[CapacitySweep] = []  # the shape Locust instantiated, for the quitting listener


def _on_init(environment: Environment, **_: Any) -> None:
    if isinstance(environment.shape_class, CapacitySweep):
        SHAPE_RESULTS.append(environment.shape_class)


def _on_quitting(environment: Environment, **_: Any) -> None:
    shape = SHAPE_RESULTS[0] if SHAPE_RESULTS else None
    steps = shape.steps if shape is not None else []
    cfg = shape.cfg if shape is not None else sweep_config(environment.parsed_options)
    summary = sweep_summary(steps, cfg)
    for step_json, (start, end) in zip(summary["steps"], shape.windows if shape else [], strict=True):
        step_json["window"] = {"start_unix": start, "end_unix": end}
    raised = bool(environment.runner is not None and environment.runner.exceptions)
    met = summary["capacity_step"] is not None
    code = 2 if raised else 0 if met else 1
    text = (f"capacity {summary['capacity_qps']:.3g} requests/s (offered {summary['capacity_offered_qps']:.3g}) "
            f"at p99 ≤ {cfg.p99_ms:g} ms and failures ≤ {cfg.max_failure_ratio:g}" if met
            else "no step met the targets")
    environment.process_exit_code = code
    (logger.info if code == 0 else logger.error)("radgr loadtest sweep: %s", text)
    write_result(environment, {"mode": "sweep", "exit_code": code, "verdict": text, **summary,
                               "engines": dict(STATE.engines), "locust": locust_numbers(environment)})


events.init_command_line_parser.add_listener(_add_sweep_arguments)
events.init.add_listener(_on_init)
events.quitting.add_listener(_on_quitting)
