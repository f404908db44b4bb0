"""The RPC server's I/O: the accept loop, one reader per connection, tasks, sends.

What to do with the bytes a client sends is decided by the sans-IO
``protocol.ServerProtocol``; what each method does is its handler in
``handlers/``; how a failure is answered is ``faults``; the socket itself
comes from ``listener``. This module moves bytes between them: it reads, runs
reads inline and everything else in tasks with cancel scopes, and sends
replies with a shielded, time-bounded write. It never touches a driver or a
browser, nor the manager's sessions.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from ..._version import __version__
from ...errors import LimitExceeded
from ...protocol import (
    METHODS,
    End,
    Error,
    FrameTooLarge,
    Health,
    OutEvent,
    OutReply,
    RemoteProtocolError,
    Request,
    WatchEvent,
    encode_frame,
)
from ..messages.service import Messaging
from ..ops.config import Config
from ..ops.log import get_logger
from ..sessions.manager import SessionManager
from . import faults
from .access import Caller, PeerCredentials, caller_of
from .handlers import HANDLERS, Operation, Read, Services, Stream
from .limits import Limits
from .listener import BoundSocket, peer_credentials
from .protocol import (
    Answer,
    CancelTask,
    Closed,
    HelloTimeout,
    Malformed,
    NeedData,
    Refused,
    ServeInline,
    ServerProtocol,
    StartTask,
    fatal_error,
)

if TYPE_CHECKING:
    from .router import Router

log = get_logger("server")

SERVER_NAME = f"wa-daemon/{__version__}"
_RECV_CHUNK = 65536
_REFUSE_LINGER = 1.0  # seconds a refused connection is given to read its error
_MAX_REFUSING = 64  # refused connections lingering at once; more are closed at once
# A read that succeeded logs its `rpc` line at debug, unless it took this long (s).
SLOW_READ = 0.1


@dataclass(frozen=True, slots=True)
class _Inline:
    """A read, with what serving it needs, looked up once per request."""

    decode: Callable[[Any], Any]  # the params decoder
    fn: Callable[[Services, Any, Any], Any]  # the handler
    histogram: Any  # its rpc_duration child


@dataclass(frozen=True, slots=True)
class _Task:
    """An operation or a stream, with what serving it needs."""

    decode: Callable[[Any], Any]
    handler: Operation[Any] | Stream[Any]
    histogram: Any


class _Connection:
    """One client connection: its reader, its tasks and its sends."""

    def __init__(self, server: Server, stream: trio.SocketStream, cid: int) -> None:
        self.server = server
        self.stream = stream
        self.cid = cid
        self.credentials: PeerCredentials | None = peer_credentials(stream.socket)
        creds = self.credentials
        # -1: the credentials could not be read (the log line's historical spelling).
        self.log = log.bind(
            conn=cid, peer_pid=creds.pid if creds else -1, peer_uid=creds.uid if creds else -1
        )
        self.proto: ServerProtocol[_Inline] = ServerProtocol(
            server.limits, server.inline, trio.current_time(), SERVER_NAME
        )
        self.proto.draining = server.draining
        self.send_lock = trio.Lock()
        self.scopes: dict[int, trio.CancelScope] = {}  # of the requests in flight
        self.broken = False
        self.scope = trio.CancelScope()
        self._access: tuple[Config, Caller] | None = None

    @property
    def caller(self) -> Caller:
        """Who the manager serves this peer as (access.py). Decided at the first
        request and again after a reload; the peer's credentials cannot change
        while it stays connected."""
        config = self.server.config
        access = self._access
        if access is None or access[0] is not config:
            access = self._access = (config, caller_of(config, self.credentials))
        return access[1]

    # ------------------------------------------------------------------ sending

    def _frame(self, message: msgspec.Struct) -> bytearray:
        """Raises faults.ReplyTooLarge: inside a request that is its answer."""
        return faults.encode_answer(message, self.proto.max_frame)

    async def send(self, message: msgspec.Struct) -> None:
        await self.send_frame(self._frame(message))

    async def send_frame(self, data: bytearray) -> None:
        rest = self._send_now(data)
        if rest is not None:
            await self._send_rest(rest)

    def _send_now(self, data: bytearray) -> bytearray | memoryview | None:
        """Fast path: when nobody is in the middle of a frame, write straight to the
        socket. A reply the kernel takes whole (nearly all of them) then costs one
        write(2), with no lock, cancel scope, coroutine or trip through the
        scheduler; nothing here can be cancelled half-way: it does not wait.
        Returns None when nothing is left to send, else what :meth:`_send_rest`
        must send: the frame's tail, with the send lock taken, or the whole frame
        when another one is half-sent."""
        lock = self.send_lock
        if lock.locked():
            return data
        if self.broken:
            return None
        sent = self._write_now(data)
        if sent == len(data) or self.broken:
            return None
        # The socket buffer is full: the rest waits for the client under the lock.
        # Nothing ran since the check above, so the lock is still free.
        lock.acquire_nowait()
        return memoryview(data)[sent:]

    async def _send_rest(self, rest: bytearray | memoryview) -> None:
        lock = self.send_lock
        if isinstance(rest, bytearray):  # a whole frame: wait for the one being sent
            await lock.acquire()
        try:
            await self._send_locked(rest)
        finally:
            lock.release()

    def _write_now(self, data: bytearray) -> int:
        """Write what the socket takes without waiting; how many bytes that was."""
        # fileno() is -1 once the stream is closed: never write to a reused fd number.
        fd = self.stream.socket.fileno()
        try:
            return os.write(fd, data) if fd >= 0 else 0
        except BlockingIOError:
            return 0
        except OSError:
            self.broken = True  # the client went away; the read side will notice and end
            return 0

    async def _send_locked(self, data: bytearray | memoryview) -> None:
        """The slow path of :meth:`send_frame`, with the send lock held."""
        if self.broken:
            return
        timeout = self.server.limits.send_timeout
        # Shielded: a cancel in the middle of send_all would leave half a frame
        # on the wire and desynchronise the stream for good. The timeout bounds
        # the wait on a client that stopped reading.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(timeout) as cs:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.broken = True  # the client went away; the read side will notice and end
        if cs.cancelled_caught:
            self.broken = True
            self.server.metrics.connections_closed.labels("not_reading").inc()
            self.log.warning("client_not_reading", send_timeout=timeout)
            self.scope.cancel()

    # ------------------------------------------------------------------ reading

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            try:
                await self._read_loop(nursery)
            except RemoteProtocolError as exc:
                metrics = self.server.metrics
                metrics.protocol_errors.inc()
                if isinstance(exc, FrameTooLarge):
                    metrics.limit_refusals.labels("frame_size").inc()
                elif isinstance(exc, HelloTimeout):
                    metrics.connections_closed.labels("hello_timeout").inc()
                self.log.warning("protocol_error", error=exc.message, fatal=True)
                await self.send(fatal_error(exc))
            # The client is gone or broke the protocol: nothing it asked for is owed any more.
            nursery.cancel_scope.cancel()

    async def _receive(self) -> bytes:
        """The next bytes from the client; b"" when it is gone.

        Waits for readability first and then reads once, instead of trying a read
        that fails with EAGAIN before waiting, which is what a client with one
        request in flight makes nearly every read do: one system call less per
        request, about a tenth of a read's cost at full load (docs/performance.md)."""
        sock = self.stream.socket
        while True:
            try:
                await trio.lowlevel.wait_readable(sock)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
            fd = sock.fileno()
            if fd < 0:
                return b""
            try:
                return os.read(fd, _RECV_CHUNK)
            except BlockingIOError:
                continue  # readable was spurious: wait again
            except OSError:
                return b""  # reset by the peer: the same as its close

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        proto = self.proto
        while True:
            deadline = proto.hello_deadline
            if deadline is None:
                data = await self._receive()
            else:
                with trio.move_on_at(deadline) as cs:
                    data = await self._receive()
                if cs.cancelled_caught:
                    proto.check_deadline(trio.current_time())  # raises HelloTimeout
                    continue
            proto.receive_data(data, trio.current_time())
            while True:
                event = proto.next_event()
                if isinstance(event, ServeInline):
                    # Synchronous unless the reply must wait for the client: a read
                    # then costs no coroutine at all.
                    pending = self._serve_inline(event.request, event.read)
                    if pending is not None:
                        await pending
                elif isinstance(event, NeedData):
                    break
                elif isinstance(event, StartTask):
                    scope = self.scopes[event.request.id] = trio.CancelScope()
                    nursery.start_soon(self._serve_task, event.request, scope)
                elif isinstance(event, Answer):
                    await self.send(event.message)
                    if event.close:
                        return
                elif isinstance(event, CancelTask):
                    self.scopes[event.request_id].cancel()
                elif isinstance(event, Malformed):
                    self.server.metrics.protocol_errors.inc()
                    self.log.warning("protocol_error", error=event.error.message, fatal=False)
                    await self.send(event.error)
                elif isinstance(event, Refused):
                    self._refused(event)
                    await self.send(faults.error_frame(event.error, event.request_id))
                else:
                    assert isinstance(event, Closed)
                    return

    def _refused(self, refusal: Refused) -> None:
        self.server.metrics.limit_refusals.labels(refusal.limit).inc()
        self.log.warning("limit_refused", limit=refusal.limit, max=refusal.maximum, method=refusal.method)

    def close_idle(self, idle: float) -> None:
        self.server.metrics.connections_closed.labels("idle").inc()
        self.log.info("connection_idle", idle=round(idle, 3))
        self.scope.cancel()

    # ------------------------------------------------------------------ serving

    def _serve_inline(self, req: Request, read: _Inline) -> Awaitable[None] | None:
        """Serve one read (a method that never waits) in the read loop; what to await
        when the socket did not take the whole reply, else None."""
        started = time.perf_counter()
        session: str | None = None
        outcome = "ok"
        try:
            try:
                params = read.decode(req.params)
            except faults.PARAMS_ERRORS as exc:
                raise faults.invalid_params(req.method, exc) from None
            session = getattr(params, "session", None)
            data = self._frame(OutReply(req.id, read.fn(self.server.services, params, self)))
        except Exception as exc:
            error, outcome = faults.fault(exc, req.id, req.method, self.log)
            data = self._frame(error)
        rest = self._send_now(data)
        if rest is None:
            self._done(req, session, outcome, started, read.histogram, read=True)
            return None
        return self._finish_inline(rest, req, session, outcome, started, read.histogram)

    async def _finish_inline(
        self, rest: bytearray | memoryview, req: Request, session: str | None, outcome: str, started: float, histogram: Any
    ) -> None:
        try:
            await self._send_rest(rest)
        finally:
            self._done(req, session, outcome, started, histogram, read=True)

    def _done(
        self, req: Request, session: str | None, outcome: str, started: float, histogram: Any, read: bool = False
    ) -> None:
        """Every RPC ends here: one metrics observation and one ``rpc`` log line, at
        info for operations, streams and every failure, at debug for reads that
        succeeded (unless slow). That line was most of a read's cost at info,
        about 0.45x the bare echo's throughput against 0.6x without it
        (docs/performance.md); a read changes nothing, and its count, latency
        and failures stay in wa_rpc_duration_seconds and the info lines."""
        elapsed = time.perf_counter() - started
        if histogram is not None:
            histogram.observe(elapsed)
        if read and outcome == "ok" and elapsed < SLOW_READ:
            if not self.server.log_reads:
                return  # not even a dropped debug call: that alone costs about 2 us
            line = self.log.debug
        else:
            line = self.log.info
        line("rpc", id=req.id, method=req.method, session=session, result=outcome, ms=round(elapsed * 1e3, 3))

    async def _serve_task(self, req: Request, scope: trio.CancelScope) -> None:
        """Serve one operation or stream, in a task of its own that ``Cancel`` can cancel."""
        started = time.perf_counter()
        session: str | None = None
        outcome = "ok"
        task = self.server.tasks.get(req.method)
        try:
            if task is None:
                raise faults.unknown_method(req.method)
            try:
                params = task.decode(req.params)
            except faults.PARAMS_ERRORS as exc:
                raise faults.invalid_params(req.method, exc) from None
            session = getattr(params, "session", None)
            handler = task.handler
            if isinstance(handler, Stream):
                await self._stream(req, handler, params, scope)
                outcome = "stream_end"
            else:
                with scope:
                    result = await self._operate(req, handler, params, session)
                    await self.send(OutReply(req.id, result))
                if scope.cancelled_caught:
                    outcome = "cancelled"
                    await self.send(faults.cancelled(req.id))
        except Exception as exc:
            error, outcome = faults.fault(exc, req.id, req.method, self.log)
            await self.send(error)
        finally:
            self.scopes.pop(req.id, None)
            self.proto.task_done(req.id, trio.current_time())
            self._done(req, session, outcome, started, task.histogram if task is not None else None)

    def _operate(self, req: Request, handler: Operation[Any], params: Any, session: str | None) -> Awaitable[Any]:
        """The operation here, or (several hosts) on the session's owner (router.py)."""
        router = self.server.router
        if router is None or session is None:
            return handler.fn(self.server.services, params, self)
        return router.run(req.method, session, bytes(req.params), self, partial(handler.fn, self.server.services, params, self))

    async def _stream(self, req: Request, handler: Stream[Any], params: Any, scope: trio.CancelScope) -> None:
        refusal = self.proto.open_watch(req.id, req.method)
        if refusal is not None:
            self._refused(refusal)
            raise refusal.error
        rid = req.id

        def emit(event: WatchEvent) -> Awaitable[None]:
            return self.send(OutEvent(rid, event))

        try:
            reason, status = await handler.fn(self.server.services, params, self, emit, scope)
        finally:
            self.proto.close_watch()
        await self.send(End(rid, reason, status))


