"""Limits that protect the daemon: each one reached, with its error, log line and metric.

Per connection: watch streams, idle connections, clients that stop reading.
Per daemon: connections, file descriptors (a real subprocess with a low
RLIMIT_NOFILE), sessions. Per session: the memory ceiling (the browser is
recycled on its saved auth).
"""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog
import trio
import trio.testing

from wa_daemon import AsyncClient, Client
from wa_daemon.daemon.monitor import DaemonMonitor, GroupUsage, ResourceSampler
from wa_daemon.daemon.ops.configfile import ConfigSource
from wa_daemon.daemon.rpc.limits import Limits
from wa_daemon.daemon.sessions.manager import SessionManager
from wa_daemon.errors import LimitExceeded
from wa_daemon.protocol import (
    ClientProtocol,
    End,
    Error,
    Event,
    MetricsParams,
    NoParams,
    Reason,
    State,
    WatchParams,
    Welcome,
)

from .helpers import open_manager, running_daemon, wait_state

MB = 1 << 20


def metric(manager: SessionManager, name: str, **labels: str) -> float:
    return sum(s.value for s in manager.metrics.samples() if s.name == name and labels.items() <= s.labels.items())


async def _next(stream: trio.SocketStream, proto: ClientProtocol) -> Any:
    """The next message from the daemon, or None at end of stream."""
    while True:
        msg = proto.decoder.next_message()
        if msg is not None:
            return msg
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return None
        if not data:
            return None
        proto.decoder.receive_data(data)


async def _greeted(path: Path) -> tuple[trio.SocketStream, ClientProtocol]:
    s = await trio.open_unix_socket(str(path))
    proto = ClientProtocol("limits")
    await s.send_all(proto.hello())
    assert isinstance(await _next(s, proto), Welcome)
    return s, proto


# ============================================================================ per connection


async def test_watch_streams_per_connection_are_limited(sock_dir: Path) -> None:
    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        async with running_daemon(sock_dir, max_watches_per_connection=2) as d:
            m = d.manager
            assert m is not None
            async with AsyncClient(d.socket_path) as wa:
                await wa.connect("w")
                async with AsyncExitStack() as streams:
                    first = await streams.enter_async_context(wa.watch("w"))
                    second = await streams.enter_async_context(wa.watch(None))
                    await first.__anext__()  # the snapshots: both streams are open
                    await second.__anext__()
                    async with wa.watch("w") as third:
                        with pytest.raises(LimitExceeded) as info:
                            await third.__anext__()
                    assert info.value.details == {"limit": 2}
                    # Refused, not queued; other requests on the connection go on.
                    assert await wa.ping()
                    await first.aclose()
                    fourth = await streams.enter_async_context(wa.watch("w"))
                    await fourth.__anext__()  # a slot was freed
                    # Another connection has its own allowance.
                    async with AsyncClient(d.socket_path) as other:
                        async with other.watch("w") as w:
                            await w.__anext__()
            assert metric(m, "wa_limit_refusals_total", limit="watch_streams") == 1
            assert any(e["event"] == "limit_refused" and e["limit"] == "watch_streams" for e in logs)


