"""The server's engine seam: how a loaded bundle becomes the engine that serves it.

Contract:
- ``EngineFactory`` is ``(bundle, settings) -> RetrievalEngine``; ``create_app(settings, engine_factory)`` calls it
  once, in the lifespan, off the event loop. Tests and other engines plug in here.
- ``default_engine_factory`` builds what ``settings.engine`` names through
  :func:`decoding.engine_factory.build_engine`: ``auto`` is the vLLM engine where vLLM is installed, else the
  PyTorch engine (on ``settings.device`` with ``settings.torch_threads`` and the beam-row budget
  ``settings.max_batch_rows``). The vLLM engine loads the bundle's ``model/`` itself, so the lifespan loads the
  Hugging Face model only for the torch engine (:func:`decoding.engine_factory.needs_hf_model`).
"""

from __future__ import annotations

from collections.abc import Callable

from decoding.bundle import INDEX_DIR, Bundle
from decoding.engine import RetrievalEngine
from decoding.engine_factory import build_engine
from server.settings import ServerSettings

EngineFactory = Callable[[Bundle, ServerSettings], RetrievalEngine]


def default_engine_factory(bundle: Bundle, settings: ServerSettings) -> RetrievalEngine:
    """The engine ``settings.engine`` names, on the bundle's model, index and SID vocabulary."""
    return build_engine(settings.engine_options(), bundle.model_dir, bundle.index, bundle.path / INDEX_DIR,
                        bundle.vocab, model=bundle.model)
