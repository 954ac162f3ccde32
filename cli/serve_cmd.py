"""``radgr serve --bundle DIR [--host 127.0.0.1] [--port 8000] ...`` — serve a bundle over HTTP.

One uvicorn worker, one engine (``--engine auto``: vLLM where installed, else PyTorch). Every setting of
:class:`server.settings.ServerSettings` reads from ``RADGR_<NAME>`` (``RADGR_MAX_WAIT_MS=5``, ``RADGR_PORT``,
``RADGR_BUNDLE``, ...); an option given on the command line outranks its variable, and an option *not* given
passes nothing (so the environment, then the settings' default, decides: the help shows that default). The API
key is read only from ``RADGR_API_KEY``. The bundle is verified before the server starts (exit 1 with the failing
check); bad options or variables exit 2; SIGTERM drains (exit 0).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

err_console = Console(stderr=True)

_DEFAULTS: dict[str, str] = {  # shown in --help; ServerSettings holds the real defaults (a test checks they agree)
    "host": "127.0.0.1", "port": "8000", "max_wait_ms": "5.0", "max_batch_requests": "16", "max_batch_rows": "1024",
    "max_queue_requests": "64", "max_queue_rows": "8192", "max_queue_wait_s": "0.5", "queue_wait_batches": "3.0",
    "request_timeout_s": "10.0",
    "drain_grace_s": "10.0",
    "device": "auto", "torch_threads": "0", "log_level": "info", "engine": "auto", "engine_process": "False",
    "engine_nice": "10",
    "vllm_scoring": "processor",
    "vllm_driver": "core", "vllm_dtype": "float32", "vllm_max_model_len": "1024", "vllm_kv_cache_gib": "1.0",
}


def _opt(name: str, help_text: str) -> Any:
    """An option that passes nothing unless given; its help names the default and the variable."""
    flag = "--" + name.replace("_", "-")
    return typer.Option(None, flag, show_default=False,
                        help=f"{help_text} (default {_DEFAULTS[name]}; env RADGR_{name.upper()})")


def serve_command(
    bundle: Path = typer.Option(..., "--bundle", envvar="RADGR_BUNDLE",
                                help="Bundle directory written by `radgr export`."),
    host: str | None = _opt("host", "Bind address (the container passes 0.0.0.0)."),
    port: int | None = _opt("port", "TCP port (0 = any free port)."),
    max_wait_ms: float | None = _opt("max_wait_ms", "Batching wait after the first queued request."),
    max_batch_requests: int | None = _opt("max_batch_requests", "Requests per engine batch."),
    max_batch_rows: int | None = _opt("max_batch_rows", "Beam rows per engine batch."),
    max_queue_requests: int | None = _opt("max_queue_requests", "Queued requests before 503."),
    max_queue_rows: int | None = _opt("max_queue_rows", "Queued beam rows before 503."),
    max_queue_wait_s: float | None = _opt("max_queue_wait_s", "Shed (503) when the estimated wait exceeds this."),
    queue_wait_batches: float | None = _opt("queue_wait_batches", "... or this many full batches at the measured "
                                                                    "rate, whichever is shorter."),
    request_timeout_s: float | None = _opt("request_timeout_s", "Per-request deadline (504)."),
    drain_grace_s: float | None = _opt("drain_grace_s", "SIGTERM grace period for in-flight work."),
    device: str | None = _opt("device", "Engine device: auto, cpu, cuda or cuda:N."),
    torch_threads: int | None = _opt("torch_threads", "torch threads of the engine (0 = default)."),
    log_level: str | None = _opt("log_level", "uvicorn log level."),
    engine: str | None = _opt("engine", "auto (vLLM where installed, else PyTorch), torch or vllm."),
    engine_process: bool | None = typer.Option(
        None, "--engine-process/--engine-in-process", show_default=False,
        help="Run the PyTorch engine in its own process, so that its Python never delays the server's answers "
             "(default False; env RADGR_ENGINE_PROCESS)."),
    engine_nice: int | None = _opt("engine_nice", "CPU priority the engine process gives up (os.nice, 0..19)."),
    vllm_scoring: str | None = _opt("vllm_scoring", "vLLM child scoring: processor (trie logits processor) or "
                                                    "token_ids."),
    vllm_driver: str | None = _opt("vllm_driver", "core (vLLM's engine core directly) or llm (public LLM.generate)."),
    vllm_dtype: str | None = _opt("vllm_dtype", "vLLM dtype: float32, bfloat16 or float16."),
    vllm_max_model_len: int | None = _opt("vllm_max_model_len", "vLLM context length."),
    vllm_kv_cache_gib: float | None = _opt("vllm_kv_cache_gib", "vLLM KV cache on CPU, GiB."),
) -> int:
    """Serve a bundle over HTTP (POST /retrieve)."""
    from pydantic import ValidationError

    from decoding.bundle import BundleError, verify_bundle
    from server.runner import run_server
    from server.settings import ServerSettings

    options: dict[str, Any] = {
        "host": host, "port": port, "max_wait_ms": max_wait_ms, "max_batch_requests": max_batch_requests,
        "max_batch_rows": max_batch_rows, "max_queue_requests": max_queue_requests, "max_queue_rows": max_queue_rows,
        "max_queue_wait_s": max_queue_wait_s, "queue_wait_batches": queue_wait_batches,
        "request_timeout_s": request_timeout_s, "drain_grace_s": drain_grace_s,
        "device": device,
        "torch_threads": torch_threads, "log_level": log_level, "engine": engine, "engine_process": engine_process,
        "engine_nice": engine_nice,
        "vllm_scoring": vllm_scoring, "vllm_driver": vllm_driver, "vllm_dtype": vllm_dtype,
        "vllm_max_model_len": vllm_max_model_len,
        "vllm_kv_cache_gib": vllm_kv_cache_gib}
    given = {name: value for name, value in options.items() if value is not None}
    try:  # options given outrank RADGR_* variables, which outrank the defaults
        settings = ServerSettings(bundle=bundle, **given)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            err_console.print(f"[red]invalid option or RADGR_ variable {where}:[/red] {err['msg']}", soft_wrap=True)
        return 2
    level = settings.log_level
    logging.basicConfig(level=logging.DEBUG if level in {"debug", "trace"} else level.upper(),
                        format="%(levelname)s:     %(name)s: %(message)s")
    try:
        verify_bundle(settings.bundle)
    except BundleError as exc:
        err_console.print(f"[red]refusing to serve {bundle}:[/red] {exc}")
        return 1
    return run_server(settings)