async def test_idle_connection_is_closed_but_not_one_with_a_watch(sock_dir: Path) -> None:
    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        async with running_daemon(sock_dir, idle_connection_timeout=0.5) as d:
            m = d.manager
            assert m is not None
            async with AsyncClient(d.socket_path) as wa:
                await wa.connect("i")
            # The daemon's idle clock starts at the greeting at the earliest: measured from
            # before it, the close comes no sooner than the timeout, however slow the machine.
            greeted_idle = trio.current_time()
            idle, idle_proto = await _greeted(d.socket_path)
            watching, proto = await _greeted(d.socket_path)
            rid, data = proto.request("watch", WatchParams(session="i", timeout=60))
            await watching.send_all(data)
            assert isinstance(await _next(watching, proto), Event)  # the snapshot
            busy, busy_proto = await _greeted(d.socket_path)

            async with trio.open_nursery() as nursery:

                async def keep_pinging() -> None:
                    for _ in range(15):  # 1.5 s of activity, one ping per 0.1 s
                        await busy.send_all(busy_proto.request("ping", NoParams())[1])
                        assert await _next(busy, busy_proto) is not None
                        await trio.sleep(0.1)

                nursery.start_soon(keep_pinging)
                # The silent connection is closed once idle_connection_timeout has passed.
                with trio.fail_after(10):
                    assert await _next(idle, idle_proto) is None
                assert trio.current_time() - greeted_idle >= 0.5
            # 1.5 s later: the busy and the watching connection are still served.
            await busy.send_all(busy_proto.request("ping", NoParams())[1])
            assert await _next(busy, busy_proto) is not None
            with trio.move_on_after(0.5):
                while True:  # the stream's events, if any, but not its end nor a close
                    msg = await _next(watching, proto)
                    assert msg is not None and not isinstance(msg, End), msg
            # Once its watch ends, the watching connection becomes idle too (its idle
            # clock starts when the cancel arrives, at the earliest).
            cancelled = trio.current_time()
            await watching.send_all(proto.cancel(rid))
            while not isinstance(msg := await _next(watching, proto), End):
                assert msg is not None
            assert await _next(watching, proto) is None
            assert trio.current_time() - cancelled >= 0.5
            for s in (idle, watching, busy):
                await s.aclose()
            assert metric(m, "wa_connections_closed_total", reason="idle") >= 2
            assert any(e["event"] == "connection_idle" for e in logs)
            async with AsyncClient(d.socket_path) as wa:
                assert await wa.ping()


async def test_client_that_stops_reading_is_closed_after_send_timeout(sock_dir: Path) -> None:
    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        async with running_daemon(sock_dir, send_timeout=0.5) as d:
            m = d.manager
            assert m is not None
            s, proto = await _greeted(d.socket_path)
            s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            # Many large replies, never read: the daemon's writes block, then give up.
            payload = b"".join(proto.request("metrics", MetricsParams(prometheus=True))[1] for _ in range(400))
            with trio.move_on_after(5):
                await s.send_all(payload)
            deadline = trio.current_time() + 10
            while not metric(m, "wa_connections_closed_total", reason="not_reading"):
                assert trio.current_time() < deadline, "the stalled client was never closed"
                # Meanwhile everyone else is served.
                async with AsyncClient(d.socket_path) as wa:
                    assert await wa.ping()
                await trio.sleep(0.1)
            assert any(e["event"] == "client_not_reading" for e in logs)
            # What was written before the close is readable, then the end of the stream.
            while await _next(s, proto) is not None:
                pass
            await s.aclose()


# ============================================================================ per daemon


async def test_max_connections_refuses_with_one_error_frame(sock_dir: Path) -> None:
    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        async with running_daemon(sock_dir, max_connections=2) as d:
            m, server = d.manager, d.server
            assert m is not None and server is not None
            a, _ = await _greeted(d.socket_path)
            b, _ = await _greeted(d.socket_path)
            # The third gets one `error` frame, then the end of the stream.
            c = await trio.open_unix_socket(str(d.socket_path))
            proto = ClientProtocol("third")
            await c.send_all(proto.hello())
            msg = await _next(c, proto)
            assert isinstance(msg, Error) and msg.id is None and msg.code == "limit_exceeded", msg
            assert msg.details == {"limit": 2}
            assert await _next(c, proto) is None
            await c.aclose()
            # The clients raise it as LimitExceeded.
            with pytest.raises(LimitExceeded):
                async with AsyncClient(d.socket_path):
                    pass
            assert metric(m, "wa_limit_refusals_total", limit="connections") == 2
            assert metric(m, "wa_connections_closed_total", reason="limit") == 2
            assert any(e["event"] == "connection_refused" for e in logs)
            # The accept loop goes on: once a connection closes, a new one is served.
            await a.aclose()
            while server.connection_count > 1:
                await trio.sleep(0.01)
            async with AsyncClient(d.socket_path) as wa:
                assert await wa.ping()
            await b.aclose()


