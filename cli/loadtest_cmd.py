"""``radgr loadtest`` — Locust load tests with pass/fail gates, and the capacity sweep.

- ``radgr loadtest --bundle B [--profile cpu-smoke|gpu-4090] [--engine auto|torch|vllm]``: starts ``radgr serve
  --bundle B`` in its own process on 127.0.0.1, runs the profile against it with Locust headless (its own
  process), stops the server with SIGTERM; ``--host URL`` targets a running server instead (then the mix comes from
  ``--bundle``, ``--sessions`` or ``--mix``).
- Custom targets override the profile: ``--users --spawn-rate --run-time --qps`` (load), ``--p50-ms --p99-ms
  --max-failure-ratio --min-qps`` (gates), ``--beam-widths --top-ks`` (drawn per request).
- ``--sweep``: the capacity sweep (``--p99-ms`` and ``--max-failure-ratio`` are its targets, else 1000 ms and 1 %),
  stepping the offered load from ``--sweep-start-qps`` by ``--sweep-factor`` every ``--sweep-step-s``.
- The mix (``OUT/mix.json``): ``--mix FILE`` as given; else ``--sessions S.parquet`` (the final day's sessions, the
  test split of the default day split: their query, profile and history); else synthetic from the bundle (queries
  from its query categorizer's words, histories of varied length from its index's item ids).
- ``--client-cpus`` / ``--server-cpus`` pin Locust / the started server (e.g. ``1`` and ``0``); the summary records
  the CPU sets and both processes' CPU use (``--server-pid`` names a ``--host`` server's process).
  ``--serve-options`` passes more ``radgr serve`` options to the started server.
Writes into ``--out`` (default ``runs/loadtest/<profile>`` or ``runs/loadtest/sweep``) the files listed in
:mod:`loadtest.runner`. Exit codes: 0 every gate passed (sweep: some step met the targets), 1 a gate was missed
(the message names it), 2 the run failed or the options are invalid.
"""

from __future__ import annotations

import random
import shlex
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def _ints(text: str | None, name: str) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, given {text!r}") from None


def _final_day_sessions(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The sessions of the file's final day (the test split of ``radgr data samples``' default day split)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["day", "query", "profile", "history"])
    if table.num_rows == 0:
        raise ValueError(f"sessions file {str(path)!r} is empty")
    day = int(pc.max(table.column("day")).as_py())
    rows: list[dict[str, Any]] = table.filter(pc.equal(table.column("day"), day)).to_pylist()
    return rows, day


def build_mix(out: Path, *, bundle: Path | None, sessions: Path | None, mix: Path | None, size: int, seed: int,
              beam_widths: tuple[int, ...], top_ks: tuple[int, ...]) -> Path:
    """Writes ``out/mix.json`` from ``--mix``, ``--sessions`` or the bundle (see the module docstring)."""
    from loadtest.mix import RequestMix, requests_from_sessions, synthetic_queries, synthetic_requests

    rng = random.Random(seed)
    if mix is not None:
        request_mix = RequestMix.load(mix)
        source = request_mix.source or str(mix)
        requests = request_mix.requests
    elif sessions is not None:
        rows, day = _final_day_sessions(sessions)
        requests = tuple(requests_from_sessions(rows, size, rng))
        source = f"sessions {sessions} (day {day}: {len(rows)} sessions)"
    elif bundle is not None:
        from decoding.hard_search import QueryCategorizer
        from sid_index.index import SidIndex

        categorizer = QueryCategorizer.load(bundle / "query_categorizer.json")
        item_ids = SidIndex.load(bundle / "index", verify_checksums=False).item_ids
        queries = synthetic_queries(categorizer.word_counts, size, rng)
        requests = tuple(synthetic_requests(queries, item_ids, size, rng))
        source = f"synthetic from bundle {bundle} (categorizer words, {len(item_ids)} item ids)"
    else:
        raise ValueError("no request mix: give --bundle, --sessions or --mix")
    return RequestMix(requests=requests, beam_widths=beam_widths, top_ks=top_ks, source=source).save(out / "mix.json")


