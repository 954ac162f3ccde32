"""The server's engine seam: how a loaded bundle becomes the engine that serves it.

Contract:
- ``EngineFactory`` is ``(bundle, settings) -> RetrievalEngine``; ``create_app(settings, engine_factory)`` calls it
  once, in the lifespan, off the event loop. Tests and other engines plug in here.
- ``default_engine_factory`` builds what ``settings.engine`` names through
  :func:`decoding.engine_factory.build_engine`: ``auto`` is the vLLM engine where vLLM is installed, else the
  PyTorch engine (on ``settings.device`` with ``settings.torch_threads`` and the beam-row budget
  ``settings.max_batch_rows``). The vLLM engine loads the bundle's ``model/`` itself, so the lifespan loads the
  Hugging Face model only for the in-process torch engine (:func:`server_needs_hf_model`).
- With ``settings.engine_process`` the PyTorch engine runs in a child process that loads the bundle itself
  (:class:`decoding.engine_process.ProcessEngine`); a dead child restarts on the next batch (the probe).
"""

from __future__ import annotations

from collections.abc import Callable

from decoding.bundle import INDEX_DIR, Bundle
from decoding.engine import RetrievalEngine
from decoding.engine_factory import build_engine, needs_hf_model, resolve_engine_kind
from decoding.engine_process import ProcessEngine
from server.settings import ServerSettings

EngineFactory = Callable[[Bundle, ServerSettings], RetrievalEngine]


def uses_engine_process(settings: ServerSettings) -> bool:
    """Whether the engine runs in a child process: asked for, and the PyTorch engine (vLLM has its own)."""
    return settings.engine_process and resolve_engine_kind(settings.engine) == "torch"


def server_needs_hf_model(settings: ServerSettings) -> bool:
    """Whether the server's own process loads the Hugging Face model (the in-process PyTorch engine only)."""
    return needs_hf_model(settings.engine) and not uses_engine_process(settings)


def default_engine_factory(bundle: Bundle, settings: ServerSettings) -> RetrievalEngine:
    """The engine ``settings.engine`` names, on the bundle's model, index and SID vocabulary; in its own process
    (:class:`decoding.engine_process.ProcessEngine`, loading the bundle there) when ``settings.engine_process``."""
    if uses_engine_process(settings):
        return ProcessEngine(settings.engine_options(), bundle.path, nice=settings.engine_nice)
    return build_engine(settings.engine_options(), bundle.model_dir, bundle.index, bundle.path / INDEX_DIR,
                        bundle.vocab, model=bundle.model)
