"""Clients for the daemon: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio or trio).

Method names are the RPC method names; results are the typed structs of
``wa_daemon.protocol``; errors are the exceptions of ``wa_daemon.errors``.

    with Client() as wa:
        status = wa.connect("alice")
        for event in wa.watch("alice", until=["connected", "failed"]):
            print(event)

    async with AsyncClient() as wa:
        status = await wa.connect("alice")
        async with wa.watch("alice", until=["connected", "failed"]) as events:
            async for event in events:
                print(event)

(``tests/test_client_api.py`` runs this example against a real daemon.)
"""

from __future__ import annotations

import builtins
import errno
import math
import os
import select
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.abc
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._watch import AsyncWatch, Watch
from .errors import ConnectionLost, DaemonUnreachable, Unavailable, WaDaemonError
from .message_types import MessagePage, SentMessage
from .paths import SYSTEM_SOCKET, pick_socket, socket_candidates
from .protocol import (
    ClientProtocol,
    ConnectParams,
    Deleted,
    DrainParams,
    DrainResult,
    End,
    Error,
    Event,
    Health,
    History,
    HistoryParams,
    HostList,
    ListParams,
    MessagesParams,
    Metrics,
    MetricsParams,
    NoParams,
    PairingCode,
    Pong,
    QrCode,
    Reply,
    SendTextParams,
    SessionList,
    SessionParams,
    SessionStatus,
    SimulateAction,
    SimulateParams,
    State,
    Transition,
    VersionInfo,
    WatchParams,
    error_from_message,
)

__all__ = ["AsyncClient", "AsyncWatch", "Client", "Watch"]

DEFAULT_TIMEOUT = 120.0
_CHUNK = 65536
_R = TypeVar("_R")


def _typed(method: str, result: Any, result_type: type[_R]) -> _R:
    """``result`` as the type the client method declares. METHODS decided how it was
    decoded; a client method naming another type is a bug in this module."""
    if not isinstance(result, result_type):
        raise TypeError(f"{method} decodes to {type(result).__name__}, not {result_type.__name__}")
    return result


def _watch_params(
    session: str | None, until: Iterable[State | str], timeout: float, messages: bool = False
) -> WatchParams:
    return WatchParams(session=session, until=[State(u) for u in until], timeout=timeout, messages=messages)


