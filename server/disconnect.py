"""Cancel a request's work when its client disconnects (vLLM's ``with_cancellation`` idea).

Contract of ``await cancel_on_disconnect(request, work)``: runs ``work`` while listening for the client's
``http.disconnect``; returns the work's result (or raises its exception) when the work finishes first. When the
client goes away first, the work is cancelled (a request still queued in the batcher is dropped before the model),
awaited, and :class:`ClientGone` is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its work finished; the work was cancelled."""


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; if the client disconnects first, cancel it and raise :class:`ClientGone`."""
    task = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, listener}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        listener.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise ClientGone()
    return task.result()