def _print_constant(summary: dict[str, Any]) -> None:
    table = Table(title=f"radgr loadtest --profile {summary['targets']['profile']} ({summary['host']})")
    for col in ("gate", "target", "achieved", "passed"):
        table.add_column(col)
    for g in summary["gates"]:
        achieved = "—" if g["achieved"] is None else f"{g['achieved']:.4g}"
        table.add_row(g["name"], f"{g['target']:g}", achieved, "yes" if g["passed"] else "[red]NO[/red]")
    console.print(table)
    a, cpu = summary["achieved"], summary["cpu"]
    console.print(f"requests {a['requests']}: ok {a['ok']}, shed (503) {a['shed']}, timed out (504) "
                  f"{a['timed_out']}, invalid {a['invalid']}, errors {a['errors']}; engines {summary['engines']}")
    client, server = cpu["client"], cpu["server"]
    line = (f"CPU over {cpu['window_s']:.1f} s ({cpu['machine_cpus']} CPUs, 100 % = one core): "
            f"client {client['cpu_percent']} % (CPUs {client['cpus']})")
    if server is not None:
        line += f", server {server['cpu_percent']} % (CPUs {server['cpus']})"
    console.print(line)


def _print_sweep(summary: dict[str, Any]) -> None:
    table = Table(title=f"radgr loadtest --sweep ({summary['host']})")
    for col in ("offered/s", "users", "goodput/s", "p50 ms", "p99 ms", "failed", "503", "504", "CPU % client/server",
                "met"):
        table.add_column(col)

    def num(v: float | None) -> str:
        return "—" if v is None else f"{v:.4g}"

    for s in summary["steps"]:
        table.add_row(f"{s['offered_qps']:.3g}", str(s["users"]), f"{s['qps']:.3g}", num(s["p50_ms"]), num(s["p99_ms"]),
                      f"{s['failure_ratio']:.3f}", str(s["shed"]), str(s["timed_out"]),
                      f"{num(s.get('client_cpu_percent'))}/{num(s.get('server_cpu_percent'))}",
                      "yes" if s["passed"] else "[red]no[/red]")
    console.print(table)
    if summary["broke_at_offered_qps"] is not None:
        console.print(f"first break at {summary['broke_at_offered_qps']:.3g} offered requests/s: "
                      f"{summary['broke_because']}")