def _unreachable(path: str, exc: OSError, tried: tuple[Path, ...] = ()) -> DaemonUnreachable:
    """The error for a failed connect. Every message ends with the system's reason.
    With no socket at all it names each path the client looked at (``tried``) and
    which one the system service uses, so that nobody looks in the wrong place."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        # Says what grants access.
        return DaemonUnreachable(
            f"cannot reach wa-daemon at {path} (connecting needs write access to the socket: be its owner or"
            f" in its group, e.g. wa-clients; see docs/security.md): {exc.strerror or exc}",
            {"socket": path, "errno": "EACCES"},
        )
    if exc.errno == errno.ENOENT and len(tried) > 1:
        names = ", nor at ".join(f"{p} ({_whose(p)})" for p in tried)
        return DaemonUnreachable(
            f"cannot reach wa-daemon: no socket at {names}: {exc.strerror or exc}",
            {"socket": path, "tried": [str(p) for p in tried]},
        )
    if exc.errno == errno.ENOENT and Path(path) == SYSTEM_SOCKET:
        return DaemonUnreachable(
            f"cannot reach wa-daemon at {path} ({_whose(SYSTEM_SOCKET)}): {exc.strerror or exc}", {"socket": path}
        )
    return DaemonUnreachable(
        f"cannot reach wa-daemon at {path}: {exc.strerror or exc}", {"socket": path}
    )


def _whose(path: Path) -> str:
    if path == SYSTEM_SOCKET:
        return "the system service's socket, wa-daemon.socket: see systemctl status wa-daemon.socket"
    return "a per-user daemon's socket"


# ============================================================================ blocking


class _SyncConnection:
    def __init__(self, path: str, timeout: float | None, name: str, tried: tuple[Path, ...] = ()) -> None:
        self.proto = ClientProtocol(name)
        self.timeout = timeout
        self.closed = False
        self.last_used = time.monotonic()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as exc:  # missing, refused, path too long, timed out...: all "not there"
            self.sock.close()
            raise _unreachable(path, exc, tried) from None
        try:
            self.send(self.proto.hello())
            self.proto.check_welcome(self.receive())
        except BaseException:
            self.close()
            raise

    def send(self, data: bytes | bytearray) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise Unavailable(f"the daemon did not take the request within {self.timeout:g} s") from None
        except OSError as exc:
            raise ConnectionLost(f"the daemon closed the connection: {exc.strerror or exc}") from None

    def receive(self) -> Any:
        while True:
            msg = self.proto.decoder.next_message()
            if msg is not None:
                return msg
            try:
                data = self.sock.recv(_CHUNK)
            except TimeoutError:
                raise Unavailable(f"no answer from the daemon within {self.timeout:g} s") from None
            except OSError as exc:
                raise ConnectionLost(f"the daemon closed the connection: {exc.strerror or exc}") from None
            if not data:
                raise ConnectionLost("the daemon closed the connection")
            self.proto.decoder.receive_data(data)

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def peer_closed(self) -> bool:
        """True if the daemon has closed this connection while it sat unused (its
        ``idle_connection_timeout``); checked only after a pause, so busy callers
        pay nothing. Nothing was sent on it yet, so a new connection is safe."""
        if time.monotonic() - self.last_used < 1.0:
            return False
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        if not poller.poll(0):
            return False
        try:
            return not self.sock.recv(1, socket.MSG_PEEK)
        except OSError:
            return True


class Client:
    """A blocking client: one Unix socket, one call at a time (thread-safe).

    Usable from Django views, scripts and threads. ``watch`` opens a connection
    of its own, so a stream never blocks the calls made meanwhile.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        client_name: str = "wa_daemon.Client",
    ) -> None:
        self._tried = socket_candidates(socket_path)
        self.socket_path = str(pick_socket(self._tried))
        self.timeout = timeout
        self.client_name = client_name
        self._conn: _SyncConnection | None = None
        self._lock = threading.Lock()

    def _call(self, method: str, params: msgspec.Struct, result_type: type[_R]) -> _R:
        with self._lock:
            if self._conn is not None and self._conn.peer_closed():
                self._conn.close()
                self._conn = None
            if self._conn is None:
                self._conn = _SyncConnection(self.socket_path, self.timeout, self.client_name, self._tried)
            conn = self._conn
            conn.last_used = time.monotonic()
            try:
                rid, data = conn.proto.request(method, params)
                conn.send(data)
                while True:
                    msg = conn.receive()
                    if isinstance(msg, (Reply, Error)) and msg.id == rid:
                        break
                    if isinstance(msg, Error) and msg.id is None:
                        raise error_from_message(msg)
            except BaseException:
                # A broken exchange (timeout, lost connection, interrupt) may leave the
                # stream out of step: drop it, the next call opens a fresh one.
                conn.close()
                self._conn = None
                raise
        # An error reply to this request leaves the connection sound.
        return _typed(method, conn.proto.result(method, msg), result_type)

    # -- methods ---------------------------------------------------------------

    def connect(
        self,
        session: str,
        *,
        whatsapp_url: str | None = None,
        takeover_on_conflict: bool | None = None,
        idle_timeout: float | None = None,
        phone_number: str | None = None,
        proxy: str | None = None,
    ) -> SessionStatus:
        """Start the session. ``phone_number`` (international, digits only, e.g.
        "12025550108") links by pairing code instead of QR; "" goes back to QR.
        ``proxy``: ``http(s)://[user:password@]host:port`` or ``socks5://host:port``
        for this session's browser; "" goes direct."""
        params = ConnectParams(session, whatsapp_url, takeover_on_conflict, idle_timeout, phone_number, proxy)
        return self._call("connect", params, SessionStatus)

    def disconnect(self, session: str) -> SessionStatus:
        return self._call("disconnect", SessionParams(session), SessionStatus)

    def logout(self, session: str) -> SessionStatus:
        return self._call("logout", SessionParams(session), SessionStatus)

    def delete(self, session: str) -> Deleted:
        return self._call("delete", SessionParams(session), Deleted)

    def status(self, session: str) -> SessionStatus:
        return self._call("status", SessionParams(session), SessionStatus)

    def list(self, states: Iterable[State | str] | None = None) -> builtins.list[SessionStatus]:
        params = ListParams([State(s) for s in states] if states is not None else None)
        return self._call("list", params, SessionList).sessions

    def qr(self, session: str) -> QrCode:
        return self._call("qr", SessionParams(session), QrCode)

    def pairing_code(self, session: str) -> PairingCode:
        """The code to type on the phone while the session is ``waiting_code``."""
        return self._call("pairing_code", SessionParams(session), PairingCode)

    def history(self, session: str, limit: int = 100) -> builtins.list[Transition]:
        return self._call("history", HistoryParams(session, limit), History).transitions

    def metrics(self, prometheus: bool = False) -> Metrics:
        return self._call("metrics", MetricsParams(prometheus), Metrics)

    def health(self) -> Health:
        """The daemon's own checks (event loop, state directory, failing sessions)."""
        return self._call("health", NoParams(), Health)

    def ping(self) -> Pong:
        return self._call("ping", NoParams(), Pong)

    def version(self) -> VersionInfo:
        return self._call("version", NoParams(), VersionInfo)

    def hosts(self) -> HostList:
        """The fleet's hosts (several hosts on Redis); a daemon on its own lists itself."""
        return self._call("hosts", NoParams(), HostList)

    def drain(self, host: str, cancel: bool = False) -> DrainResult:
        """Ask ``host`` to hand its sessions to the fleet's other hosts (admins only);
        ``cancel``: it takes sessions again."""
        return self._call("drain", DrainParams(host, cancel), DrainResult)

    def simulate(self, session: str, action: SimulateAction) -> SessionStatus:
        return self._call("simulate", SimulateParams(session, action), SessionStatus)

    def send_text(self, session: str, to: str, text: str, idempotency_key: str | None = None) -> SentMessage:
        """Send ``text`` to ``to`` (a number or a chat id); a retry with the same
        ``idempotency_key`` returns the first result and sends nothing."""
        return self._call("send_text", SendTextParams(session, to, text, idempotency_key), SentMessage)

    def messages(self, session: str, after: int = 0, limit: int = 100) -> MessagePage:
        """The session's inbox after the cursor ``after``; read on from the page's ``next``."""
        return self._call("messages", MessagesParams(session, after, limit), MessagePage)

    def watch(
        self,
        session: str | None = None,
        *,
        until: Iterable[State | str] = (),
        timeout: float = 300.0,
        messages: bool = False,
    ) -> Watch:
        """Stream the session's snapshot, then its events, until ``until``, timeout or close().
        ``messages``: also the inbox's MessageReceived and MessageAck events."""
        # The socket timeout must outlast quiet periods of the stream itself.
        conn = _SyncConnection(self.socket_path, None, self.client_name, self._tried)
        try:
            rid, data = conn.proto.request("watch", _watch_params(session, until, timeout, messages))
            conn.send(data)
        except BaseException:
            conn.close()
            raise
        return Watch(conn, rid)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ============================================================================ async


