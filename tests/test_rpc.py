"""The daemon over a real Unix socket, driven by AsyncClient (trio) and raw frames."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import structlog
import trio
import trio.lowlevel

from wa_daemon import AsyncClient, NotFound, RateLimited, State
from wa_daemon.daemon.app import Daemon
from wa_daemon.errors import InvalidArgument, LimitExceeded
from wa_daemon.protocol import (
    ClientProtocol,
    End,
    Error,
    NoParams,
    QrUpdated,
    Reply,
    SessionParams,
    Snapshot,
    StateChanged,
    WatchParams,
)

from .helpers import running_daemon

FAST_SCAN = {"launch_delay": 0.05, "auth_delay": 0.1}


async def reach(wa: AsyncClient, sid: str, *states: str) -> None:
    async with wa.watch(sid, until=states, timeout=30) as events:
        async for _ in events:
            pass
    assert events.end is not None and events.end.reason == "until", events.end


async def test_full_flow_and_every_method(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir, qr_debounce=0.1, scripted=FAST_SCAN) as d:
            async with AsyncClient(d.socket_path) as wa:
                assert (await wa.version()).protocol == 1
                assert (await wa.ping()).server_time.tzinfo is not None
                st = await wa.connect("alice")
                assert st.state == State.STARTING and st.owner_uid == os.getuid()
                async with wa.watch("alice", until=["connected"], timeout=10) as events:
                    seen = []
                    async for ev in events:
                        seen.append(ev)
                        if isinstance(ev, StateChanged) and ev.transition.to_state == State.WAITING_QR:
                            assert ev.status.qr is not None  # the state event carries the first QR
                            qr = await wa.qr("alice")
                            assert qr.seq == 1 and qr.expires_at > qr.generated_at
                            await wa.simulate("alice", "scan")
                assert isinstance(seen[0], Snapshot)
                assert events.end is not None and events.end.reason == "until"
                assert events.end.status is not None and events.end.status.state == State.CONNECTED
                assert [t.to_state for t in await wa.history("alice")][-1] == State.CONNECTED
                assert [s.session for s in await wa.list()] == ["alice"]
                assert await wa.list(["failed"]) == []
                samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in (await wa.metrics()).samples}
                assert samples[("wa_sessions", (("state", "connected"),))] == 1
                text = (await wa.metrics(prometheus=True)).prometheus
                assert text is not None and "wa_connect_attempts_total" in text
                assert (await wa.disconnect("alice")).state == State.STOPPED
                assert (await wa.logout("alice")).state == State.LOGGED_OUT
                assert (await wa.delete("alice")).session == "alice"
                with pytest.raises(NotFound):
                    await wa.status("alice")


async def test_idempotent_connect_200_concurrent_over_the_socket(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir) as d:
            results = []

            async def caller(wa: AsyncClient) -> None:
                results.append(await wa.connect("one"))

            async with AsyncClient(d.socket_path) as a, AsyncClient(d.socket_path) as b:
                async with trio.open_nursery() as n:
                    for i in range(200):
                        n.start_soon(caller, a if i % 2 else b)
            assert len(results) == 200
            assert {r.state for r in results} == {State.STARTING}
            async with AsyncClient(d.socket_path) as wa:
                await reach(wa, "one", "waiting_qr")  # the one launch has happened
            assert d.driver.launches == 1  # type: ignore[union-attr]


async def test_rate_limited_carries_retry_after(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir) as d:
            async with AsyncClient(d.socket_path) as wa:
                await wa.connect("r")
                await wa.disconnect("r")
                with pytest.raises(RateLimited) as info:
                    await wa.connect("r")
                assert 0 < info.value.retry_after <= 5
                assert info.value.code == "rate_limited"


async def test_typed_errors_for_bad_arguments(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir, max_sessions=1) as d:
            async with AsyncClient(d.socket_path) as wa:
                for bad in ["", ".", "..", "a/b", "-x", "x" * 65, "a\x00b", "é", "a\n"]:
                    with pytest.raises(InvalidArgument, match="must match|matching regex"):
                        await wa.status(bad)
                await wa.connect("s1")
                with pytest.raises(InvalidArgument, match="no running browser"):
                    await wa.simulate("s1", "scan")  # still launching
                with pytest.raises(NotFound):
                    await wa.simulate("nobody", "scan")
                with pytest.raises(LimitExceeded):
                    await wa.connect("s2")
                with pytest.raises(NotFound, match="no QR"):
                    await wa.qr("s1")
                assert (await wa.ping()) is not None


async def test_watch_timeout_ends_stream_with_status(sock_dir: Path, autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with running_daemon(sock_dir, qr_timeout=3600) as d:
            async with AsyncClient(d.socket_path, timeout=None) as wa:
                await wa.connect("w")
                async with wa.watch("w", timeout=90) as events:
                    kinds = [type(ev).__name__ async for ev in events]
                assert kinds[0] == "Snapshot"
                assert "QrUpdated" in kinds  # the 60 s ref rotated within the 90 s
                assert events.end is not None and events.end.reason == "timeout"
                assert events.end.status is not None and events.end.status.session == "w"


async def test_watch_cancel_by_client(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir) as d:
            async with AsyncClient(d.socket_path) as wa:
                await wa.connect("c")
                async with wa.watch("c") as events:
                    first = await events.__anext__()
                    assert isinstance(first, Snapshot)
                    await events.aclose()
                    assert await wa.ping()
                while d.manager.hub._subs:  # type: ignore[union-attr]
                    await trio.sleep(0.01)


async def test_watch_all_sessions_and_deleted_end(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir, scripted=FAST_SCAN) as d:
            async with AsyncClient(d.socket_path) as wa:
                await wa.connect("a1")
                await wa.connect("a2")
                async with wa.watch() as everything:
                    snaps = []
                    async for ev in everything:
                        assert isinstance(ev, Snapshot)
                        snaps.append(ev.status.session)
                        if len(snaps) == 2:
                            break
                assert snaps == ["a1", "a2"]
                async with wa.watch("a1") as one:
                    await one.__anext__()
                    await wa.delete("a1")
                    async for _ in one:
                        pass
                assert one.end is not None and one.end.reason == "deleted"


async def test_slow_watcher_does_not_block_others(sock_dir: Path) -> None:
    """A client that never reads its watch stream: once it has fallen behind (its queue
    overflowed), others still get the final state at once."""
    with trio.fail_after(30):
        async with running_daemon(
            sock_dir, qr_debounce=0, watch_qr_interval=0, watch_queue_size=16, scripted=FAST_SCAN
        ) as d:
            stalled = await trio.open_unix_socket(str(d.socket_path))
            proto = ClientProtocol("stalled")
            await stalled.send_all(proto.hello())
            _, data = proto.request("watch", WatchParams(session=None))
            await stalled.send_all(data)
            async with AsyncClient(d.socket_path) as wa:
                await wa.connect("busy")
                await reach(wa, "busy", "waiting_qr")
                # QR traffic fills the stalled socket's buffers; then the state events of
                # new sessions pile up in its queue (16) until the oldest are dropped.
                extra = 0
                while not dropped(d):
                    for _ in range(50):
                        await wa.simulate("busy", "refresh_qr")
                        await trio.lowlevel.checkpoint()
                    await wa.connect(f"x{extra}")
                    extra += 1
                print(f"the stalled watcher dropped events after {extra} more sessions")
                async with wa.watch("busy", until=["connected"]) as events:
                    await wa.simulate("busy", "scan")
                    async for _ in events:
                        pass
                assert events.end is not None and events.end.status.state == State.CONNECTED  # type: ignore[union-attr]
                assert await wa.ping()
            await stalled.aclose()


def dropped(d: Daemon) -> float:
    assert d.manager is not None
    return sum(s.value for s in d.manager.metrics.samples() if s.name == "wa_watch_events_dropped_total")


async def test_out_of_order_replies_on_one_connection(sock_dir: Path) -> None:
    """A slow disconnect and a fast status in flight together: the fast one answers first."""
    with trio.fail_after(20):
        async with running_daemon(sock_dir, scripted={"launch_delay": 2.0}) as d:
            s = await trio.open_unix_socket(str(d.socket_path))
            proto = ClientProtocol("raw")
            await s.send_all(proto.hello())
            connect_id, connect = proto.request("connect", SessionParams("o"))
            await s.send_all(connect)
            # Once connect has answered, the session is launching (2 s): disconnect must wait for it.
            while not isinstance(msg := proto.decoder.next_message(), Reply) or msg.id != connect_id:
                if msg is None:
                    proto.decoder.receive_data(await s.receive_some(65536))
            slow_id, slow = proto.request("disconnect", SessionParams("o"))
            fast_id, fast = proto.request("status", SessionParams("o"))
            await s.send_all(slow + fast)
            replies = []
            while len(replies) < 2:
                msg = proto.decoder.next_message()
                if msg is None:
                    proto.decoder.receive_data(await s.receive_some(65536))
                elif isinstance(msg, Reply):
                    replies.append(msg.id)
            assert replies == [fast_id, slow_id]
            await s.aclose()


async def test_socket_mode_and_stale_socket_and_live_daemon(sock_dir: Path) -> None:
    import socket as pysocket

    path = sock_dir / "d.sock"
    stale = pysocket.socket(pysocket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a crash leaves the file behind
    with trio.fail_after(20):
        async with running_daemon(sock_dir) as d:
            st = os.stat(path)
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
            from wa_daemon.daemon.rpc.listener import AlreadyRunning, bind_unix_socket

            with pytest.raises(AlreadyRunning, match=str(os.getpid())):
                bind_unix_socket(path)
            async with AsyncClient(d.socket_path) as wa:
                assert await wa.ping()  # the first daemon is untouched
    assert not path.exists()  # removed on clean exit


async def test_shutdown_ends_streams_and_answers_inflight(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir, scripted={"launch_delay": 1.0}) as d:
            async with AsyncClient(d.socket_path) as wa:
                await wa.connect("x")
                async with wa.watch("x") as events:
                    await events.__anext__()
                    d.request_stop()
                    async for _ in events:
                        pass
                assert events.end is not None and events.end.reason == "shutdown"
                assert events.end.status is not None and events.end.status.state == State.STOPPED
        assert d.driver.live == {}  # type: ignore[union-attr]


async def _messages(stream: trio.abc.ReceiveStream, proto: ClientProtocol, n: int) -> list[object]:
    """The next ``n`` messages the daemon sends on a raw connection."""
    got: list[object] = []
    while len(got) < n:
        msg = proto.decoder.next_message()
        if msg is None:
            proto.decoder.receive_data(await stream.receive_some(65536))
            continue
        got.append(msg)
    return got


async def test_error_frame_for_unknown_method_keeps_connection(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir) as d:
            s = await trio.open_unix_socket(str(d.socket_path))
            proto = ClientProtocol("raw")
            await s.send_all(proto.hello())
            from wa_daemon.protocol import Request, encode_frame

            await s.send_all(encode_frame(Request(7, "frobnicate")))
            await s.send_all(proto.request("ping", SessionParams("z"))[1])  # wrong params type
            got = await _messages(s, proto, 3)  # welcome, then one answer per request
            by_id = {m.id: m for m in got[1:] if isinstance(m, Error)}  # replies may come out of order
            assert by_id[7].code == "invalid_argument" and "frobnicate" in by_id[7].message
            assert by_id[1].code == "invalid_argument" and "session" in by_id[1].message
            assert not any(isinstance(m, End) for m in got)
            await s.aclose()


_ = QrUpdated  # imported for readers: the event type the stalled watcher never drains


async def test_rpc_lines_mutations_and_failures_at_info_reads_at_debug(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/operations.md: a read that succeeded is an `rpc` line at debug only (it was
    most of a read's cost); everything else, and a slow read, is one at info."""
    from wa_daemon.daemon.rpc import server as server_module

    def lines() -> list[tuple[str, str, str]]:
        return [(e["method"], e["result"], e["log_level"]) for e in logs if e["event"] == "rpc"]

    with trio.fail_after(20), structlog.testing.capture_logs() as logs:
        async with running_daemon(sock_dir) as d:
            assert d.server is not None
            async with AsyncClient(d.socket_path) as wa:
                await wa.connect("l")
                await wa.status("l")
                await wa.list()
                with pytest.raises(NotFound):
                    await wa.status("nobody")
            assert lines() == [("connect", "ok", "info"), ("status", "not_found", "info")]
            logs.clear()
            monkeypatch.setattr(server_module, "SLOW_READ", 0.0)  # every read is slow now
            async with AsyncClient(d.socket_path) as wa:
                await wa.status("l")
            assert lines() == [("status", "ok", "info")]
            monkeypatch.undo()
            logs.clear()
            # With the server component at debug (a reload), reads have their line again.
            d.server.reconfigure(d.config.replace(log_levels={"server": "debug"}))
            async with AsyncClient(d.socket_path) as wa:
                await wa.status("l")
            assert lines() == [("status", "ok", "debug")]


