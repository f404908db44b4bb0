"""The asyncio side of the Chromium driver: pyppeteer speaks CDP on an asyncio loop
that trio-asyncio runs inside trio."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import trio_asyncio

from ..ops.log import get_logger

log = get_logger("chromium")
T = TypeVar("T")

_aio_logging_quieted = False


def _quiet_library_logs() -> None:
    global _aio_logging_quieted
    if not _aio_logging_quieted:
        # pyppeteer and websockets log "Target closed" style noise on every browser exit.
        for name in ("pyppeteer", "websockets"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        _aio_logging_quieted = True


@contextlib.asynccontextmanager
async def open_browser_loop() -> AsyncIterator[None]:
    """The asyncio loop pyppeteer runs on, inside trio.

    trio-asyncio turns every asyncio error nobody retrieved into an exception in
    its own nursery, which would take the daemon down. pyppeteer leaves such
    futures behind whenever a browser dies mid-call ("Target closed"): expected,
    and already reported as BrowserGone by the exit and hang watchers, so they
    are logged, never raised.
    """

    def on_error(loop: Any, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        log.debug("asyncio_error", message=context.get("message"), error=repr(exc) if exc else None)

    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(on_error)
        yield


async def _aio(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Await an asyncio coroutine function (pyppeteer) from trio."""
    result: T = await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)
    return result

