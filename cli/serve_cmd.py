"""``radgr serve --bundle DIR [--host 127.0.0.1] [--port 8000] ...`` — serve a bundle over HTTP.

One uvicorn worker, one engine (``--engine auto``: vLLM where installed, else PyTorch). Every option also reads
from ``RADGR_<NAME>`` (see
:mod:`server.settings`); the API key is read only from ``RADGR_API_KEY``. The bundle is verified before the
server starts (exit 1 with the failing check); SIGTERM drains (exit 0).
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console

err_console = Console(stderr=True)


def serve_command(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle directory written by `radgr export`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (the container passes 0.0.0.0)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="Batching wait after the first queued request."),
    max_batch_requests: int = typer.Option(16, "--max-batch-requests", help="Requests per engine batch."),
    max_batch_rows: int = typer.Option(1024, "--max-batch-rows", help="Beam rows per engine batch."),
    max_queue_requests: int = typer.Option(64, "--max-queue-requests", help="Queued requests before 503."),
    max_queue_rows: int = typer.Option(8192, "--max-queue-rows", help="Queued beam rows before 503."),
    request_timeout_s: float = typer.Option(10.0, "--request-timeout-s", help="Per-request deadline (504)."),
    drain_grace_s: float = typer.Option(10.0, "--drain-grace-s", help="SIGTERM grace period for in-flight work."),
    device: str = typer.Option("auto", "--device", help="Engine device: auto, cpu, cuda or cuda:N."),
    torch_threads: int = typer.Option(0, "--torch-threads", help="torch threads of the engine (0 = default)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    engine: str = typer.Option("auto", "--engine", envvar="RADGR_ENGINE",
                               help="auto (vLLM where installed, else PyTorch), torch or vllm."),
    vllm_scoring: str = typer.Option("processor", "--vllm-scoring", envvar="RADGR_VLLM_SCORING",
                                     help="vLLM child scoring: processor (trie logits processor) or token_ids."),
    vllm_driver: str = typer.Option("core", "--vllm-driver", envvar="RADGR_VLLM_DRIVER",
                                    help="core (vLLM's engine core directly) or llm (public LLM.generate)."),
    vllm_dtype: str = typer.Option("float32", "--vllm-dtype", help="vLLM dtype: float32, bfloat16 or float16."),
    vllm_max_model_len: int = typer.Option(1024, "--vllm-max-model-len", help="vLLM context length."),
    vllm_kv_cache_gib: float = typer.Option(1.0, "--vllm-kv-cache-gib", help="vLLM KV cache on CPU, GiB."),
) -> int:
    """Serve a bundle over HTTP (POST /retrieve)."""
    from pydantic import ValidationError

    from decoding.bundle import BundleError, verify_bundle
    from server.runner import run_server
    from server.settings import ServerSettings

    try:
        settings = ServerSettings(
            bundle=bundle, host=host, port=port, max_wait_ms=max_wait_ms, max_batch_requests=max_batch_requests,
            max_batch_rows=max_batch_rows, max_queue_requests=max_queue_requests, max_queue_rows=max_queue_rows,
            request_timeout_s=request_timeout_s, drain_grace_s=drain_grace_s, device=device,
            torch_threads=torch_threads, log_level=log_level, engine=engine, vllm_scoring=vllm_scoring,
            vllm_driver=vllm_driver, vllm_dtype=vllm_dtype, vllm_max_model_len=vllm_max_model_len,
            vllm_kv_cache_gib=vllm_kv_cache_gib)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            err_console.print(f"[red]invalid option {where}:[/red] {err['msg']}")
        return 2
    logging.basicConfig(level=logging.DEBUG if log_level in {"debug", "trace"} else log_level.upper(),
                        format="%(levelname)s:     %(name)s: %(message)s")
    try:
        verify_bundle(settings.bundle)
    except BundleError as exc:
        err_console.print(f"[red]refusing to serve {bundle}:[/red] {exc}")
        return 1
    return run_server(settings)
