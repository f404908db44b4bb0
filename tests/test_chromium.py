"""Real Chromium against the bundled simulator, through the daemon and its client."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from wa_daemon import AsyncClient, State
from wa_daemon.daemon.app import Daemon
from wa_daemon.daemon.browser.chromium import ChromiumBrowser
from wa_daemon.daemon.browser.process import find_orphans, group_members
from wa_daemon.protocol import QrUpdated, StateChanged
from wa_daemon.sim import SimEngine, SimOptions, serve_simulator

from .helpers import needs_chromium, running_daemon, zombies_of

pytestmark = needs_chromium

# 0.05: the first ref lasts 3 s, the next ones 1 s; loading takes 0.15 s.
SCALE = 0.05


@dataclass
class Rig:
    daemon: Daemon
    engine: SimEngine
    url: str
    wa: AsyncClient
    state: Path

    def browser(self, sid: str) -> ChromiumBrowser:
        return self.daemon.driver.live[sid]  # type: ignore[union-attr, no-any-return]

    def device_of(self, sid: str) -> str:
        devices = self.engine.devices()
        linked = [d for d in devices if d["state"] != "logged_out"]
        assert linked, devices
        return str(linked[-1]["id"])


@asynccontextmanager
async def rig(sock_dir: Path, scale: float = SCALE, **overrides: Any) -> AsyncIterator[Rig]:
    state = sock_dir / "state"
    engine = SimEngine(SimOptions(time_scale=scale))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_simulator, engine.options, engine=engine))
        settings = {"driver": "chromium", "whatsapp_url": url + "/", "state_dir": str(state), **overrides}
        try:
            async with running_daemon(sock_dir, **settings) as daemon, AsyncClient(daemon.socket_path) as wa:
                yield Rig(daemon, engine, url, wa, state)
        finally:
            nursery.cancel_scope.cancel()
    # After every test: no Chromium of this state directory, no zombie of ours.
    assert find_orphans(state / "sessions") == []
    assert zombies_of(os.getpid()) == []


async def reach(wa: AsyncClient, sid: str, *states: str, timeout: float = 30) -> list[Any]:
    seen: list[Any] = []
    async with wa.watch(sid, until=states, timeout=timeout) as events:
        async for ev in events:
            seen.append(ev)
    assert events.end is not None and events.end.reason == "until", (events.end, seen)
    return seen


async def scan(r: Rig, sid: str) -> None:
    qr = await r.wa.qr(sid)
    r.engine.scan(qr.data)


async def link(r: Rig, sid: str) -> None:
    await r.wa.connect(sid)
    await reach(r.wa, sid, "waiting_qr")
    await scan(r, sid)
    await reach(r.wa, sid, "connected")


async def test_full_qr_flow_with_rotation(sock_dir: Path) -> None:
    with trio.fail_after(90):
        async with rig(sock_dir, qr_debounce=0.5, watch_qr_interval=0.5) as r:
            await r.wa.connect("alice")
            async with r.wa.watch("alice", until=["connected"], timeout=60) as events:
                qrs: list[str] = []
                async for ev in events:
                    if isinstance(ev, QrUpdated):
                        qrs.append(ev.qr.data)
                        if len(qrs) == 3:  # the ref rotated twice: scan the latest
                            assert (await r.wa.status("alice")).state == State.WAITING_QR
                            r.engine.scan(ev.qr.data)
            assert len(set(qrs)) == 3 and all(q.startswith("2@") and q.count(",") == 4 for q in qrs)  # five fields
            states = [t.to_state for t in await r.wa.history("alice")]
            assert states == [State.STARTING, State.WAITING_QR, State.AUTHENTICATING, State.CONNECTED]
            assert r.engine.devices()[0]["state"] == "linked"
            assert (r.state / "sessions" / "alice" / "profile").is_dir()


async def test_qr_timeout_after_reload_cycles(sock_dir: Path) -> None:
    # A cycle is 160 simulated s = 3.2 s; the reload button is clicked until the 10 s
    # deadline: three clicks if the browser answers at once, two with 3.6 s to spare.
    with trio.fail_after(60):
        async with rig(sock_dir, scale=0.02, qr_timeout=10) as r:
            await r.wa.connect("slow")
            await reach(r.wa, "slow", "failed", timeout=30)
            st = await r.wa.status("slow")
            assert st.reason == "qr_timeout" and st.qr is None
            assert r.daemon.driver.live == {}  # type: ignore[union-attr]
            # The page issues qr_refs_per_cycle refs, then waits for its reload button:
            # every ref beyond the first cycle's followed a click by the daemon.
            per_cycle = r.engine.options.qr_refs_per_cycle
            issued = r.engine.model.refs_issued
            assert issued > 2 * per_cycle, f"{issued} refs: fewer than 2 reload clicks"


async def test_restart_keeps_the_login(sock_dir: Path) -> None:
    state = sock_dir / "state"
    engine = SimEngine(SimOptions(time_scale=SCALE))
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_simulator, engine.options, engine=engine))
            settings = {"driver": "chromium", "whatsapp_url": url + "/", "state_dir": str(state)}
            async with running_daemon(sock_dir, **settings) as d, AsyncClient(d.socket_path) as wa:
                await wa.connect("keep")
                await reach(wa, "keep", "waiting_qr")
                engine.scan((await wa.qr("keep")).data)
                await reach(wa, "keep", "connected")
            assert find_orphans(state / "sessions") == []
            async with running_daemon(sock_dir, **settings) as d, AsyncClient(d.socket_path) as wa:
                await reach(wa, "keep", "connected")
                states = [t.to_state for t in await wa.history("keep")]
                assert State.WAITING_QR not in states  # no QR: the profile kept the login
                assert (await wa.history("keep"))[0].reason == "restored"
            nursery.cancel_scope.cancel()
    assert find_orphans(state / "sessions") == []


async def test_logout_from_phone_wipes_the_profile(sock_dir: Path) -> None:
    with trio.fail_after(90):
        async with rig(sock_dir, connect_min_interval=0) as r:
            await link(r, "bob")
            r.engine.logout(r.device_of("bob"))
            await reach(r.wa, "bob", "logged_out")
            st = await r.wa.status("bob")
            assert st.reason == "logged_out_by_phone"
            assert not (r.state / "sessions" / "bob" / "profile").exists()
            await r.wa.connect("bob")
            await reach(r.wa, "bob", "waiting_qr")


async def test_logout_requested_unlinks_the_device(sock_dir: Path) -> None:
    with trio.fail_after(90):
        async with rig(sock_dir) as r:
            await link(r, "out")
            device = r.device_of("out")
            st = await r.wa.logout("out")
            assert st.state == State.LOGGED_OUT and st.reason == "logout_requested"
            assert device not in [d["id"] for d in r.engine.devices()]  # unlinked from the page's menu
            assert not (r.state / "sessions" / "out" / "profile").exists()
            reasons = [t.reason for t in await r.wa.history("out")]
            assert "browser_crashed" not in reasons


async def test_conflict_takeover_and_without(sock_dir: Path) -> None:
    with trio.fail_after(90):
        async with rig(sock_dir) as r:
            await link(r, "c1")
            device = r.device_of("c1")
            before = len(await r.wa.history("c1"))
            r.engine.conflict(device)
            assert r.engine.device(device)["state"] == "conflict"
            # The page shows the banner; the driver clicks "Use here": the simulator's
            # device is linked to this page again.
            with trio.fail_after(10):
                while r.engine.device(device)["state"] != "linked":
                    await r.engine.wait_changed()
            assert (await r.wa.status("c1")).state == State.CONNECTED
            assert len(await r.wa.history("c1")) == before  # taken back without a transition
            await r.wa.connect("c2", takeover_on_conflict=False)
            await reach(r.wa, "c2", "waiting_qr")
            await scan(r, "c2")
            await reach(r.wa, "c2", "connected")
            r.engine.conflict(r.device_of("c2"))
            await reach(r.wa, "c2", "failed")
            assert (await r.wa.status("c2")).reason == "conflict"


async def test_phone_offline_and_recovery(sock_dir: Path) -> None:
    with trio.fail_after(90):
        async with rig(sock_dir) as r:
            await link(r, "p")
            device = r.device_of("p")
            r.engine.offline(device)
            with trio.fail_after(10):
                while not (await r.wa.status("p")).phone_offline:
                    await trio.sleep(0.1)
            r.engine.online(device)
            with trio.fail_after(10):
                while (await r.wa.status("p")).phone_offline:
                    await trio.sleep(0.1)
            assert [t.to_state for t in await r.wa.history("p")][-1] == State.CONNECTED


async def test_kill_9_while_connected_and_waiting_qr(sock_dir: Path) -> None:
    with trio.fail_after(120):
        async with rig(sock_dir, reconnect_base_delay=0.5, reconnect_jitter=0) as r:
            await link(r, "k1")
            await r.wa.connect("k2")
            await reach(r.wa, "k2", "waiting_qr")
            other = await r.wa.status("k2")
            # connected: back to connected on the saved login
            victim = r.browser("k1").pid
            os.kill(victim, signal.SIGKILL)
            seen = await reach(r.wa, "k1", "reconnecting")
            await reach(r.wa, "k1", "connected")
            assert group_members(victim) == []
            st = await r.wa.status("k1")
            assert st.attempt == 1 and ("exited" in (st.last_error or "") or "cdp_lost" in (st.last_error or "")), st
            assert any(isinstance(e, StateChanged) for e in seen)
            # waiting for a QR: relaunched, a QR again
            os.kill(r.browser("k2").pid, signal.SIGKILL)
            await reach(r.wa, "k2", "reconnecting")
            await reach(r.wa, "k2", "waiting_qr")
            assert (await r.wa.status("k2")).created_at == other.created_at
            assert (await r.wa.status("k1")).state == State.CONNECTED  # untouched by k2's crash


async def test_kill_9_repeatedly_ends_in_failed(sock_dir: Path) -> None:
    with trio.fail_after(120):
        async with rig(sock_dir, reconnect_base_delay=0.2, reconnect_factor=1, reconnect_jitter=0) as r:
            await link(r, "doomed")
            for _ in range(4):
                await reach(r.wa, "doomed", "connected", "failed")
                if (await r.wa.status("doomed")).state == State.FAILED:
                    break
                os.kill(r.browser("doomed").pid, signal.SIGKILL)
                await reach(r.wa, "doomed", "reconnecting", "failed")
            await reach(r.wa, "doomed", "failed")
            st = await r.wa.status("doomed")
            assert st.reason == "max_reconnects" and st.attempt == 3
            assert r.daemon.driver.live == {}  # type: ignore[union-attr]


async def test_hung_page_is_detected_and_recovered(sock_dir: Path) -> None:
    with trio.fail_after(90):
        async with rig(sock_dir, hang_check_interval=0.5, hang_check_timeout=1, reconnect_base_delay=0.2) as r:
            await link(r, "h")
            r.engine.hang(r.device_of("h"))
            await reach(r.wa, "h", "reconnecting")
            st = await r.wa.status("h")
            assert "hung" in (st.last_error or "")
            await reach(r.wa, "h", "connected")


async def test_network_interruption_is_ridden_out(sock_dir: Path) -> None:
    """The simulator's server goes away for a while and comes back on the same port."""
    engine = SimEngine(SimOptions(time_scale=SCALE))
    state = sock_dir / "state"
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            first = trio.CancelScope()

            async def serve_once(scope: trio.CancelScope, options: SimOptions, *, task_status: Any) -> None:
                with scope:
                    await serve_simulator(options, engine=engine, task_status=task_status)

            url = await nursery.start(serve_once, first, engine.options)
            port = int(url.rsplit(":", 1)[1])
            settings = {"driver": "chromium", "whatsapp_url": url + "/", "state_dir": str(state)}
            async with running_daemon(sock_dir, **settings) as d, AsyncClient(d.socket_path) as wa:
                for sid in ("n1", "n2"):
                    await wa.connect(sid)
                    await reach(wa, sid, "waiting_qr")
                    engine.scan((await wa.qr(sid)).data)
                    await reach(wa, sid, "connected")
                pages = {p["id"] for p in engine.pages()}
                assert len(pages) == 2 and all(p["open"] for p in engine.pages())
                first.cancel()  # the host's network drops: the page loses its server
                # The outage reaches the browsers: the simulator sees both event streams end.
                with trio.fail_after(10):
                    while any(p["open"] for p in engine.pages()):
                        await engine.wait_changed()
                await trio.sleep(4)  # the outage lasts 4 s (shorter than page_grace: the pages survive)
                again = SimOptions(time_scale=SCALE, port=port)
                await nursery.start(serve_once, trio.CancelScope(), again)
                # The same pages reconnect their streams to the new server by themselves.
                with trio.fail_after(30):
                    while {p["id"] for p in engine.pages() if p["open"]} != pages:
                        await engine.wait_changed()
                for sid in ("n1", "n2"):
                    await reach(wa, sid, "connected")
                    history = await wa.history(sid)
                    assert max(t.attempt for t in history) <= 3
            nursery.cancel_scope.cancel()
    assert find_orphans(state / "sessions") == []


