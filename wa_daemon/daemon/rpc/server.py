"""The RPC server: Unix socket listener, one handler per connection, dispatch, watch streams.

The server decodes frames with ``protocol``, calls the manager and encodes the
answer. It never touches a driver or a browser.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from ..._version import __version__
from ...errors import (
    Busy,
    InternalError,
    InvalidArgument,
    LimitExceeded,
    ProtocolError,
    Unavailable,
    WaDaemonError,
)
from ...protocol import (
    METHODS,
    PROTOCOL_VERSION,
    Cancel,
    ClientMessage,
    Deleted,
    End,
    Error,
    FrameDecoder,
    FrameTooLarge,
    Health,
    Hello,
    History,
    LocalProtocolError,
    Metrics,
    MetricsParams,
    NoParams,
    OutEvent,
    OutReply,
    Pong,
    RemoteProtocolError,
    Request,
    SessionParams,
    SessionStatus,
    Snapshot,
    VersionInfo,
    WatchParams,
    Welcome,
    decode_as,
    encode_frame,
)
from ..ops.config import Config
from ..sessions.hub import StreamEnd
from ..sessions.manager import SessionManager
from ..sessions.registry import SessionOptions
from ..sessions.session import utcnow
from .access import caller_of

log = structlog.get_logger("wa_daemon.server")

_RECV_CHUNK = 65536
_PEERCRED = struct.Struct("3i")
_REFUSE_LINGER = 1.0  # seconds a refused connection is given to read its error
_MAX_REFUSING = 64  # refused connections lingering at once; more are closed at once


class AlreadyRunning(Exception):
    """Another daemon holds the socket's lock file."""


# ---------------------------------------------------------------------------- binding


@dataclass
class BoundSocket:
    sock: socket.socket  # listening; wrapped for trio by the accept loop
    path: Path
    lock_fd: int | None  # None: systemd passed the socket and owns the path

    closed: bool = False

    @property
    def activated(self) -> bool:
        return self.lock_fd is None

    def close(self) -> None:
        """Close and unlink the socket, then drop the lock (in that order, so a
        successor that takes the lock never sees our socket file). Idempotent.
        A socket from systemd is only closed: systemd keeps the path and listens
        on it again, so clients that connect while the daemon restarts wait in
        its backlog instead of failing."""
        if self.closed:
            return
        self.closed = True
        self.sock.close()
        if self.lock_fd is None:
            return
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.lock_fd)