def loadtest_command(
    host: str | None = typer.Option(None, "--host", help="URL of a running server (else --bundle starts one)."),
    bundle: Path | None = typer.Option(None, "--bundle", help="Bundle: served by a server started here (unless "
                                                                  "--host) and the source of the request mix."),
    profile: str = typer.Option("cpu-smoke", "--profile", help="cpu-smoke or gpu-4090."),
    out: Path | None = typer.Option(None, "--out", help="Output directory (default runs/loadtest/<profile|sweep>)."),
    mix: Path | None = typer.Option(None, "--mix", help="A request mix JSON to use as is."),
    sessions: Path | None = typer.Option(None, "--sessions", help="Sessions Parquet: the final day's sessions "
                                                                      "become the mix."),
    mix_size: int = typer.Option(512, "--mix-size", help="Requests in a built mix."),
    users: int | None = typer.Option(None, "--users", help="Locust users (overrides the profile)."),
    spawn_rate: float | None = typer.Option(None, "--spawn-rate", help="Users started per second."),
    run_time: int | None = typer.Option(None, "--run-time", help="Measured seconds after the ramp."),
    qps: float | None = typer.Option(None, "--qps", help="Total offered requests/s (constant_throughput per user)."),
    p50_ms: float | None = typer.Option(None, "--p50-ms", help="Gate: p50 of successful responses ≤ this, ms."),
    p99_ms: float | None = typer.Option(None, "--p99-ms", help="Gate: p99 ≤ this, ms (the sweep's target too)."),
    max_failure_ratio: float | None = typer.Option(None, "--max-failure-ratio",
                                                   help="Gate: failed / all ≤ this (503, 504 and invalid fail)."),
    min_qps: float | None = typer.Option(None, "--min-qps", help="Gate: successful responses/s ≥ this."),
    beam_widths: str | None = typer.Option(None, "--beam-widths", help="Beam widths drawn per request, e.g. 32,128."),
    top_ks: str | None = typer.Option(None, "--top-ks", help="top_k values drawn per request, e.g. 10,50."),
    sweep: bool = typer.Option(False, "--sweep", help="Capacity sweep instead of a constant load."),
    sweep_start_qps: float = typer.Option(2.0, "--sweep-start-qps", help="Offered load of the first step."),
    sweep_factor: float = typer.Option(1.5, "--sweep-factor", help="Offered load × this per step."),
    sweep_step_s: float = typer.Option(20.0, "--sweep-step-s", help="Seconds per step."),
    sweep_settle_s: float = typer.Option(5.0, "--sweep-settle-s", help="Unmeasured seconds at a step's start."),
    sweep_user_qps: float = typer.Option(1.0, "--sweep-user-qps", help="Most requests/s per user."),
    sweep_overload: float = typer.Option(3.0, "--sweep-overload", help="Continue until offered = this × capacity."),
    sweep_max_steps: int = typer.Option(16, "--sweep-max-steps", help="Most steps."),
    engine: str | None = typer.Option(None, "--engine", help="Engine of the started server: auto, torch or vllm "
                                                                 "(default: radgr serve's, RADGR_ENGINE)."),
    serve_options: str = typer.Option("", "--serve-options", help="More `radgr serve` options for the started "
                                                                  "server, e.g. '--max-queue-requests 8'."),
    server_pid: int | None = typer.Option(None, "--server-pid", help="With --host: the server's process id on "
                                                                         "this machine, to measure its CPU."),
    client_cpus: str | None = typer.Option(None, "--client-cpus", help="Pin Locust to these CPUs, e.g. 1."),
    server_cpus: str | None = typer.Option(None, "--server-cpus", help="Pin the started server, e.g. 0."),
    seed: int = typer.Option(0, "--seed", help="Seed of the mix and the users' draws."),
) -> int:
    """Load-test a server with Locust: gates decide the exit code; --sweep measures capacity."""
    from loadtest.profiles import SweepConfig, profile_named, with_overrides
    from loadtest.runner import LoadTestRun, ServerLaunch, parse_cpus, run_load_test

    try:
        if host is None and bundle is None:
            raise ValueError("give --bundle (start a server) or --host (a running one)")
        base = profile_named(profile)
        beams, ks = _ints(beam_widths, "--beam-widths"), _ints(top_ks, "--top-ks")
        load = with_overrides(base, users=users, spawn_rate=spawn_rate, run_time_s=run_time, qps=qps, p50_ms=p50_ms,
                              p99_ms=p99_ms, max_failure_ratio=max_failure_ratio, min_qps=min_qps,
                              beam_widths=beams, top_ks=ks)
        sweep_cfg = None
        if sweep:
            defaults = SweepConfig()
            sweep_cfg = SweepConfig(
                p99_ms=defaults.p99_ms if p99_ms is None else p99_ms,
                max_failure_ratio=defaults.max_failure_ratio if max_failure_ratio is None else max_failure_ratio,
                start_qps=sweep_start_qps, factor=sweep_factor, step_s=sweep_step_s, settle_s=sweep_settle_s,
                user_qps=sweep_user_qps, overload_multiple=sweep_overload, max_steps=sweep_max_steps,
                beam_widths=beams or defaults.beam_widths, top_ks=ks or defaults.top_ks)
        out_dir = out or Path("runs") / "loadtest" / ("sweep" if sweep else load.name)
        out_dir.mkdir(parents=True, exist_ok=True)
        mix_file = build_mix(out_dir, bundle=bundle, sessions=sessions, mix=mix, size=mix_size, seed=seed,
                             beam_widths=sweep_cfg.beam_widths if sweep_cfg else load.beam_widths,
                             top_ks=sweep_cfg.top_ks if sweep_cfg else load.top_ks)
        server = None
        if host is None:
            assert bundle is not None
            options = (*(("--engine", engine) if engine else ()), *shlex.split(serve_options))
            server = ServerLaunch(bundle=bundle, serve_options=options, cpus=parse_cpus(server_cpus))
        run = LoadTestRun(out_dir=out_dir, mix_file=mix_file, host=host, server=server,
                          profile=None if sweep_cfg else load, sweep=sweep_cfg, client_cpus=parse_cpus(client_cpus),
                          server_pid=server_pid if host is not None else None, seed=seed)
    except (ValueError, OSError) as exc:
        err_console.print(f"[red]radgr loadtest:[/red] {exc}")
        return 2
    what = "capacity sweep" if sweep_cfg else f"profile {load.name}"
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task(f"load test ({what})", total=None)

        def progress(elapsed: float, expected: float | None) -> None:
            bar.update(task, total=expected, completed=min(elapsed, expected) if expected else elapsed)

        outcome = run_load_test(run, progress)
    if outcome.exit_code == 2 or not outcome.summary:
        err_console.print(f"[red]radgr loadtest failed:[/red] {outcome.message}")
        return 2
    (_print_sweep if sweep_cfg else _print_constant)(outcome.summary)
    console.print(f"report: {outcome.summary_path}, {outcome.png_path}, {out_dir / 'report.html'}")
    if outcome.exit_code == 0:
        console.print(f"[green]{outcome.message}[/green]")
    else:
        err_console.print(f"[red]{outcome.message}[/red]")
    return outcome.exit_code