def test_accept_loop_survives_running_out_of_descriptors(sock_dir: Path) -> None:
    """A real daemon with RLIMIT_NOFILE of 64: open connections until accept fails
    (EMFILE), check that it logs, counts and keeps serving the connections it has,
    then close them and check it accepts again."""
    sock = sock_dir / "d.sock"
    log_path = sock_dir / "daemon.log"

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wa_daemon.daemon.main",
                "--socket",
                str(sock),
                "--driver",
                "scripted",
                "--set",
                "max_connections=1000",
                "--set",
                "registry=memory",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=low_fd_limit,
        )
    conns: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                with Client(sock, timeout=2) as c:
                    c.ping()
                break
            except Exception:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
        first = Client(sock, timeout=5)  # an established connection, kept through the outage
        first.ping()
        starved = None
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(1.0)
            s.connect(str(sock))  # into the backlog: succeeds even when accept cannot
            conns.append(s)
            proto = ClientProtocol("fd")
            s.sendall(proto.hello())
            try:
                data = s.recv(65536)
            except TimeoutError:
                starved = s  # not accepted: the daemon is out of descriptors
                break
            assert data, "closed instead of served"
        assert starved is not None, "never ran out of descriptors"
        assert proc.poll() is None, log_path.read_text()
        assert first.ping()  # connections it has are still served
        assert '"accept_failed"' in log_path.read_text()
        for s in conns:
            s.close()
        conns.clear()
        deadline = time.monotonic() + 10
        while True:
            try:
                with Client(sock, timeout=2) as c:
                    assert c.ping()
                    samples = c.metrics().samples
                break
            except Exception:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        failures = sum(
            s.value for s in samples if s.name == "wa_accept_failures_total" and s.labels["error"] == "EMFILE"
        )
        assert failures >= 1
        assert '"accept_recovered"' in log_path.read_text()
        first.close()
    finally:
        for s in conns:
            s.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, log_path.read_text()


async def test_session_limit_refusal_is_counted(autojump_clock: trio.testing.MockClock) -> None:
    with structlog.testing.capture_logs() as logs:
        async with open_manager(max_sessions=1) as (m, _):
            await m.connect("one")
            with pytest.raises(LimitExceeded) as info:
                await m.connect("two")
            assert info.value.details == {"limit": 1}
            assert metric(m, "wa_limit_refusals_total", limit="sessions") == 1
            assert metric(m, "wa_connect_attempts_total", result="limit_exceeded") == 1
            assert any(e["event"] == "limit_refused" and e["limit"] == "sessions" for e in logs)


async def test_inflight_refusal_is_counted(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir, max_inflight_per_connection=1) as d:
            assert d.manager is not None
            async with AsyncClient(d.socket_path) as wa:
                await wa.connect("q")
                async with wa.watch("q") as w:
                    await w.__anext__()
                    with pytest.raises(Exception) as info:
                        await wa.connect("q")
                    assert getattr(info.value, "code", None) == "busy"
            assert metric(d.manager, "wa_limit_refusals_total", limit="inflight") == 1


# ============================================================================ per session: memory


class FakeSampler(ResourceSampler):
    """Reports the PSS a test sets, for any session, whatever its driver."""

    def __init__(self) -> None:
        super().__init__(None)
        self.pss: dict[str, int] = {}

    async def sample(self, groups: Any) -> None:
        self.usage = {sid: GroupUsage(pss, 0.0, 1) for sid, pss in self.pss.items()}


async def _linked(m: SessionManager, driver: Any, sid: str) -> None:
    await m.connect(sid)
    await wait_state(m, sid, State.WAITING_QR)
    driver.simulate(sid, "scan")
    await wait_state(m, sid, State.CONNECTED)


