"""Watch streams of the clients: :class:`Watch` (blocking) and :class:`AsyncWatch`.

A stream is the snapshot, then the events, of one ``watch`` request, until the
daemon sends ``End``; both kinds send ``cancel`` when left early.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Generator, Iterator
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .errors import WaDaemonError
from .protocol import End, Error, Event, RemoteProtocolError, WatchEvent, WatchParams, error_from_message

if TYPE_CHECKING:
    from .client import AsyncClient, _SyncConnection

__all__ = ["AsyncWatch", "Watch"]


class Watch(Iterator[WatchEvent]):
    """A blocking watch stream on its own connection. Iterate it; ``end`` holds the
    closing :class:`~wa_daemon.protocol.End` once the daemon ended the stream."""

    def __init__(self, conn: _SyncConnection, rid: int) -> None:
        self._conn = conn
        self._rid = rid
        self.end: End | None = None

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> WatchEvent:
        if self.end is not None:
            raise StopIteration
        msg = self._conn.receive()
        if isinstance(msg, Event) and msg.id == self._rid:
            return self._conn.proto.event(msg)
        if isinstance(msg, End) and msg.id == self._rid:
            self.end = msg
            self._conn.close()
            raise StopIteration
        if isinstance(msg, Error):
            self._conn.close()
            raise error_from_message(msg)
        raise RemoteProtocolError(f"unexpected {type(msg).__name__} on a watch stream")

    def close(self) -> None:
        """Cancel the stream (the daemon answers with an End we do not wait for).

        Never raises: a connection already closed (after End or an error) is not
        written to, and a failed send surfaces as a WaDaemonError, dropped here."""
        if self.end is None and not self._conn.closed:
            try:
                self._conn.send(self._conn.proto.cancel(self._rid))
            except WaDaemonError:
                pass
        self._conn.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncWatch:
    """An async watch stream: ``async with wa.watch("id") as events: async for ev in events``.

    Entering the block sends the request; ``end`` is set when the daemon ends the
    stream; leaving the block early cancels it. ``await wa.watch(...)`` (the earlier
    form, ``async with await wa.watch(...)``) still opens it, with a DeprecationWarning.
    """

    def __init__(self, client: AsyncClient, params: WatchParams) -> None:
        self._client = client
        self._params = params
        self._rid = 0  # the request's id once opened (ids start at 1)
        self._receive: MemoryObjectReceiveStream[Any] | None = None
        self.end: End | None = None

    async def _open(self) -> None:
        # Opened already when the old form awaited it before entering `async with`.
        if self._receive is None:
            self._rid, self._receive = await self._client._open_stream(self._params)

    async def _opened(self) -> AsyncWatch:
        await self._open()
        return self

    def __await__(self) -> Generator[Any, None, AsyncWatch]:
        warnings.warn(
            "`await wa.watch(...)` is deprecated: write `async with wa.watch(...) as events:`",
            DeprecationWarning,
            stacklevel=2,
        )
        return self._opened().__await__()

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        if self._receive is None:
            raise RuntimeError("the stream is not open: use `async with wa.watch(...) as events:`")
        if self.end is not None:
            raise StopAsyncIteration
        try:
            msg = await self._receive.receive()
        except anyio.EndOfStream:
            raise self._client._lost() from None
        if isinstance(msg, Event):
            return self._client._proto.event(msg)
        if isinstance(msg, End):
            self.end = msg
            self._forget()
            raise StopAsyncIteration
        if isinstance(msg, Error):
            self._forget()
            raise error_from_message(msg)
        raise RemoteProtocolError(f"unexpected {type(msg).__name__} on a watch stream")

    def _forget(self) -> bool:
        """Stop the client routing messages here. False: it had stopped already (the
        stream ended, failed, or the connection was lost)."""
        send = self._client._streams.pop(self._rid, None)
        if send is None:
            return False
        send.close()
        return True

    async def aclose(self) -> None:
        if self._receive is None:
            return
        if self._forget():
            with anyio.CancelScope(shield=True):
                try:
                    await self._client._send(self._client._proto.cancel(self._rid))
                except WaDaemonError:
                    pass
        self._receive.close()

    async def __aenter__(self) -> AsyncWatch:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
