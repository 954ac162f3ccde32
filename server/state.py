"""What the routes of one app share, and the dependencies through which they reach it.

Contract:
- :class:`ServingState` is created (empty) by ``create_app`` and kept at ``app.state.serving``; the lifespan fills
  ``bundle``, ``engine`` and ``batcher`` and sets ``ready`` after the warm-up; the runner's drain sets
  ``draining`` (and clears ``ready``) through :meth:`ServingState.begin_drain`; the retrieve route keeps
  ``in_flight`` (requests admitted and not yet answered), which the drain waits on.
- ``sid_text(row)`` is the bundle index's SID string of a row, memoised (at most ``SID_TEXT_CACHE_MAX`` rows, about
  100 bytes each; past that, rows are formatted as they come): a response names up to 128 SIDs, mostly the same
  popular ones from request to request.
- ``get_state`` and ``get_settings`` are the FastAPI dependencies through which routes reach the state and the
  settings. The settings are the app's own instance, read once when the app was built (``create_app(None)`` reads
  the environment through the cached ``server.settings.load_settings``), never a module global.
  ``get_settings`` depends on ``get_state``, so overriding ``get_state`` (``app.dependency_overrides``) puts a fake
  behind both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Depends, Request

from decoding.bundle import Bundle
from decoding.engine import RetrievalEngine
from server.batcher import MicroBatcher
from server.metrics import ServerMetrics
from server.settings import ServerSettings

SID_TEXT_CACHE_MAX = 262_144


@dataclass
class ServingState:
    """Everything the routes need; filled by the lifespan."""

    settings: ServerSettings
    metrics: ServerMetrics
    bundle: Bundle | None = None
    engine: RetrievalEngine | None = None
    batcher: MicroBatcher | None = None
    ready: bool = False
    draining: bool = False
    in_flight: int = 0
    warmup_seconds: float = 0.0
    _sid_texts: dict[int, str] = field(default_factory=dict, repr=False)

    def sid_text(self, row: int) -> str:
        """The SID string of index row ``row`` (memoised; the index checks the row's bounds)."""
        text = self._sid_texts.get(row)
        if text is None:
            assert self.bundle is not None
            text = self.bundle.index.sid_str(row)
            if len(self._sid_texts) < SID_TEXT_CACHE_MAX:
                self._sid_texts[row] = text
        return text

    def begin_drain(self) -> None:
        self.draining = True
        self.ready = False

    @property
    def dead_reason(self) -> str | None:
        """None while the engine is alive (or not built yet); otherwise why it is dead."""
        return None if self.batcher is None else self.batcher.dead_reason

    @property
    def alive(self) -> bool:
        return self.dead_reason is None


async def get_state(request: Request) -> ServingState:
    """The dependency every route uses to reach the bundle, engine and batcher (``async``: FastAPI runs a plain
    ``def`` dependency in its thread pool, a thread hop per request for a dictionary lookup)."""
    state: ServingState = request.app.state.serving
    return state


async def get_settings(state: ServingState = Depends(get_state)) -> ServerSettings:
    """The dependency through which routes read the app's settings (read once when the app was built)."""
    return state.settings
