"""Load: admission under a storm of connects, and many watchers of one session.

200 concurrent ``connect`` calls for one session launching exactly one browser are
covered by ``test_manager.py::test_200_concurrent_connects_launch_one_browser``
(the manager, MockClock) and ``test_rpc.py::test_idempotent_connect_200_concurrent_over_the_socket``
(over the socket); they are not repeated here.

No wall-clock assertions: latencies are printed, only answers are asserted.
"""

from __future__ import annotations

import socket
import statistics
import time
from collections import Counter
from pathlib import Path

import trio

from wa_daemon import AsyncClient, State
from wa_daemon.errors import LimitExceeded, WaDaemonError
from wa_daemon.protocol import ClientProtocol, End, WatchParams

from .helpers import DaemonProcess


def _daemon(sock_dir: Path, *sets: str) -> DaemonProcess:
    args = ["--driver", "scripted", "--log-level", "warning"]
    for s in sets:
        args += ["--set", s]
    return DaemonProcess(sock_dir / "d.sock", *args)


async def test_1000_connects_admitted_to_the_limit_and_ping_keeps_answering(sock_dir: Path) -> None:
    daemon = _daemon(sock_dir, "max_sessions=500", "scripted.launch_delay=0.01", "max_inflight_per_connection=1000")
    try:
        daemon.wait_ready()
        outcomes: Counter[str] = Counter()
        pings: list[float] = []
        with trio.fail_after(120):
            async with AsyncClient(daemon.sock) as pinger:
                storm_done = trio.Event()

                async def ping_loop() -> None:
                    while not storm_done.is_set():
                        t0 = time.perf_counter()
                        await pinger.ping()
                        pings.append(time.perf_counter() - t0)
                        await trio.sleep(0.005)

                async def caller(ids: range) -> None:
                    async with AsyncClient(daemon.sock) as wa:
                        async def one(i: int) -> None:
                            try:
                                st = await wa.connect(f"s{i:04}")
                                outcomes["admitted" if st.state == State.STARTING else st.state.value] += 1
                            except LimitExceeded:
                                outcomes["limit_exceeded"] += 1
                            except WaDaemonError as exc:
                                outcomes[f"other {exc.code}"] += 1

                        async with trio.open_nursery() as n:
                            for i in ids:
                                n.start_soon(one, i)

                async with trio.open_nursery() as n:
                    n.start_soon(ping_loop)
                    t0 = time.perf_counter()
                    async with trio.open_nursery() as storm:
                        for c in range(20):  # 20 connections, 50 calls in flight on each
                            storm.start_soon(caller, range(c * 50, c * 50 + 50))
                    storm_s = time.perf_counter() - t0
                    storm_done.set()
                async with AsyncClient(daemon.sock) as wa:
                    listed = await wa.list()
        pings.sort()
        print(f"1,000 connects in {storm_s:.2f} s: {dict(outcomes)}; {len(pings)} pings during the storm: "
              f"p50 {statistics.median(pings) * 1e3:.2f} ms, max {pings[-1] * 1e3:.2f} ms")
        assert outcomes == {"admitted": 500, "limit_exceeded": 500}
        assert len(listed) == 500
        assert pings, "no ping was answered during the storm"
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0


async def test_100_watchers_get_the_same_final_state_despite_a_stalled_one(sock_dir: Path) -> None:
    daemon = _daemon(sock_dir, "scripted.launch_delay=0.01", "scripted.auth_delay=0.05", "watch_queue_size=4",
                     "watch_qr_interval=0", "qr_debounce=0", "send_timeout=60", "max_sessions=1000")
    stalled: socket.socket | None = None
    try:
        daemon.wait_ready()
        with trio.fail_after(60):
            async with AsyncClient(daemon.sock) as wa:
                await wa.connect("w")
                # The stalled watcher: follows every session, never reads, tiny receive buffer.
                stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
                stalled.connect(str(daemon.sock))
                proto = ClientProtocol("stalled")
                stalled.sendall(proto.hello() + proto.request("watch", WatchParams(session=None, timeout=3600))[1])

                results: dict[int, tuple[list[str], End | None]] = {}
                ready = trio.CapacityLimiter(1000)
                started = [0]

                async def watcher(n: int) -> None:
                    async with ready, AsyncClient(daemon.sock) as c:
                        states: list[str] = []
                        async with c.watch("w", until=["connected"], timeout=60) as events:
                            started[0] += 1
                            async for ev in events:
                                status = getattr(ev, "status", None)
                                if status is not None:
                                    states.append(status.state.value)
                        results[n] = (states, events.end)

                async with trio.open_nursery() as n:
                    for i in range(100):
                        n.start_soon(watcher, i)
                    while started[0] < 100:
                        await trio.sleep(0.01)
                    # Churn for the stalled watcher: 300 sessions start, each a few events.
                    for i in range(300):
                        await wa.connect(f"churn{i}")
                    while (await wa.status("w")).state != State.WAITING_QR:
                        await trio.sleep(0.01)
                    await wa.simulate("w", "scan")
                final = await wa.status("w")
                dropped = sum(s.value for s in (await wa.metrics()).samples
                              if s.name == "wa_watch_events_dropped_total")
                conns = sum(s.value for s in (await wa.metrics()).samples if s.name == "wa_rpc_connections")
        assert len(results) == 100
        ends = {(e.reason, e.status.state if e.status else None) for _, e in results.values() if e}
        assert ends == {("until", State.CONNECTED)}
        assert {tuple(s[-1:]) for s, _ in results.values()} == {("connected",)}
        assert final.state == State.CONNECTED
        # The stalled watcher really stalled (its queue overflowed) and is still connected:
        # the 100 others finished without waiting for it or for its send timeout.
        print(f"100 watchers done; stalled watcher dropped {dropped:g} events; connections open {conns:g}")
        assert dropped > 0
        assert conns >= 2  # this client and the stalled one
    finally:
        if stalled is not None:
            stalled.close()
        assert daemon.stop() == 0
