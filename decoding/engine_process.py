"""A retrieval engine in its own process, behind the same :class:`decoding.engine.RetrievalEngine` interface.

Why: the PyTorch engine's Python (beam bookkeeping, the op dispatch of a small model) holds the GIL; inside the
server's process it competes with the event loop, so under overload even the cheap answers (503s, /live) wait for it.
In a child process the engine has its own interpreter, and the server's process only parses, batches and answers.
(The vLLM engine already runs its model in vLLM's own engine-core process.)

Contract:
- ``ProcessEngine(options, bundle_dir, nice=N)`` starts a child (``multiprocessing`` *spawn*) at ``N`` steps lower
  CPU priority (``os.nice``; a server gives its engine a lower priority so that, where the cores are short, its
  own answers — 503s, health — preempt the engine instead of queueing behind it), which loads the bundle at
  ``bundle_dir`` (checked as at server start) and builds the engine ``options`` name with
  :func:`decoding.engine_factory.build_engine`; the constructor returns when the child reports ready, and raises
  ``RuntimeError`` with the child's error (or its exit code) if it fails or is not ready within
  ``start_timeout_s``. ``name`` is the child engine's name.
- ``retrieve_batch(requests)`` sends the requests over a pipe and returns the child's results unchanged (pickled),
  one call at a time (a lock serialises callers). An exception in the child's engine comes back as ``RuntimeError``
  naming its type and message; the child keeps serving.
- A child that died (killed, out of memory) makes the call raise ``RuntimeError`` naming its exit code, and the next
  call starts a fresh child first, so a server's probe request brings the engine back.
- ``close()`` asks the child to exit and kills it after ``stop_timeout_s``; the child also exits when the parent's end
  of the pipe closes (the parent died).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from decoding.engine import RetrievalRequest, RetrievalResult
from decoding.engine_factory import EngineOptions

logger = logging.getLogger(__name__)


def _child_main(conn: Connection, options: EngineOptions, bundle_dir: str, nice: int) -> None:
    """The child: lower its priority by ``nice``, load, report ready (or the error), then serve batches until told
    to stop or the pipe closes."""
    try:
        if nice:
            os.nice(nice)
        from decoding.bundle import INDEX_DIR, load_bundle
        from decoding.engine_factory import build_engine, needs_hf_model

        bundle = load_bundle(bundle_dir, with_model=needs_hf_model(options.kind))
        engine = build_engine(options, bundle.model_dir, bundle.index, bundle.path / INDEX_DIR, bundle.vocab,
                              model=bundle.model)
    except Exception as exc:  # reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", engine.name))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent went away
            return
        if message is None:
            return
        try:
            reply: tuple[str, Any] = ("ok", engine.retrieve_batch(message))
        except Exception as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (OSError, BrokenPipeError):  # the parent went away mid-batch
            return


class ProcessEngine:
    """See the module docstring."""

    def __init__(self, options: EngineOptions, bundle_dir: str | Path, *, nice: int = 0,
                 start_timeout_s: float = 600.0, stop_timeout_s: float = 10.0) -> None:
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be in [0, 19], given {nice}")
        if start_timeout_s <= 0:
            raise ValueError(f"start_timeout_s must be > 0, given {start_timeout_s}")
        if stop_timeout_s <= 0:
            raise ValueError(f"stop_timeout_s must be > 0, given {stop_timeout_s}")
        self.options = options
        self.bundle_dir = str(bundle_dir)
        self.nice = nice
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None
        self.name = self._start()
        self.starts = 1  # children started so far (1 + restarts)

    def _start(self) -> str:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        process = ctx.Process(target=_child_main, args=(child, self.options, self.bundle_dir, self.nice),
                              name="radgr-engine", daemon=True)
        process.start()
        child.close()  # only the child holds its end: its exit closes the pipe
        try:
            if not parent.poll(self.start_timeout_s):
                raise RuntimeError(f"the engine process was not ready within start_timeout_s={self.start_timeout_s}")
            status, detail = parent.recv()
        except (EOFError, OSError):
            process.join(self.stop_timeout_s)
            raise RuntimeError(f"the engine process exited while starting (exit code {process.exitcode})") from None
        except BaseException:
            process.kill()
            process.join(self.stop_timeout_s)
            raise
        if status != "ready":
            process.join(self.stop_timeout_s)
            raise RuntimeError(f"the engine process failed to start: {detail}")
        self._process, self._conn = process, parent
        logger.info("engine process %d ready (%s)", process.pid, detail)
        return str(detail)

    @property
    def pid(self) -> int | None:
        """The child's process id (``None`` while none runs)."""
        return self._process.pid if self._process is not None else None

    def retrieve_batch(self, requests: Sequence[RetrievalRequest]) -> list[RetrievalResult]:
        with self._lock:
            if self._conn is None:  # the last child died: start a fresh one
                self._start()
                self.starts += 1
            conn = self._conn
            assert conn is not None
            try:
                conn.send(list(requests))
                status, payload = conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                code = self._reap()
                raise RuntimeError(f"the engine process died (exit code {code}); it restarts on the next "
                                   "batch") from None
        if status != "ok":
            raise RuntimeError(f"the engine failed in its process: {payload}")
        results: list[RetrievalResult] = payload
        return results

    def _reap(self) -> int | None:
        process, self._process = self._process, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if process is None:
            return None
        process.join(self.stop_timeout_s)
        if process.is_alive():
            process.kill()
            process.join(self.stop_timeout_s)
        code: int | None = process.exitcode
        return code

    def close(self) -> None:
        """Stop the child (politely, then by force)."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(OSError, BrokenPipeError):
                    self._conn.send(None)
            self._reap()