def adopt_socket(sock: socket.socket) -> BoundSocket:
    """Serve a listening socket systemd passed (socket activation)."""
    name = sock.getsockname()
    path = Path(name if isinstance(name, str) else name.decode(errors="replace"))
    return BoundSocket(sock, path, None)


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def bind_unix_socket(path: Path, mode: int = 0o660, backlog: int = 512, group: str | None = None) -> BoundSocket:
    """Bind the RPC socket at ``path``, owning it through an flock'd ``path.lock``.

    The lock decides who owns the path: a live daemon holds it, so a second one
    refuses to start; a socket file without a lock holder is stale (a crash left
    it) and is replaced. The socket is created under a umask, so it is never
    more permissive than ``mode``, not even for an instant.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    lock_path = path.with_name(path.name + ".lock")
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(lock_fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(lock_fd)
        raise AlreadyRunning(f"another wa-daemon (pid {holder}) is serving {path}") from None
    try:
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(errno.EEXIST, f"{path} exists and is not a socket; refusing to replace it")
            path.unlink()  # stale: its daemon is gone, since we hold the lock
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # A plain socket binds synchronously: no checkpoint, so the process-wide
            # umask cannot leak into another task while it is narrowed.
            with _umask(0o777 & ~mode):
                raw.bind(str(path))
            if group is not None:
                os.chown(path, -1, _gid_of(group))
            os.chmod(path, mode)
            raw.listen(backlog)
        except BaseException:
            raw.close()
            raise
    except BaseException:
        os.close(lock_fd)
        raise
    return BoundSocket(raw, path, lock_fd)


def _gid_of(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise OSError(errno.EINVAL, f"socket_group: no group named {group!r}") from None


def peer_credentials(sock: trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, from SO_PEERCRED."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


# ---------------------------------------------------------------------------- connections


class _Connection:
    def __init__(self, server: Server, stream: trio.SocketStream, cid: int) -> None:
        self.server = server
        self.stream = stream
        self.cid = cid
        try:
            self.pid, self.uid, self.gid = peer_credentials(stream.socket)
        except OSError:
            self.pid = self.uid = self.gid = -1
        self.log = log.bind(conn=cid, peer_pid=self.pid, peer_uid=self.uid)
        self.max_frame = server.manager.config.max_frame
        self.decoder = FrameDecoder(ClientMessage, self.max_frame)
        self.send_lock = trio.Lock()
        self.inflight: dict[int, trio.CancelScope] = {}
        self.watches = 0  # watch streams open on this connection
        self.last_active = trio.current_time()  # last bytes received or last request finished
        self.greeted = False
        self.broken = False
        self.scope = trio.CancelScope()
        self._access: tuple[Config, int | None] | None = None

    @property
    def caller(self) -> int | None:
        """None if the peer is an admin, else its uid: what the manager filters by
        (access.py). Decided at the first request and again after a reload; the
        peer's credentials cannot change while it stays connected."""
        config = self.server.manager.config
        access = self._access
        if access is None or access[0] is not config:
            access = self._access = (config, caller_of(config, self.uid, self.gid))
        return access[1]

    def _frame(self, message: msgspec.Struct) -> bytearray:
        try:
            return encode_frame(message, self.max_frame)
        except LocalProtocolError as exc:
            rid = getattr(message, "id", None)
            self.log.error("reply_too_large", error=exc.message)
            return encode_frame(Error(rid, InternalError.code, f"the reply is too large: {exc.message}"))

    async def send(self, message: msgspec.Struct) -> None:
        await self.send_frame(self._frame(message))

    async def send_frame(self, data: bytearray) -> None:
        lock = self.send_lock
        if not lock.locked():
            # Fast path. Nobody is in the middle of a frame, so write straight to
            # the socket: a reply the kernel takes whole (nearly all of them) then
            # costs one write(2), with no lock, cancel scopes or trip through the
            # scheduler. Nothing here can be cancelled half-way: it does not wait.
            if self.broken:
                return
            sent = self._write_now(data)
            if sent == len(data) or self.broken:
                return
            # The socket buffer is full: the rest waits for the client under the
            # lock. Nothing ran since the check above, so the lock is still free.
            lock.acquire_nowait()
            rest: bytearray | memoryview = memoryview(data)[sent:]
        else:
            await lock.acquire()
            rest = data
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
        timeout = self.server.manager.config.send_timeout
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
            self.server.manager.metrics.connections_closed.labels("not_reading").inc()
            self.log.warning("client_not_reading", send_timeout=timeout)
            self.scope.cancel()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            try:
                await self._read_loop(nursery)
            except RemoteProtocolError as exc:
                metrics = self.server.manager.metrics
                metrics.protocol_errors.inc()
                if isinstance(exc, FrameTooLarge):
                    metrics.limit_refusals.labels("frame_size").inc()
                if not self.greeted and exc.message.startswith("no hello within"):
                    metrics.connections_closed.labels("hello_timeout").inc()
                self.log.warning("protocol_error", error=exc.message, fatal=True)
                await self.send(Error(None, ProtocolError.code, exc.message))
            # The client is gone or broke the protocol: nothing it asked for is owed any more.
            nursery.cancel_scope.cancel()

    async def _receive(self) -> bytes:
        try:
            return await self.stream.receive_some(_RECV_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    def idle_for(self, now: float) -> float:
        """Seconds since the client last sent something or its last request ended;
        0 while it has not said hello (``hello_timeout`` covers that), has an
        operation or watch stream in flight, or is already being closed."""
        if not self.greeted or self.inflight or self.scope.cancel_called:
            return 0.0
        return now - self.last_active

    def close_idle(self, idle: float) -> None:
        self.server.manager.metrics.connections_closed.labels("idle").inc()
        self.log.info("connection_idle", idle=round(idle, 3))
        self.scope.cancel()

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        hello_timeout = self.server.manager.config.hello_timeout
        hello_deadline = trio.current_time() + hello_timeout
        while True:
            if self.greeted:
                data = await self._receive()
            else:
                with trio.move_on_at(hello_deadline) as cs:
                    data = await self._receive()
                if cs.cancelled_caught:
                    raise RemoteProtocolError(f"no hello within {hello_timeout:g} s")
            self.last_active = trio.current_time()
            if not data:
                self.decoder.receive_eof()
                return
            self.decoder.receive_data(data)
            while True:
                try:
                    msg = self.decoder.next_message()
                except RemoteProtocolError as exc:
                    if exc.fatal:
                        raise
                    self.server.manager.metrics.protocol_errors.inc()
                    self.log.warning("protocol_error", error=exc.message, fatal=False)
                    await self.send(Error(exc.request_id, ProtocolError.code, exc.message))
                    continue
                if msg is None:
                    break
                if not await self._dispatch(msg, nursery):
                    return

    async def _dispatch(self, msg: Any, nursery: trio.Nursery) -> bool:
        """Handle one message; False ends the connection."""
        if isinstance(msg, Hello):
            if self.greeted:
                await self.send(Error(None, ProtocolError.code, "hello was already exchanged"))
                return True
            if msg.protocol != PROTOCOL_VERSION:
                await self.send(
                    Error(
                        None,
                        ProtocolError.code,
                        f"unsupported protocol version {msg.protocol}; this daemon speaks {PROTOCOL_VERSION}",
                        {"supported": [PROTOCOL_VERSION]},
                    )
                )
                return False
            self.greeted = True
            await self.send(Welcome(PROTOCOL_VERSION, f"wa-daemon/{__version__}", self.max_frame))
            return True
        if not self.greeted:
            raise RemoteProtocolError("the first message must be hello")
        if isinstance(msg, Cancel):
            scope = self.inflight.get(msg.id)
            if scope is not None:
                scope.cancel()
            return True
        assert isinstance(msg, Request)
        if self.server.draining:
            await self.send(Error(msg.id, Unavailable.code, "the daemon is shutting down"))
            return True
        read = self.server.reads.get(msg.method)
        if read is not None:
            # Reads answer from memory without waiting: serving them here, without
            # a task of their own, halves their cost. Replies keep request order.
            await self._serve_read(msg, read)
            return True
        if msg.id in self.inflight:
            await self.send(Error(msg.id, ProtocolError.code, f"request id {msg.id} is already in flight"))
            return True
        limit = self.server.manager.config.max_inflight_per_connection
        if len(self.inflight) >= limit:
            self.server.manager.metrics.limit_refusals.labels("inflight").inc()
            self.log.warning("limit_refused", limit="inflight", max=limit, method=msg.method)
            await self.send(
                Error(msg.id, Busy.code, f"more than {limit} requests in flight on this connection", {"limit": limit})
            )
            return True
        scope = trio.CancelScope()
        self.inflight[msg.id] = scope
        nursery.start_soon(self._serve_request, msg, scope)
        return True

    async def _serve_read(self, req: Request, read: _Read) -> None:
        """Serve one read (a method that never waits) in the read loop."""
        started = time.perf_counter()
        session: str | None = None
        outcome = "ok"
        try:
            try:
                params = read.decode(req.params)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                raise InvalidArgument(f"invalid params for {req.method}: {exc}", {"method": req.method}) from None
            session = getattr(params, "session", None)
            data = self._frame(OutReply(req.id, read.handler(params, self)))
        except WaDaemonError as exc:
            outcome = exc.code
            data = self._frame(Error(req.id, exc.code, exc.message, exc.details))
        except Exception:
            outcome = "internal"
            self.log.exception("rpc_internal_error", id=req.id, method=req.method)
            data = self._frame(
                Error(req.id, InternalError.code, "internal error; the daemon log has the details", {"request": req.id})
            )
        try:
            await self.send_frame(data)
        finally:
            self._done(req, session, outcome, started, read.histogram)

    def _done(self, req: Request, session: str | None, outcome: str, started: float, histogram: Any) -> None:
        """Every RPC ends here: one metrics observation and one log line."""
        elapsed = time.perf_counter() - started
        if histogram is not None:
            histogram.observe(elapsed)
        self.log.info("rpc", id=req.id, method=req.method, session=session, result=outcome, ms=round(elapsed * 1e3, 3))

    async def _serve_request(self, req: Request, scope: trio.CancelScope) -> None:
        """Serve one operation or stream, in a task of its own that ``Cancel`` can cancel."""
        server = self.server
        started = time.perf_counter()
        session: str | None = None
        outcome = "ok"
        try:
            method = METHODS.get(req.method)
            if method is None:
                raise InvalidArgument(
                    f"unknown method {req.method!r}", {"method": req.method, "known": sorted(METHODS)}
                )
            try:
                params = decode_as(req.params, method.params)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                raise InvalidArgument(f"invalid params for {req.method}: {exc}", {"method": req.method}) from None
            session = getattr(params, "session", None)
            if method.stream:
                limit = server.manager.config.max_watches_per_connection
                if self.watches >= limit:
                    server.manager.metrics.limit_refusals.labels("watch_streams").inc()
                    self.log.warning("limit_refused", limit="watch_streams", max=limit, method=req.method)
                    raise LimitExceeded(f"more than {limit} watch streams open on this connection", {"limit": limit})
                self.watches += 1
                try:
                    await self._stream(req.id, params, scope)
                finally:
                    self.watches -= 1
                outcome = "stream_end"
            else:
                with scope:
                    result = await server.handlers[req.method](params, self)
                    await self.send(OutReply(req.id, result))
                if scope.cancelled_caught:
                    outcome = "cancelled"
                    await self.send(Error(req.id, Unavailable.code, "cancelled by the client"))
        except WaDaemonError as exc:
            outcome = exc.code
            await self.send(Error(req.id, exc.code, exc.message, exc.details))
        except Exception:
            outcome = "internal"
            self.log.exception("rpc_internal_error", id=req.id, method=req.method)
            await self.send(
                Error(req.id, InternalError.code, "internal error; the daemon log has the details", {"request": req.id})
            )
        finally:
            self.inflight.pop(req.id, None)
            self.last_active = trio.current_time()
            self._done(req, session, outcome, started, server.rpc_histograms.get(req.method))

    async def _stream(self, rid: int, params: WatchParams, scope: trio.CancelScope) -> None:
        manager = self.server.manager
        sub, snapshots = manager.subscribe(params.session, params.until, self.caller)
        final: StreamEnd | None = None
        try:
            with scope:
                for snap in snapshots:
                    await self.send(OutEvent(rid, Snapshot(snap)))
                    if snap.qr is not None:
                        sub.mark_qr_sent(snap.qr, trio.current_time())
                with trio.move_on_after(params.timeout):
                    while True:
                        item = await sub.next()
                        if isinstance(item, StreamEnd):
                            final = item
                            break
                        await self.send(OutEvent(rid, item))
                if final is None:
                    final = StreamEnd("timeout", None)
        finally:
            manager.unsubscribe(sub)
        if final is None:  # the client cancelled the stream
            final = StreamEnd("cancelled", None)
        status: SessionStatus | None = final.status
        if status is None and params.session is not None:
            status = manager.peek(params.session)
        await self.send(End(rid, final.reason, status))


Handler = Callable[[Any, _Connection], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class _Read:
    """A method that never waits, with what serving it needs, looked up once per request."""

    decode: Callable[[Any], Any]  # the params decoder
    handler: Callable[[Any, _Connection], Any]  # (params, connection) -> result, synchronous
    histogram: Any  # its rpc_duration child


class Server:
    def __init__(self, manager: SessionManager, *, health: Callable[[], Awaitable[Health]] | None = None) -> None:
        self.manager = manager
        self._health = health
        self.rpc_histograms = {m: manager.metrics.rpc_duration.labels(m) for m in METHODS}
        self._next_cid = 0
        self._conns: set[_Connection] = set()
        self._open = 0  # connections accepted and not yet closed (counted before their handler starts)
        self._accept_failing = 0  # consecutive failed accepts
        self._refusing = 0  # connections refused by max_connections, still being closed
        self.draining = False  # shutting down: new requests get `unavailable`
        m = manager
        self.handlers: dict[str, Handler] = {
            "connect": lambda p, c: m.connect(
                p.session,
                owner_uid=c.uid if c.uid >= 0 else None,
                options=SessionOptions.of(p),
                caller=c.caller,
            ),
            "disconnect": lambda p, c: m.disconnect(p.session, c.caller),
            "logout": lambda p, c: m.logout(p.session, c.caller),
            "delete": self._delete,
            "simulate": lambda p, c: m.simulate(p.session, p.action, c.caller),
            "health": self._health_report,
        }
        # Methods that never wait: served in the connection's read loop, no task.
        # Those that name a session, list or metrics filter by the caller (access.py).
        read_handlers: dict[str, Callable[[Any, _Connection], Any]] = {
            "status": lambda p, c: m.status(p.session, c.caller),
            "list": lambda p, c: m.list_raw(p.states, c.caller),
            "qr": lambda p, c: m.qr(p.session, c.caller),
            "pairing_code": lambda p, c: m.pairing_code(p.session, c.caller),
            "history": lambda p, c: History(p.session, m.history(p.session, p.limit, c.caller)),
            "metrics": self._metrics,
            "ping": lambda p, c: Pong(utcnow()),
            "version": lambda p, c: VersionInfo(__version__, PROTOCOL_VERSION, m.driver.name),
        }
        self.reads = {
            name: _Read(msgspec.msgpack.Decoder(METHODS[name].params).decode, fn, self.rpc_histograms[name])
            for name, fn in read_handlers.items()
        }
        assert set(self.handlers) | set(self.reads) | {"watch"} == set(METHODS), "every method needs a handler"

    async def _delete(self, params: SessionParams, conn: _Connection) -> Deleted:
        await self.manager.delete(params.session, conn.caller)
        return Deleted(params.session)

    async def _health_report(self, params: NoParams, conn: _Connection) -> Health:
        if self._health is None:
            raise Unavailable("this daemon runs no health monitor")
        return await self._health()

    def _metrics(self, params: MetricsParams, conn: _Connection) -> Metrics:
        # A non-admin gets the daemon-wide aggregates and the per-session series
        # of its own sessions only (docs/security.md).
        visible = self.manager.visible_to(conn.caller)
        metrics = self.manager.metrics
        return Metrics(metrics.samples(visible), metrics.exposition(visible) if params.prometheus else None)

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
            timeout = self.manager.config.idle_connection_timeout
            if timeout is not None:
                now = trio.current_time()
                for conn in list(self._conns):
                    idle = conn.idle_for(now)
                    if idle >= timeout:
                        conn.close_idle(idle)
            await trio.sleep(min(timeout / 10, 60.0) if timeout is not None else 60.0)

    async def _accept(self, bound: BoundSocket, handlers: trio.Nursery) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(bound.sock))
        metrics = self.manager.metrics
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
            limit = self.manager.config.max_connections
            if self._open >= limit:
                self._refuse(stream, limit, handlers)
                continue
            self._open += 1
            self._next_cid += 1
            handlers.start_soon(self._handle, stream, self._next_cid)

    def _refuse(self, stream: trio.SocketStream, limit: int, handlers: trio.Nursery) -> None:
        """One connection too many: one `error` frame, then closed."""
        metrics = self.manager.metrics
        metrics.limit_refusals.labels("connections").inc()
        metrics.connections_closed.labels("limit").inc()
        try:
            pid, uid, _ = peer_credentials(stream.socket)
        except OSError:
            pid = uid = -1
        log.warning("connection_refused", limit="connections", max=limit, peer_pid=pid, peer_uid=uid)
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
        return sum(len(c.inflight) for c in self._conns)

    async def _handle(self, stream: trio.SocketStream, cid: int) -> None:
        metrics = self.manager.metrics
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