async def test_memory_limit_recycles_the_browser_without_a_qr(autojump_clock: trio.testing.MockClock) -> None:
    with structlog.testing.capture_logs() as logs:
        async with open_manager(session_memory_limit=100 * MB) as (m, driver):
            sampler = FakeSampler()
            monitor = DaemonMonitor(m, None, resources=sampler)
            await _linked(m, driver, "a")
            await _linked(m, driver, "b")
            await m.connect("c")
            await wait_state(m, "c", State.WAITING_QR)
            # Under the limit, or not connected: left alone.
            sampler.pss = {"a": 99 * MB, "b": 20 * MB, "c": 500 * MB}
            await monitor.sample()
            await trio.sleep(1)
            assert m.peek("a").state == State.CONNECTED and m.peek("c").state == State.WAITING_QR  # type: ignore[union-attr]
            # Over it: recycled.
            sampler.pss = {"a": 101 * MB, "b": 20 * MB}
            await monitor.sample()
            await wait_state(m, "a", State.RECONNECTING)
            assert m.peek("a").reason == Reason.MEMORY_LIMIT.value  # type: ignore[union-attr]
            sampler.pss = {}
            await wait_state(m, "a", State.CONNECTED)
            trail = [(t.to_state, t.reason) for t in m.history("a")][-4:]
            assert trail == [
                (State.CONNECTED, "app_loaded"),
                (State.RECONNECTING, "memory_limit"),
                (State.AUTHENTICATING, "auth_restored"),  # saved auth: no QR
                (State.CONNECTED, "app_loaded"),
            ]
            st = m.status("a")
            assert st.attempt == 0  # not a reconnect attempt
            assert m.peek("b").state == State.CONNECTED and len(m.history("b")) == 4  # type: ignore[union-attr]
            assert metric(m, "wa_session_recycles_total", reason="memory_limit") == 1
            assert metric(m, "wa_browser_crashes_total") == 0  # not a crash
            assert metric(m, "wa_reconnects_total") == 0
            assert any(e["event"] == "session_recycled" and e["reason"] == "memory_limit" for e in logs)
            assert any(e["event"] == "memory_limit_exceeded" and e["session"] == "a" for e in logs)
            # No limit configured: nothing happens.
            m.reconfigure(m.config.replace(session_memory_limit=None))
            sampler.pss = {"a": 10_000 * MB}
            await monitor.sample()
            await trio.sleep(5)
            assert m.peek("a").state == State.CONNECTED  # type: ignore[union-attr]


async def test_memory_limit_right_after_every_launch_ends_in_failed(autojump_clock: trio.testing.MockClock) -> None:
    """A browser over the limit again soon after each recycle spends reconnect
    attempts (with their backoff), so the session ends `failed` instead of looping;
    a recycle long after the previous one is free again."""
    async with open_manager(session_memory_limit=100 * MB, reconnect_max_attempts=2) as (m, driver):
        sampler = FakeSampler()
        monitor = DaemonMonitor(m, None, resources=sampler)
        sampler.pss = {"a": 200 * MB}
        await _linked(m, driver, "a")
        await monitor.sample()
        await wait_state(m, "a", State.RECONNECTING)
        await wait_state(m, "a", State.CONNECTED)
        assert m.status("a").attempt == 0
        # Long after: free again.
        await trio.sleep(m.config.reconnect_reset_after + 1)
        await monitor.sample()
        await wait_state(m, "a", State.RECONNECTING)
        await wait_state(m, "a", State.CONNECTED)
        assert m.status("a").attempt == 0
        attempts = []
        for _ in range(3):
            await monitor.sample()
            await wait_state(m, "a", State.RECONNECTING, State.FAILED)
            attempts.append(m.status("a").attempt)
            await wait_state(m, "a", State.CONNECTED, State.FAILED)
        st = m.status("a")
        assert attempts == [1, 2, 2] and st.state == State.FAILED and st.reason == "max_reconnects"
        assert "memory" in (st.message or "")
        assert metric(m, "wa_session_recycles_total", reason="memory_limit") == 5
        assert metric(m, "wa_browser_crashes_total") == 0


