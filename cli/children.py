"""Child processes that stop with their parent: on SIGTERM, on SIGINT, and when the parent dies abruptly.

Contract of :class:`Children` (a context manager; the commands that start processes, e.g. ``radgr demo``, run
inside one):
- ``popen(argv, **kwargs)`` starts a child (``subprocess.Popen``) and registers it. On Linux the child asks the
  kernel for ``death_signal`` (SIGTERM by default: a server drains, a training step stops) when its parent dies
  (``prctl(PR_SET_PDEATHSIG)`` through ctypes, before ``exec``; if the parent is already gone by then the child
  signals itself). That covers a parent killed with SIGKILL or by the OOM killer. Elsewhere there is no such
  hook and only the signal handling below applies (Linux-only, documented in docs/serving.md).
- ``stop(proc)``: SIGTERM, wait up to ``grace_s``, then SIGKILL, and reap it; ``stop_all()`` stops every live child,
  newest first. ``forget(proc)`` unregisters a child that has exited.
- While the context is entered (from the main thread), SIGTERM and SIGINT raise :class:`Stopped` (a
  ``BaseException`` carrying the signal number) in the main thread, once; a later signal SIGKILLs the live
  children at once instead of raising (impatient operator, or a supervisor escalating). On exit every live child is
  stopped, even when the exit is an exception, and the previous handlers are restored; signals arriving during that
  clean-up escalate instead of interrupting it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType, TracebackType
from typing import Any

PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Stopped(BaseException):
    """A stop signal (SIGTERM or SIGINT) reached the process; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def parent_death_hook(death_signal: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``death_signal`` when this process dies (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:  # runs in the child between fork and exec
        prctl(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(death_signal))
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), death_signal)

    return hook


class Children:
    """The child processes of one command; see the module docstring."""

    def __init__(self, grace_s: float = 10.0, death_signal: int = signal.SIGTERM) -> None:
        if not 0.0 <= grace_s <= 600.0:
            raise ValueError(f"grace_s must be in [0, 600], given {grace_s}")
        self.grace_s = grace_s
        self._hook = parent_death_hook(death_signal)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._previous: dict[int, Any] = {}
        self._signalled: int | None = None  # the first stop signal (or -1 once clean-up began)

    @property
    def live(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self._procs if p.poll() is None]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(list(argv), preexec_fn=self._hook, **kwargs)
        self._procs.append(proc)
        return proc

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    def stop(self, proc: subprocess.Popen[bytes]) -> int:
        """SIGTERM, up to ``grace_s`` to exit, then SIGKILL; returns the exit status."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.forget(proc)
        return int(proc.returncode)

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)

    def _kill_all(self) -> None:
        for proc in self.live:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        if self._signalled is None:
            self._signalled = signum
            raise Stopped(signum)
        self._kill_all()

    def __enter__(self) -> Children:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._signalled is None:
            self._signalled = -1  # from here on a signal escalates, it never interrupts the clean-up
        try:
            self.stop_all()
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()