class AsyncClient:
    """An async client for asyncio and trio (through anyio): many calls in flight
    on one connection, replies matched by id, watch streams multiplexed beside them.

    Use it as ``async with AsyncClient() as wa:``; the connection and its reader
    task live inside that block.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        client_name: str = "wa_daemon.AsyncClient",
    ) -> None:
        self._tried = socket_candidates(socket_path)
        self.socket_path = str(pick_socket(self._tried))
        self.timeout = timeout
        self._proto = ClientProtocol(client_name)
        self._stream: anyio.abc.SocketStream | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._send_lock = anyio.Lock()
        self._pending: dict[int, MemoryObjectSendStream[Any]] = {}
        self._streams: dict[int, MemoryObjectSendStream[Any]] = {}
        self._failure: WaDaemonError | None = None

    async def __aenter__(self) -> AsyncClient:
        try:
            self._stream = await anyio.connect_unix(self.socket_path)
        except OSError as exc:
            raise _unreachable(self.socket_path, exc, self._tried) from None
        try:
            await self._stream.send(bytes(self._proto.hello()))
            with anyio.fail_after(self.timeout):
                self._proto.check_welcome(await self._receive_one())
        except BaseException:
            await self._stream.aclose()
            raise
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._reader)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._tg = None
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None
        self._fail_all(ConnectionLost("the client was closed"))

    async def _receive_one(self) -> Any:
        assert self._stream is not None
        while True:
            msg = self._proto.decoder.next_message()
            if msg is not None:
                return msg
            try:
                data = await self._stream.receive(_CHUNK)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                raise ConnectionLost("the daemon closed the connection") from None
            self._proto.decoder.receive_data(data)

    async def _reader(self) -> None:
        try:
            while True:
                msg = await self._receive_one()
                if isinstance(msg, (Reply, Error)) and msg.id in self._pending:
                    self._pending.pop(msg.id).send_nowait(msg)
                elif isinstance(msg, (Event, End, Error)) and msg.id in self._streams:
                    self._streams[msg.id].send_nowait(msg)
                elif isinstance(msg, Error) and msg.id is None:
                    raise error_from_message(msg)
                # Anything else answers a call that was given up (cancelled or timed out).
        except WaDaemonError as exc:
            self._fail_all(exc)
        except anyio.ClosedResourceError:
            self._fail_all(ConnectionLost("the connection was closed"))

    def _fail_all(self, exc: WaDaemonError) -> None:
        self._failure = self._failure or exc
        for chan in [*self._pending.values(), *self._streams.values()]:
            chan.close()
        self._pending.clear()
        self._streams.clear()

    def _lost(self) -> WaDaemonError:
        return self._failure or ConnectionLost("the daemon closed the connection")

    async def _send(self, data: bytes | bytearray) -> None:
        if self._stream is None:
            raise Unavailable("the client is not open; use `async with AsyncClient() as c:`")
        async with self._send_lock:
            try:
                await self._stream.send(bytes(data))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                raise ConnectionLost(f"the daemon closed the connection: {exc!r}") from None

    async def _call(self, method: str, params: msgspec.Struct, result_type: type[_R]) -> _R:
        if self._failure is not None:
            raise self._failure
        rid, data = self._proto.request(method, params)
        send, receive = anyio.create_memory_object_stream[Any](1)
        self._pending[rid] = send
        try:
            await self._send(data)
            with anyio.fail_after(self.timeout):
                try:
                    msg = await receive.receive()
                except anyio.EndOfStream:
                    raise self._lost() from None
        finally:
            self._pending.pop(rid, None)
            receive.close()
        return _typed(method, self._proto.result(method, msg), result_type)

    # -- methods ---------------------------------------------------------------

    async def connect(
        self,
        session: str,
        *,
        whatsapp_url: str | None = None,
        takeover_on_conflict: bool | None = None,
        idle_timeout: float | None = None,
        phone_number: str | None = None,
        proxy: str | None = None,
    ) -> SessionStatus:
        """Start the session. ``phone_number`` (international, digits only, e.g.
        "12025550108") links by pairing code instead of QR; "" goes back to QR.
        ``proxy``: ``http(s)://[user:password@]host:port`` or ``socks5://host:port``
        for this session's browser; "" goes direct."""
        params = ConnectParams(session, whatsapp_url, takeover_on_conflict, idle_timeout, phone_number, proxy)
        return await self._call("connect", params, SessionStatus)

    async def disconnect(self, session: str) -> SessionStatus:
        return await self._call("disconnect", SessionParams(session), SessionStatus)

    async def logout(self, session: str) -> SessionStatus:
        return await self._call("logout", SessionParams(session), SessionStatus)

    async def delete(self, session: str) -> Deleted:
        return await self._call("delete", SessionParams(session), Deleted)

    async def status(self, session: str) -> SessionStatus:
        return await self._call("status", SessionParams(session), SessionStatus)

    async def list(self, states: Iterable[State | str] | None = None) -> builtins.list[SessionStatus]:
        params = ListParams([State(s) for s in states] if states is not None else None)
        return (await self._call("list", params, SessionList)).sessions

    async def qr(self, session: str) -> QrCode:
        return await self._call("qr", SessionParams(session), QrCode)

    async def pairing_code(self, session: str) -> PairingCode:
        """The code to type on the phone while the session is ``waiting_code``."""
        return await self._call("pairing_code", SessionParams(session), PairingCode)

    async def history(self, session: str, limit: int = 100) -> builtins.list[Transition]:
        return (await self._call("history", HistoryParams(session, limit), History)).transitions

    async def metrics(self, prometheus: bool = False) -> Metrics:
        return await self._call("metrics", MetricsParams(prometheus), Metrics)

    async def health(self) -> Health:
        """The daemon's own checks (event loop, state directory, failing sessions)."""
        return await self._call("health", NoParams(), Health)

    async def ping(self) -> Pong:
        return await self._call("ping", NoParams(), Pong)

    async def version(self) -> VersionInfo:
        return await self._call("version", NoParams(), VersionInfo)

    async def hosts(self) -> HostList:
        """The fleet's hosts (several hosts on Redis); a daemon on its own lists itself."""
        return await self._call("hosts", NoParams(), HostList)

    async def drain(self, host: str, cancel: bool = False) -> DrainResult:
        """Ask ``host`` to hand its sessions to the fleet's other hosts (admins only);
        ``cancel``: it takes sessions again."""
        return await self._call("drain", DrainParams(host, cancel), DrainResult)

    async def simulate(self, session: str, action: SimulateAction) -> SessionStatus:
        return await self._call("simulate", SimulateParams(session, action), SessionStatus)

    async def send_text(self, session: str, to: str, text: str, idempotency_key: str | None = None) -> SentMessage:
        """Send ``text`` to ``to`` (a number or a chat id); a retry with the same
        ``idempotency_key`` returns the first result and sends nothing."""
        return await self._call("send_text", SendTextParams(session, to, text, idempotency_key), SentMessage)

    async def messages(self, session: str, after: int = 0, limit: int = 100) -> MessagePage:
        """The session's inbox after the cursor ``after``; read on from the page's ``next``."""
        return await self._call("messages", MessagesParams(session, after, limit), MessagePage)

    def watch(
        self,
        session: str | None = None,
        *,
        until: Iterable[State | str] = (),
        timeout: float = 300.0,
        messages: bool = False,
    ) -> AsyncWatch:
        """A stream, opened by ``async with``: ``async with wa.watch("id") as events: async for ev in events``.
        ``messages``: also the inbox's MessageReceived and MessageAck events."""
        return AsyncWatch(self, _watch_params(session, until, timeout, messages))

    async def _open_stream(self, params: WatchParams) -> tuple[int, MemoryObjectReceiveStream[Any]]:
        """Send a watch request; its messages go to the returned channel."""
        if self._failure is not None:
            raise self._failure
        rid, data = self._proto.request("watch", params)
        # Unbounded here: the daemon already bounds and coalesces what a watcher gets,
        # and a full buffer would stall the reader and with it every other call.
        send, receive = anyio.create_memory_object_stream[Any](math.inf)
        self._streams[rid] = send
        try:
            await self._send(data)
        except BaseException:
            self._streams.pop(rid, None)
            raise
        return rid, receive
