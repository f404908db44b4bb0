"""Messages benchmark: real Chromium sessions on the simulator, through the daemon.

One process runs the simulator (in-process ``SimEngine``) and the daemon (Chromium
driver, a temporary state directory, ``send_min_interval=0``), links N sessions, then
measures, per session and for all N at once:

* **received**: M messages posted to each session's device at once (the phone side),
  until every one is in the session's inbox (read through ``messages``): messages/s.
* **sent**: M ``send_text`` per session, one after the other within a session, the
  sessions concurrently, until the last reply: messages/s.
* **latency**: one message at a time (K samples, session 1), from the simulator taking
  it to the watching client's ``message`` event; next to it, the floor the page itself
  sets: from the simulator taking it to the page's ``received`` call (the page has it
  in its ``Msg`` collection; the daemon's listener, binding, inbox write and watch fan
  out come after).
* **inbox write**: ``Inbox.add`` on a file in the state directory's file system, alone
  (µs per message, WAL, synchronous=NORMAL).

    python bench/messages.py                 # N = 1 and 10, M = 200, K = 50
    python bench/messages.py --quick         # N = 1 and 3, M = 50, K = 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wa_daemon import AsyncClient, MessageReceived, State
from wa_daemon.daemon.app import Daemon
from wa_daemon.daemon.browser.base import PageMessage
from wa_daemon.daemon.messages.inbox import Inbox
from wa_daemon.daemon.ops.config import from_mapping
from wa_daemon.daemon.ops.log import configure
from wa_daemon.sim import SimEngine, SimOptions, serve_simulator

PEER = "12025550111"


async def link(wa: AsyncClient, engine: SimEngine, sid: str) -> str:
    await wa.connect(sid)
    while True:
        st = await wa.status(sid)
        if st.state == State.CONNECTED:
            break
        if st.state == State.WAITING_QR and st.qr is not None:
            try:
                engine.scan(st.qr.data)
            except Exception:  # the ref rotated meanwhile
                pass
        await trio.sleep(0.05)
    devices = [d for d in engine.devices() if d["page"] is not None]
    return str(devices[-1]["id"])


async def count(wa: AsyncClient, sid: str) -> int:
    n, after = 0, 0
    while True:
        page = await wa.messages(sid, after=after, limit=1000)
        if not page.messages:
            return n
        n += len(page.messages)
        after = page.next


async def received(wa: AsyncClient, engine: SimEngine, devices: dict[str, str], m: int) -> float:
    before = {sid: await count(wa, sid) for sid in devices}
    start = time.perf_counter()
    for device in devices.values():
        for i in range(m):
            engine.incoming(device, PEER, f"load {i}")
    for sid in devices:
        while await count(wa, sid) < before[sid] + m:
            await trio.sleep(0.01)
    return len(devices) * m / (time.perf_counter() - start)


async def sent(wa: AsyncClient, devices: dict[str, str], m: int) -> float:
    async def one(sid: str) -> None:
        for i in range(m):
            await wa.send_text(sid, PEER, f"out {i}")

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for sid in devices:
            nursery.start_soon(one, sid)
    return len(devices) * m / (time.perf_counter() - start)


async def latency(wa: AsyncClient, engine: SimEngine, sid: str, device: str, k: int) -> tuple[list[float], list[float]]:
    page_at: dict[str, float] = {}
    original = engine.received

    def timed(page_id: str, ids: list[str]) -> int:
        for i in ids:
            page_at.setdefault(i, time.perf_counter())
        return original(page_id, ids)

    engine.received = timed  # type: ignore[method-assign]
    ends, floors = [], []
    try:
        async with wa.watch(sid, timeout=600, messages=True) as events:
            for i in range(k):
                t0 = time.perf_counter()
                msg = engine.incoming(device, PEER, f"latency {i}")
                async for ev in events:
                    if isinstance(ev, MessageReceived) and ev.message.id == msg.id:
                        ends.append(time.perf_counter() - t0)
                        break
                while msg.id not in page_at:
                    await trio.sleep(0.001)
                floors.append(page_at[msg.id] - t0)
                await trio.sleep(0.02)
    finally:
        engine.received = original  # type: ignore[method-assign]
    return ends, floors


def inbox_write(directory: Path, n: int) -> float:
    inbox = Inbox(directory / "bench-inbox.sqlite3")
    start = time.perf_counter()
    for i in range(n):
        inbox.add("s", PageMessage(f"id{i}", "c@c.us", "c@c.us", False, "chat", "x" * 80, 1_780_000_000, 1), 0.0)
    took = time.perf_counter() - start
    inbox.close()
    return took / n * 1e6


def ms(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return f"median {statistics.median(values) * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms"


async def run(sizes: list[int], m: int, k: int) -> None:
    with tempfile.TemporaryDirectory(prefix="wa-bench-msg-", dir="/tmp") as tmp:
        root = Path(tmp)
        print(f"inbox write: {inbox_write(root, 2000):.0f} µs per message (Inbox.add, WAL, synchronous=NORMAL)")
        engine = SimEngine(SimOptions(time_scale=0.05))
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_simulator, engine.options, engine=engine))
            config = from_mapping({
                "driver": "chromium", "whatsapp_url": url + "/", "state_dir": str(root / "state"),
                "socket_path": str(root / "d.sock"), "send_min_interval": 0, "log_level": "warning",
                "max_concurrent_launches": 4, "connect_min_interval": 0,
            })
            daemon = Daemon(config)
            await nursery.start(daemon.run)
            async with AsyncClient(daemon.socket_path) as wa:
                devices: dict[str, str] = {}
                for n in sizes:
                    while len(devices) < n:
                        sid = f"s{len(devices) + 1}"
                        devices[sid] = await link(wa, engine, sid)
                    chosen = dict(list(devices.items())[:n])
                    rx = await received(wa, engine, chosen, m)
                    tx = await sent(wa, chosen, m)
                    print(f"N={n:>2}: received {rx:7.0f} msg/s ({rx / n:6.0f} per session), "
                          f"sent {tx:6.0f} msg/s ({tx / n:5.0f} per session), M={m} per session")
                sid, device = next(iter(devices.items()))
                ends, floors = await latency(wa, engine, sid, device, k)
                print(f"latency simulator -> watching client: {ms(ends)} (K={k})")
                print(f"floor   simulator -> page's Msg collection (page's received call): {ms(floors)}")
            daemon.request_stop()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    sizes, m, k = ([1, 3], 50, 20) if args.quick else ([1, 10], 200, 50)
    configure("warning", {})
    trio.run(run, sizes, m, k)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