async def test_an_answer_over_max_frame_is_one_internal_error(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A QR payload far larger than the frame limit: the watch's snapshot and the
    # status reply cannot be sent. Each request gets exactly one final message,
    # `internal`, its rpc line says so, and the connection goes on.
    from wa_daemon.daemon.browser import scripted

    monkeypatch.setattr(scripted, "_fake_ref", lambda: "2@" + "x" * 2000)
    with trio.fail_after(20), structlog.testing.capture_logs() as logs:
        async with running_daemon(sock_dir, max_frame=1024) as d:
            async with AsyncClient(d.socket_path) as wa:
                await wa.connect("big")
                while (status := d.manager.peek("big")) is None or status.qr is None:  # type: ignore[union-attr]
                    await trio.sleep(0.01)
                s = await trio.open_unix_socket(str(d.socket_path))
                proto = ClientProtocol("raw")
                await s.send_all(proto.hello())
                await s.send_all(proto.request("watch", WatchParams("big"))[1])
                await s.send_all(proto.request("status", SessionParams("big"))[1])
                got = await _messages(s, proto, 3)  # welcome, then one answer per request
                answers = got[1:]
                assert all(isinstance(m, Error) and m.code == "internal" for m in answers)
                assert sorted(m.id for m in answers) == [1, 2]  # type: ignore[attr-defined]
                with trio.move_on_after(0.5) as quiet:  # nothing else comes: no End after the error
                    extra = await s.receive_some(65536)
                assert quiet.cancelled_caught, f"more after the error: {extra!r}"
                await s.aclose()
                assert await wa.ping()
    rpc = {e["method"]: e["result"] for e in logs if e["event"] == "rpc" and e.get("session") == "big"}
    assert rpc == {"connect": "ok", "watch": "internal", "status": "internal"}
    assert sum(1 for e in logs if e["event"] == "reply_too_large") == 2


async def test_an_error_the_client_made_huge_is_answered_shortened(sock_dir: Path) -> None:
    # An unknown method named with 600 kB: its error quotes the name twice (message and
    # details), over the frame limit. It is still the request's one answer, shortened,
    # and the connection goes on.
    from wa_daemon.protocol import Request, encode_frame

    with trio.fail_after(20):
        async with running_daemon(sock_dir) as d:
            s = await trio.open_unix_socket(str(d.socket_path))
            proto = ClientProtocol("raw")
            await s.send_all(proto.hello())
            await s.send_all(encode_frame(Request(7, "x" * 600_000)))
            await s.send_all(proto.request("ping", NoParams())[1])
            got = await _messages(s, proto, 3)  # welcome, then one answer per request
            by_id = {m.id: m for m in got[1:]}  # type: ignore[attr-defined]  # the ping may answer first
            error, pong = by_id[7], by_id[1]
            assert isinstance(error, Error) and error.code == "invalid_argument"
            assert "shortened" in error.message and len(error.message) < 1000
            assert isinstance(pong, Reply)
            await s.aclose()
