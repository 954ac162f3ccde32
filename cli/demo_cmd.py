"""``radgr demo`` — the whole path from nothing, each step a real radgr command, finished steps reused.

Steps (outputs under ``--workdir``, default ``runs/demo``): simulate a catalog and 8 days of sessions → build the
SID index → build samples → SFT the tiny model → RAD-DPO → evaluate RAD-DPO against SFT on the same sessions
(table and paired 95 % intervals printed) → export a bundle → start ``radgr serve`` on 127.0.0.1 → send one real
``POST /retrieve`` and print it → leave the server running (``--no-keep-serving`` stops it instead). A step is
skipped when its ``.done`` marker holds the same command line as now (:func:`demo_steps` lists them), so re-running
the demo reuses finished work.

Every step and the server run as child processes of :class:`cli.children.Children`: SIGTERM or SIGINT to the demo
(a supervisor, ``timeout``, Ctrl-C) stops the running child (SIGTERM, then SIGKILL after the grace period) before
the demo exits, and on Linux a child also gets SIGTERM if the demo dies abruptly. Exit status: the failing step's,
0 after a signal once the server was serving, 128 + the signal number when stopped before that.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.panel import Panel

from cli.children import Children, Stopped

console = Console()
EVAL_FILE = "eval.json"  # the eval step's report (RAD-DPO paired with SFT, popularity rows), under the workdir
SERVER_STOP_GRACE_S = 30.0  # radgr serve drains for up to --drain-grace-s (10 s) after SIGTERM


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]  # radgr's arguments
    outputs: tuple[Path, ...]  # must all exist for the step's marker to count

    @property
    def line(self) -> str:
        return " ".join(self.argv)


def demo_steps(workdir: Path) -> list[Step]:
    """The demo's steps before serving, in order (their markers live in ``workdir/.steps``)."""
    w = str(workdir)
    data, index, samples = f"{w}/data", f"{w}/index", f"{w}/samples"
    sft, rad, bundle = f"{w}/sft", f"{w}/rad-dpo", f"{w}/bundle"
    steps = [
        Step("simulate", ("data", "simulate", "--out", data), (Path(data),)),
        Step("index", ("index", "build", "--catalog", f"{data}/catalog.parquet", "--out", index,
                       "--codebooks", "32,16,16"), (Path(index),)),
        Step("samples", ("data", "samples", "--sessions", f"{data}/sessions.parquet", "--index", index,
                         "--catalog", f"{data}/catalog.parquet", "--out", samples), (Path(samples),)),
        Step("sft", ("train", "sft", "--samples", samples, "--index", index, "--out", sft, "--preset", "tiny"),
             (Path(sft) / "final",)),
        Step("rad-dpo", ("train", "align", "--method", "rad-dpo", "--sft", f"{sft}/final", "--samples", samples,
                         "--out", rad, "--max-steps", "300", "--lr", "5e-5"), (Path(rad) / "final",)),
    ]
    # RAD-DPO against SFT on the same test sessions (a paired test), with the popularity baselines. The PyTorch
    # engine: 2x faster than vLLM on CPU, same metrics (tests/test_vllm_engine.py); the server runs with
    # --engine auto (vLLM where installed)
    steps.append(Step("eval", ("eval", "--model", f"{rad}/final", "--against", f"{sft}/final", "--baseline",
                               "popularity", "--index", index, "--samples", samples, "--engine", "torch", "--out",
                               f"{w}/{EVAL_FILE}", "--limit", "400"), (Path(f"{w}/{EVAL_FILE}"),)))
    steps.append(Step("export", ("export", "--checkpoint", f"{rad}/final", "--index", index, "--samples", samples,
                                 "--metrics", f"{w}/{EVAL_FILE}", "--out", bundle), (Path(bundle),)))
    return steps


def comparison_lines(eval_json: Path) -> list[str]:
    """The demo's closing comparison: RAD-DPO − SFT on item R@10 and MRR with 95 % paired intervals, read from
    the eval step's report (its second entry is RAD-DPO paired with the first, SFT); a note when it has none."""
    from training.eval_intervals import paired_summary

    results = json.loads(eval_json.read_text()).get("results", [])
    if len(results) < 2 or "paired" not in results[1]:
        return [f"{eval_json} holds no paired comparison (rerun with --fresh)"]
    return [*paired_summary(results[1]).splitlines(),
            "One seed, one world: an interval that covers 0 means this run cannot tell the methods apart "
            "(see `radgr experiment paper-table` for seeds and significance)."]


