"""A loopback TCP proxy the tests put between a daemon and its Redis, and break on purpose.

The daemon's ``redis_url`` names the proxy's port; the proxy forwards to the real
``redis-server`` (its Unix socket or a TCP address). The test switches the mode
while the daemon runs:

- ``pass``: bytes go through both ways;
- ``cut``: every connection is closed at once and new ones are closed as soon as
  they are accepted (Redis is gone);
- ``delay``: every chunk is held ``delay`` seconds before it goes on (a slow path);
- ``half-open``: connections are accepted and kept, nothing is forwarded and
  nothing answered (a black hole: a partition, a dead NAT entry);
- ``drop-replies``: requests reach Redis (it acts on them) but no reply comes back.

It runs on trio, either in the test's own loop (:meth:`FaultProxy.serve`) or in a
thread of its own for tests that drive daemon processes (:func:`fault_proxy`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import trio

Mode = Literal["pass", "cut", "delay", "half-open", "drop-replies"]
MODES: tuple[Mode, ...] = ("pass", "cut", "delay", "half-open", "drop-replies")


class FaultProxy:
    def __init__(self, upstream: Path | tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode: Mode = "pass"
        self.delay = 0.0
        self.port = 0
        self.accepted = 0
        self._scopes: set[trio.CancelScope] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def set_mode(self, mode: Mode, delay: float = 0.0) -> None:
        """Switch at once (call from the proxy's trio thread: see :class:`ThreadedProxy`)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode, self.delay = mode, delay
        if mode == "cut":
            for scope in list(self._scopes):
                scope.cancel()

    async def _open_upstream(self) -> trio.abc.Stream:
        if isinstance(self.upstream, Path):
            return await trio.open_unix_socket(str(self.upstream))
        return await trio.open_tcp_stream(*self.upstream)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.abc.Stream) -> None:
        self.accepted += 1
        async with client:
            if self.mode == "cut":
                return
            try:
                server = await self._open_upstream()
            except OSError:
                return
            async with server:
                with trio.CancelScope() as scope:
                    self._scopes.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._pump, client, server, False, scope)
                            nursery.start_soon(self._pump, server, client, True, scope)
                    finally:
                        self._scopes.discard(scope)

    async def _pump(self, src: trio.abc.Stream, dst: trio.abc.Stream, reply: bool, scope: trio.CancelScope) -> None:
        try:
            while True:
                data = await src.receive_some(65536)
                if not data:
                    break
                if self.mode == "delay" and self.delay > 0:
                    await trio.sleep(self.delay)
                if self.mode == "half-open" or (reply and self.mode == "drop-replies"):
                    continue  # swallowed: the other side waits for ever
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()  # one side closed: close both, as a TCP proxy does


class ThreadedProxy:
    """A :class:`FaultProxy` on its own trio loop in a thread, driven from a plain test."""

    def __init__(self, upstream: Path | tuple[str, int]) -> None:
        self.proxy = FaultProxy(upstream)
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._cancel: trio.CancelScope | None = None

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._cancel:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.proxy.serve)
                self._ready.set()

    @property
    def url(self) -> str:
        return self.proxy.url

    def set_mode(self, mode: Mode, delay: float = 0.0) -> None:
        trio.from_thread.run_sync(self.proxy.set_mode, mode, delay, trio_token=self._token)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the fault proxy did not start")

    def stop(self) -> None:
        if self._cancel is not None and self._token is not None:
            try:
                trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(10)


@contextmanager
def fault_proxy(upstream: Path | tuple[str, int]) -> Iterator[ThreadedProxy]:
    proxy = ThreadedProxy(upstream)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