async def test_blocking_client_reopens_a_connection_closed_as_idle(sock_dir: Path) -> None:
    # The client looks for a close only on a connection unused for 1 s (busy callers pay
    # nothing), so the daemon's timeout is longer than that.
    with trio.fail_after(30):
        async with running_daemon(sock_dir, idle_connection_timeout=1.5) as d:
            assert d.manager is not None
            c = Client(d.socket_path, timeout=5)
            try:
                assert await trio.to_thread.run_sync(c.ping)
                # Until the daemon has closed it: its count of connections.
                assert d.server is not None
                while d.server.connection_count:
                    await trio.sleep(0.01)
                assert metric(d.manager, "wa_connections_closed_total", reason="idle") == 1
                assert await trio.to_thread.run_sync(c.ping)  # no ConnectionLost: a new connection
            finally:
                c.close()


async def test_hello_timeout_and_oversized_frames_are_counted(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir, hello_timeout=0.3, max_frame=4096) as d:
            assert d.manager is not None
            silent = await trio.open_unix_socket(str(d.socket_path))
            msg = await _next(silent, ClientProtocol("silent"))
            assert isinstance(msg, Error) and msg.code == "protocol_error" and "no hello" in msg.message
            assert await _next(silent, ClientProtocol("silent")) is None
            await silent.aclose()
            big, proto = await _greeted(d.socket_path)
            await big.send_all((5000).to_bytes(4, "big"))
            msg = await _next(big, proto)
            assert isinstance(msg, Error) and msg.code == "protocol_error" and "exceeds" in msg.message
            await big.aclose()
            assert metric(d.manager, "wa_connections_closed_total", reason="hello_timeout") == 1
            assert metric(d.manager, "wa_limit_refusals_total", limit="frame_size") == 1


# ============================================================================ reload


async def test_a_reload_gives_the_server_its_new_limits(sock_dir: Path) -> None:
    """What applies when, as before the server owned its limits: an open connection
    takes the new caps at its next decision but keeps the frame limit it was
    welcomed with; a new connection is welcomed with the new one."""
    with trio.fail_after(30):
        async with running_daemon(sock_dir, max_watches_per_connection=1, max_frame=4096) as d:
            assert d.manager is not None and d.server is not None
            async with AsyncClient(d.socket_path) as wa:
                await wa.connect("r")
            old, proto = await _greeted(d.socket_path)
            await old.send_all(proto.request("watch", WatchParams(session="r"))[1])
            assert isinstance(await _next(old, proto), Event)  # its snapshot: the one stream allowed
            await old.send_all(proto.request("watch", WatchParams(session="r"))[1])
            refused = await _next(old, proto)
            assert isinstance(refused, Error) and refused.code == "limit_exceeded"

            d.source = ConfigSource(
                None, False, {**msgspec.to_builtins(d.config), "max_watches_per_connection": 2, "max_frame": 8192}, {}
            )
            assert await d.reload()
            assert d.server.limits == Limits.from_config(d.config)
            assert d.server.limits.max_watches_per_connection == 2 and d.server.limits.max_frame == 8192

            # The open connection: a second stream is allowed now ...
            await old.send_all(proto.request("watch", WatchParams(session="r"))[1])
            assert isinstance(await _next(old, proto), Event)
            # ... and a new one is welcomed with the new frame limit.
            new = await trio.open_unix_socket(str(d.socket_path))
            new_proto = ClientProtocol("new")
            await new.send_all(new_proto.hello())
            welcome = await _next(new, new_proto)
            assert isinstance(welcome, Welcome) and welcome.max_frame == 8192
            await new.aclose()
            # The open connection keeps the 4096 it was welcomed with.
            await old.send_all((5000).to_bytes(4, "big"))
            while not isinstance(msg := await _next(old, proto), Error):
                assert msg is not None
            assert msg.code == "protocol_error" and "exceeds the limit of 4096" in msg.message
            await old.aclose()