def run_step(step: Step, done_dir: Path, children: Children) -> None:
    """Run ``radgr <argv>`` in a child process unless its marker says the same command already finished."""
    marker = done_dir / f"{step.name}.done"
    if marker.exists() and marker.read_text() == step.line and all(p.exists() for p in step.outputs):
        console.print(f"[green]✓ {step.name}[/green] (reused) radgr {step.line}")
        return
    console.rule(f"[bold]{step.name}")
    console.print(f"$ radgr {step.line}")
    t0 = time.perf_counter()
    proc = children.popen([sys.executable, "-m", "cli.main", *step.argv])
    rc = proc.wait()
    children.forget(proc)
    if rc != 0:
        raise typer.Exit(rc)
    marker.write_text(step.line)
    console.print(f"[green]✓ {step.name}[/green] in {time.perf_counter() - t0:.1f} s")


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server at {url} not ready after {timeout_s:.0f} s")


def demo_command(
    workdir: Path = typer.Option(Path("runs/demo"), help="Where every step writes its outputs."),
    port: int = typer.Option(8000, help="Port of the demo server on 127.0.0.1."),
    keep_serving: bool = typer.Option(True, help="Leave the server running at the end (Ctrl-C stops it)."),
    fresh: bool = typer.Option(False, help="Delete the workdir first instead of reusing finished steps."),
) -> int:
    """Simulate → index → samples → SFT → RAD-DPO → eval → export → serve → one real /retrieve."""
    progress = _Progress()
    with Children(grace_s=SERVER_STOP_GRACE_S) as children:  # on leaving, every child still running is stopped
        try:
            return _run_demo(workdir, port, keep_serving, fresh, children, progress)
        except Stopped as stop:
            console.print(f"[yellow]{stop}: stopping {len(children.live)} child process(es)[/yellow]")
            return 0 if progress.serving else 128 + stop.signum


@dataclass
class _Progress:
    serving: bool = False  # the demo's work is done and the server answered


def _run_demo(workdir: Path, port: int, keep_serving: bool, fresh: bool, children: Children,
              progress: _Progress) -> int:
    t_start = time.perf_counter()
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    done = workdir / ".steps"
    done.mkdir(parents=True, exist_ok=True)
    for step in demo_steps(workdir):
        run_step(step, done, children)
    bundle, samples = f"{workdir}/bundle", workdir / "samples"
    console.rule("[bold]RAD-DPO vs SFT")
    for line in comparison_lines(workdir / EVAL_FILE):
        console.print(line, soft_wrap=True, markup=False, highlight=False)

    console.rule("[bold]serve")
    url = f"http://127.0.0.1:{port}"
    console.print(f"$ radgr serve --bundle {bundle} --port {port}")
    proc = children.popen([sys.executable, "-m", "cli.main", "serve", "--bundle", bundle, "--port", str(port)])
    try:
        _wait_ready(url, proc, timeout_s=180)
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    body = {"query": _example_query(samples), "top_k": 5, "beam_width": 128}
    req = urllib.request.Request(url + "/retrieve", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        answer = json.loads(resp.read())
    progress.serving = True
    console.print(Panel(json.dumps(body), title="POST /retrieve"))
    console.print_json(json.dumps(answer))
    console.print(f"[bold]served by the {answer['engine']} engine[/bold] (radgr serve --engine auto: vLLM where "
                  "installed, else PyTorch)")
    console.print(f"[bold green]demo finished in {time.perf_counter() - t_start:.0f} s[/bold green]")
    curl = (f"curl -s {url}/retrieve -H 'Content-Type: application/json' "
            f"-d '{json.dumps({'query': body['query'], 'top_k': 5})}'")
    if not keep_serving:
        return 0
    console.print(f"The server keeps running at {url} (Ctrl-C or SIGTERM stops it). Try:\n  {curl}")
    rc = proc.wait()
    children.forget(proc)
    return rc


def _example_query(samples: Path) -> str:
    """A real query from the test split, so the request looks like the traffic the model was trained on."""
    import pyarrow.parquet as pq

    table = pq.read_table(samples / "test.parquet", columns=["prompt"])
    for prompt in table.column("prompt").to_pylist()[:200]:
        first: str = prompt.split("\n", 1)[0]
        if first.startswith("query: ") and len(first) > len("query: "):
            return first[len("query: "):]
    return ""