class Server:
    def __init__(
        self,
        manager: SessionManager,
        *,
        health: Callable[[], Awaitable[Health]] | None = None,
        messages: Messaging | None = None,
    ) -> None:
        self.services = Services(manager, health, messages)
        self.metrics = manager.metrics
        self.config = manager.config
        self.limits = Limits.from_config(self.config)
        self.log_reads = self.config.level_of("server") == "debug"  # see _Connection._done
        self._next_cid = 0
        self._conns: set[_Connection] = set()
        self._open = 0  # connections accepted and not yet closed (counted before their handler starts)
        self._accept_failing = 0  # consecutive failed accepts
        self._refusing = 0  # connections refused by max_connections, still being closed
        self._draining = False
        self.router: Router | None = None  # several hosts: mutations reach the session's owner
        histograms = {m: self.metrics.rpc_duration.labels(m) for m in METHODS}
        # Reads answer from memory without waiting: served in the read loop, without
        # a task of their own, which halves their cost. The rest get a task each.
        self.inline: dict[str, _Inline] = {}
        self.tasks: dict[str, _Task] = {}
        for handler in HANDLERS:
            name = handler.method
            decode = msgspec.msgpack.Decoder(METHODS[name].params).decode
            if isinstance(handler, Read):
                self.inline[name] = _Inline(decode, handler.fn, histograms[name])
            else:
                self.tasks[name] = _Task(decode, handler, histograms[name])

    def reconfigure(self, config: Config) -> None:
        """Use ``config`` from now on (a reload); limits.py says what applies when."""
        self.config = config
        self.limits = Limits.from_config(config)
        self.log_reads = config.level_of("server") == "debug"
        for conn in self._conns:
            conn.proto.limits = self.limits

    @property
    def draining(self) -> bool:
        """Shutting down: new requests get `unavailable`."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        for conn in self._conns:
            conn.proto.draining = value

    async def accept_loop(self, bound: BoundSocket, handlers: trio.Nursery) -> None:
        """Accept until cancelled; each connection's handler runs in ``handlers``,
        so the daemon can stop accepting while in-flight calls still finish."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._close_idle_loop)
            await self._accept(bound, handlers)

    async def _close_idle_loop(self) -> None:
        """Close connections idle for ``idle_connection_timeout``: checked every tenth of
        it (at most every minute), so the read loop itself pays nothing for the limit."""
        while True:
            timeout = self.limits.idle_connection_timeout
            if timeout is not None:
                now = trio.current_time()
                for conn in list(self._conns):
                    idle = conn.proto.idle_expired(now)
                    if idle is not None and not conn.scope.cancel_called:
                        conn.close_idle(idle)
            await trio.sleep(min(timeout / 10, 60.0) if timeout is not None else 60.0)

    async def _accept(self, bound: BoundSocket, handlers: trio.Nursery) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(bound.sock))
        metrics = self.metrics
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # EMFILE, ENFILE and friends: back off and keep the accept loop alive.
                # The pending client waits in the backlog until a descriptor is free.
                name = errno.errorcode.get(exc.errno or 0, "unknown")
                metrics.accept_failures.labels(name).inc()
                if self._accept_failing == 0:
                    log.error("accept_failed", error=str(exc), errno=exc.errno, open_connections=self._open)
                self._accept_failing += 1
                await trio.sleep(0.1)
                continue
            if self._accept_failing:
                log.warning("accept_recovered", failed_accepts=self._accept_failing)
                self._accept_failing = 0
            limit = self.limits.max_connections
            if self._open >= limit:
                self._refuse(stream, limit, handlers)
                continue
            self._open += 1
            self._next_cid += 1
            handlers.start_soon(self._handle, stream, self._next_cid)

    def _refuse(self, stream: trio.SocketStream, limit: int, handlers: trio.Nursery) -> None:
        """One connection too many: one `error` frame, then closed."""
        metrics = self.metrics
        metrics.limit_refusals.labels("connections").inc()
        metrics.connections_closed.labels("limit").inc()
        creds = peer_credentials(stream.socket)
        log.warning(
            "connection_refused",
            limit="connections",
            max=limit,
            peer_pid=creds.pid if creds else -1,
            peer_uid=creds.uid if creds else -1,
        )
        frame = encode_frame(
            Error(None, LimitExceeded.code, f"the daemon serves its maximum of {limit} connections", {"limit": limit})
        )
        if self._refusing >= _MAX_REFUSING:
            # A flood: no lingering, the descriptor is freed now (the frame may be lost).
            try:
                os.write(stream.socket.fileno(), frame)  # non-blocking; a fresh socket takes it whole
            except OSError:
                pass
            stream.socket.close()
            return
        self._refusing += 1
        handlers.start_soon(self._refuse_slowly, stream, frame)

    async def _refuse_slowly(self, stream: trio.SocketStream, frame: bytearray) -> None:
        try:
            with trio.move_on_after(_REFUSE_LINGER):
                await stream.send_all(frame)
                # Read the client's hello before closing: closing a Unix socket with
                # unread input resets the peer, which could then lose the frame.
                while await stream.receive_some(_RECV_CHUNK):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._refusing -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    @property
    def inflight(self) -> int:
        return sum(c.proto.inflight for c in self._conns)

    async def _handle(self, stream: trio.SocketStream, cid: int) -> None:
        metrics = self.metrics
        metrics.connections.inc()
        conn: _Connection | None = None
        try:
            conn = _Connection(self, stream, cid)
            conn.log.debug("connection_open")
            self._conns.add(conn)
            with conn.scope:
                await conn.run()
        except Exception:
            # One connection's bug must never reach the accept loop or other clients.
            log.exception("connection_handler_crashed", conn=cid)
        finally:
            if conn is not None:
                self._conns.discard(conn)
            self._open -= 1
            metrics.connections.dec()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    def close_connections(self) -> None:
        for conn in list(self._conns):
            conn.scope.cancel()
