"""``radgr demo`` — the whole path from nothing, each step a real radgr command, finished steps reused.

Steps (outputs under ``--workdir``, default ``runs/demo``): simulate a catalog and 8 days of sessions → build the
SID index → build samples → SFT the tiny model → RAD-DPO → evaluate SFT and RAD-DPO (table printed) → export a
bundle → start ``radgr serve`` on 127.0.0.1 → send one real ``POST /retrieve`` and print it → leave the server
running (``--no-keep-serving`` stops it instead). A step is skipped when its ``.done`` marker holds the same
command line as now, so re-running the demo reuses finished work.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import typer
from rich.console import Console
from rich.panel import Panel

console = Console()


def _run_step(name: str, argv: list[str], done_dir: Path, outputs: list[Path]) -> None:
    """Run ``radgr <argv>`` in a subprocess unless its marker says the same command already finished."""
    marker = done_dir / f"{name}.done"
    line = " ".join(argv)
    if marker.exists() and marker.read_text() == line and all(p.exists() for p in outputs):
        console.print(f"[green]✓ {name}[/green] (reused) radgr {line}")
        return
    console.rule(f"[bold]{name}")
    console.print(f"$ radgr {line}")
    t0 = time.perf_counter()
    rc = subprocess.call([sys.executable, "-m", "cli.main", *argv])
    if rc != 0:
        raise typer.Exit(rc)
    marker.write_text(line)
    console.print(f"[green]✓ {name}[/green] in {time.perf_counter() - t0:.1f} s")


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
    t_start = time.perf_counter()
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    done = workdir / ".steps"
    done.mkdir(parents=True, exist_ok=True)
    w = str(workdir)
    data, index, samples = f"{w}/data", f"{w}/index", f"{w}/samples"
    sft, rad, bundle = f"{w}/sft", f"{w}/rad-dpo", f"{w}/bundle"

    _run_step("simulate", ["data", "simulate", "--out", data], done, [Path(data)])
    _run_step("index", ["index", "build", "--catalog", f"{data}/catalog.parquet", "--out", index,
                        "--codebooks", "32,16,16"], done, [Path(index)])
    _run_step("samples", ["data", "samples", "--sessions", f"{data}/sessions.parquet", "--index", index,
                          "--catalog", f"{data}/catalog.parquet", "--out", samples], done, [Path(samples)])
    _run_step("sft", ["train", "sft", "--samples", samples, "--index", index, "--out", sft, "--preset", "tiny"],
              done, [Path(sft) / "final"])
    _run_step("rad-dpo", ["train", "align", "--method", "rad-dpo", "--sft", f"{sft}/final", "--samples", samples,
                          "--out", rad, "--max-steps", "300", "--lr", "5e-5"], done, [Path(rad) / "final"])
    for name, model in (("eval-sft", f"{sft}/final"), ("eval-rad-dpo", f"{rad}/final")):
        # the PyTorch engine: 2x faster than vLLM on CPU, same metrics (tests/test_vllm_engine.py); the server below
        # runs with --engine auto (vLLM where installed)
        _run_step(name, ["eval", "--model", model, "--index", index, "--samples", samples, "--engine", "torch",
                         "--out", f"{w}/{name}.json", "--limit", "400"], done, [Path(f"{w}/{name}.json")])
    _run_step("export", ["export", "--checkpoint", f"{rad}/final", "--index", index, "--samples", samples,
                         "--metrics", f"{w}/eval-rad-dpo.json", "--out", bundle], done, [Path(bundle)])

    console.rule("[bold]serve")
    url = f"http://127.0.0.1:{port}"
    console.print(f"$ radgr serve --bundle {bundle} --port {port}")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--bundle", bundle, "--port", str(port)])
    try:
        _wait_ready(url, proc, timeout_s=180)
        body = {"query": _example_query(Path(samples)), "top_k": 5, "beam_width": 128}
        req = urllib.request.Request(url + "/retrieve", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer = json.loads(resp.read())
        console.print(Panel(json.dumps(body), title="POST /retrieve"))
        console.print_json(json.dumps(answer))
        console.print(f"[bold]served by the {answer['engine']} engine[/bold] (radgr serve --engine auto: vLLM where "
                      "installed, else PyTorch)")
        console.print(f"[bold green]demo finished in {time.perf_counter() - t_start:.0f} s[/bold green]")
        curl = (f"curl -s {url}/retrieve -H 'Content-Type: application/json' "
                f"-d '{json.dumps({'query': body['query'], 'top_k': 5})}'")
        if not keep_serving:
            return 0
        console.print(f"The server keeps running at {url} (Ctrl-C stops it). Try:\n  {curl}")
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _example_query(samples: Path) -> str:
    """A real query from the test split, so the request looks like the traffic the model was trained on."""
    import pyarrow.parquet as pq

    table = pq.read_table(samples / "test.parquet", columns=["prompt"])
    for prompt in table.column("prompt").to_pylist()[:200]:
        first: str = prompt.split("\n", 1)[0]
        if first.startswith("query: ") and len(first) > len("query: "):
            return first[len("query: "):]
    return ""