def test_sigkill_of_the_daemon_leaves_no_chromium(sock_dir: Path) -> None:
    import subprocess
    import sys
    import time

    from wa_daemon import Client

    from .helpers import DaemonProcess

    state = sock_dir / "state"
    sim = subprocess.Popen(
        [sys.executable, "-m", "wa_daemon.sim.main", "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().strip()
        args = ("--driver", "chromium", "--state-dir", str(state), "--wa-url", url + "/")
        daemon = DaemonProcess(sock_dir / "d.sock", *args)
        try:
            daemon.wait_ready()
            with Client(daemon.sock, timeout=30) as wa:
                for sid in ("a", "b"):
                    wa.connect(sid)
                deadline = time.monotonic() + 30
                while len(find_orphans(state / "sessions")) < 2 and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert find_orphans(state / "sessions")
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait(10)
            deadline = time.monotonic() + 10
            while find_orphans(state / "sessions") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert find_orphans(state / "sessions") == []  # the parent-death signal took them all
        finally:
            daemon.stop()
        # A restart finds stale locks (a leftover of the crash) and clears them, then restores.
        lock = state / "sessions" / "a" / "profile" / "SingletonLock"
        lock.unlink(missing_ok=True)  # SIGKILLed Chromium leaves its own; make it name another host
        os.symlink("otherhost-12345", lock)
        again = DaemonProcess(sock_dir / "d.sock", *args)
        try:
            again.wait_ready()
            with Client(again.sock, timeout=30) as wa:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and any(
                    s.state != State.WAITING_QR for s in wa.list()
                ):
                    time.sleep(0.1)
                assert {s.session: s.state for s in wa.list()} == {"a": State.WAITING_QR, "b": State.WAITING_QR}
        finally:
            assert again.stop() == 0
        assert find_orphans(state / "sessions") == []
    finally:
        sim.terminate()
        sim.wait(10)


async def test_stop_while_sessions_launch_reaps_every_browser(sock_dir: Path) -> None:
    """What SIGTERM starts (tests/test_recovery.py sends the real signal to a daemon
    process): a stop while two browsers launch and two more wait for a launch slot.
    The daemon runs in this process, so a browser it did not reap would stay a
    zombie child of this process: the rig checks there is none, and no Chromium."""
    with trio.fail_after(60):
        async with rig(sock_dir, max_concurrent_launches=2) as r:
            for i in range(4):
                await r.wa.connect(f"term{i}")
            while not find_orphans(r.state / "sessions"):  # a browser process exists: mid-launch
                await trio.sleep(0.02)
            assert (await r.wa.status("term3")).state == State.STARTING
        # (leaving the rig stops the daemon, then checks)


async def test_per_session_url_reaches_the_browser(sock_dir: Path) -> None:
    with trio.fail_after(60):
        async with rig(sock_dir) as r:
            custom = r.url + "/?per-session=1"
            await r.wa.connect("u", whatsapp_url=custom)
            await reach(r.wa, "u", "waiting_qr")
            assert r.browser("u").url == custom
            with pytest.raises(Exception, match="whatsapp_url"):
                await r.wa.connect("v", whatsapp_url="file:///etc/passwd")


async def test_per_session_memory_and_cpu_metrics(sock_dir: Path) -> None:
    with trio.fail_after(90):
        async with rig(sock_dir) as r:
            await link(r, "alice")
            assert r.daemon.monitor is not None
            await r.daemon.monitor.sample()  # the periodic sampler's work, now

            def series(name: str) -> dict[str, float]:
                return {s.labels["session"]: s.value for s in samples if s.name == name}

            samples = (await r.wa.metrics()).samples
            pss, cpu = series("wa_session_memory_pss_bytes"), series("wa_session_cpu_seconds_total")
            processes = series("wa_session_browser_processes")
            # A headless Chromium with WhatsApp's page: browser, renderer, GPU/utility
            # processes, together well over 50 MB of PSS, and some CPU spent loading.
            assert pss["alice"] > 50e6 and processes["alice"] >= 3 and cpu["alice"] > 0, (pss, processes, cpu)
            health = await r.wa.health()
            assert health.healthy and health.checks[1].name == "state_dir", health

            await r.wa.delete("alice")
            await r.daemon.monitor.sample()
            samples = (await r.wa.metrics()).samples
            assert "alice" not in series("wa_session_memory_pss_bytes")  # no series outlives its session


async def test_memory_limit_recycles_the_browser_on_its_saved_login(sock_dir: Path) -> None:
    """A limit below any real Chromium (50 MiB of PSS): once connected, the session's
    browser is closed and relaunched on its profile, and comes back connected
    without a QR; not a crash, no reconnect attempt spent."""
    with trio.fail_after(120):
        async with rig(sock_dir, session_memory_limit=50 << 20, resource_sample_interval=0.5) as r:
            await link(r, "fat")
            first_pid = r.browser("fat").pid
            await reach(r.wa, "fat", "reconnecting")
            # One recycle is enough for this test: lift the limit before the next sample.
            manager = r.daemon.manager
            assert manager is not None
            manager.reconfigure(manager.config.replace(session_memory_limit=None))
            st = await r.wa.status("fat")
            assert st.reason == "memory_limit" and "memory limit" in (st.message or "")
            await reach(r.wa, "fat", "connected")
            assert group_members(first_pid) == []  # the old tree is gone
            trail = [(t.to_state, t.reason) for t in await r.wa.history("fat")]
            assert trail[4:] == [
                (State.RECONNECTING, "memory_limit"),
                (State.AUTHENTICATING, "auth_restored"),
                (State.CONNECTED, "app_loaded"),
            ], trail
            assert (await r.wa.status("fat")).attempt == 0
            assert [d["state"] for d in r.engine.devices()] == ["linked"]  # the same device, no new link
            samples = (await r.wa.metrics()).samples
            recycles = sum(s.value for s in samples if s.name == "wa_session_recycles_total")
            crashes = sum(s.value for s in samples if s.name == "wa_browser_crashes_total")
            assert (recycles, crashes) == (1, 0)
