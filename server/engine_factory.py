"""The server's engine seam: how a loaded bundle becomes the engine that serves it.

Contract:
- ``EngineFactory`` is ``(bundle, settings) -> RetrievalEngine``; ``create_app(settings, engine_factory)`` calls it
  once, in the lifespan, off the event loop. Tests and other engines plug in here.
- ``torch_engine_factory`` is the default: :class:`decoding.torch_engine.TorchBeamEngine` on the bundle's model,
  moved to ``settings.device`` (``auto`` = cuda when available), with ``settings.torch_threads`` intra-op threads
  (0 = leave torch's default) and the beam-row budget ``settings.max_batch_rows``. A bundle loaded without its
  model is refused with ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable

from decoding.bundle import Bundle
from decoding.engine import RetrievalEngine
from server.settings import ServerSettings

EngineFactory = Callable[[Bundle, ServerSettings], RetrievalEngine]


def torch_engine_factory(bundle: Bundle, settings: ServerSettings) -> RetrievalEngine:
    """The default engine: trie-constrained beam search in PyTorch on the bundle's model."""
    import torch

    from decoding.torch_engine import TorchBeamEngine

    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    if bundle.model is None:
        raise ValueError("the bundle was loaded without its model; the torch engine needs it")
    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    bundle.model.to(device)
    return TorchBeamEngine(bundle.model, bundle.vocab, bundle.index, max_batch_rows=settings.max_batch_rows)
