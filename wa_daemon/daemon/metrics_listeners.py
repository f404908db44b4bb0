"""The two metrics listeners, and who each scrape is answered as (docs/security.md).

``metrics_listen`` (loopback TCP) cannot tell who connects: it answers as
nobody in particular (:data:`UNKNOWN`, which sees no session: the daemon-wide
aggregates only), or as an admin when ``metrics_listen_sessions`` says so.

``metrics_socket`` (a Unix socket) reads each peer's credentials and answers it
exactly as the RPC ``metrics`` method answers the same peer: the same caller
(``access.caller_of``), the same filter (``SessionManager.visible_to`` and
``DaemonMetrics.exposition``). Both are looked up at each scrape, so a reload
of ``admin_uids``, ``admin_group`` or ``metrics_listen_sessions`` applies to
the next one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from ..protocol import Health
from .ops.config import Config, parse_listen
from .ops.log import get_logger
from .ops.metrics_http import Exposition, MetricsHttp
from .rpc.access import ADMIN, UNKNOWN, Caller, caller_of
from .rpc.listener import AlreadyRunning, bind_unix_socket, peer_credentials
from .sessions.manager import SessionManager

log = get_logger("http")

# Anybody on the host may connect: what it reads is filtered by who it is, and a
# uid that owns no session reads what the TCP listener shows anyway.
SOCKET_MODE = 0o666


def tcp_caller(config: Config) -> Caller:
    """Who a ``metrics_listen`` scrape is answered as."""
    return ADMIN if config.metrics_listen_sessions else UNKNOWN


def exposition_as(manager: SessionManager, caller: Callable[[Config], Caller]) -> Exposition:
    """The Prometheus text as ``caller`` (decided at each scrape from the running
    configuration) may see it: the RPC ``metrics`` method's filter."""
    return lambda: manager.metrics.exposition(manager.visible_to(caller(manager.config)))


async def serve_tcp(
    listen: str,
    manager: SessionManager,
    health: Callable[[], Awaitable[Health]],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``metrics_listen``; started with the addresses bound (none when it failed)."""
    host, port = parse_listen(listen)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        # Sessions matter more than a scrape: keep serving them, say so loudly.
        log.error("metrics_listen_failed", listen=listen, error=str(exc))
        task_status.started([])
        return
    addresses = [_host_port(listener.socket.getsockname()) for listener in listeners]
    log.info("metrics_listening", addresses=addresses, sessions=manager.config.metrics_listen_sessions)
    task_status.started(addresses)
    scrape = exposition_as(manager, tcp_caller)
    await MetricsHttp(lambda _stream: scrape, health).serve(listeners)


def _host_port(name: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_socket(
    path: Path,
    manager: SessionManager,
    health: Callable[[], Awaitable[Health]],
    *,
    task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``metrics_socket``; started with whether it could be bound."""
    try:
        # Synchronous, like the RPC socket's bind: the umask it narrows cannot
        # leak into another task (rpc/listener.py).
        bound = bind_unix_socket(path, mode=SOCKET_MODE)
    except (OSError, AlreadyRunning) as exc:
        log.error("metrics_socket_failed", socket=str(path), error=str(exc))
        task_status.started(False)
        return
    try:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(bound.sock))
        log.info("metrics_socket_listening", socket=str(path))
        task_status.started(True)

        def for_peer(stream: trio.SocketStream) -> Exposition:
            credentials = peer_credentials(stream.socket)
            return exposition_as(manager, lambda config: caller_of(config, credentials))

        await MetricsHttp(for_peer, health).serve([listener])
    finally:
        bound.close()
