"""Real Chromium against the simulator's model of the real WhatsApp Web page: its WAWeb*
modules, the startup splash, pairing codes, WhatsApp's own states, another language,
the legacy page through the DOM fallback, and the probe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from wa_daemon import AsyncClient, NotFound, PairingCodeUpdated, State
from wa_daemon.daemon.app import Daemon
from wa_daemon.errors import InvalidArgument
from wa_daemon.sim import SimEngine, SimOptions, serve_simulator
from wa_daemon.sim.records import SimError

from .helpers import needs_chromium, running_daemon
from .test_chromium import SCALE, reach

pytestmark = needs_chromium

PHONE = "12025550108"


@dataclass
class Page:
    daemon: Daemon
    engine: SimEngine
    url: str
    wa: AsyncClient


@asynccontextmanager
async def page_rig(sock_dir: Path, sim: dict[str, Any] | None = None, **overrides: Any) -> AsyncIterator[Page]:
    engine = SimEngine(SimOptions(**{"time_scale": SCALE, **(sim or {})}))
    state = sock_dir / "state"
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_simulator, engine.options, engine=engine))
        settings = {"driver": "chromium", "whatsapp_url": url + "/", "state_dir": str(state), **overrides}
        try:
            async with running_daemon(sock_dir, **settings) as daemon, AsyncClient(daemon.socket_path) as wa:
                yield Page(daemon, engine, url, wa)
        finally:
            nursery.cancel_scope.cancel()


def page_of(p: Page, sid: str) -> str:
    """The simulator page the session's browser shows (the last one opened)."""
    pages = p.engine.pages()
    assert pages, "no page"
    return str(pages[-1]["id"])


async def test_fresh_profile_goes_to_waiting_qr_with_a_five_field_qr(sock_dir: Path) -> None:
    with trio.fail_after(60):
        async with page_rig(sock_dir) as p:
            await p.wa.connect("a")
            await reach(p.wa, "a", "waiting_qr")
            st = await p.wa.status("a")
            # The startup splash (<progress> in #wa_web_initial_startup) is never loading.
            assert [t.to_state for t in await p.wa.history("a")] == [State.STARTING, State.WAITING_QR]
            assert st.qr is not None
            fields = st.qr.data.split(",")
            assert len(fields) == 5 and fields[0].startswith("2@") and fields[4] == "WEB"
            assert st.web_state == "UNPAIRED" and st.web_version == p.engine.options.web_version
            p.engine.scan(st.qr.data)
            await reach(p.wa, "a", "connected")
            assert (await p.wa.status("a")).linked


async def test_link_by_pairing_code_wrong_code_refused(sock_dir: Path) -> None:
    with trio.fail_after(60):
        async with page_rig(sock_dir) as p:
            await p.wa.connect("a", phone_number=PHONE)
            events = await reach(p.wa, "a", "waiting_code")
            code = (await p.wa.pairing_code("a")).code
            assert len(code) == 9 and code[4] == "-"
            assert events[-1].status.pairing_code.code == code
            with pytest.raises(NotFound):
                await p.wa.qr("a")
            with pytest.raises(SimError):  # the phone types a wrong code: refused, the page stays unpaired
                p.engine.pair(PHONE, "AAAA-AAAA" if code != "AAAA-AAAA" else "BBBB-BBBB")
            with pytest.raises(SimError):  # the right code for another number
                p.engine.pair("4915112345678", code)
            assert (await p.wa.status("a")).state == State.WAITING_CODE
            p.engine.pair(PHONE, code.replace("-", "").lower())
            await reach(p.wa, "a", "connected")
            assert [(t.to_state, t.reason) for t in await p.wa.history("a")][1:] == [
                (State.WAITING_CODE, "code_shown"),
                (State.AUTHENTICATING, "code_entered"),
                (State.CONNECTED, "app_loaded"),
            ]


async def test_pairing_codes_renew_and_time_out(sock_dir: Path) -> None:
    # The page's code lives 180 simulated s = 1.8 s at this scale; two renewals allowed.
    with trio.fail_after(60):
        async with page_rig(sock_dir, sim={"time_scale": 0.01}, pairing_code_max_refreshes=2) as p:
            await p.wa.connect("a", phone_number=PHONE)
            seqs: list[int] = []
            async with p.wa.watch("a", until=["failed", "connected"], timeout=40) as events:
                async for ev in events:
                    if isinstance(ev, PairingCodeUpdated):
                        seqs.append(ev.code.seq)
            st = await p.wa.status("a")
            assert st.state == State.FAILED and st.reason == "code_timeout", st
            assert seqs[-1] == 3 and sorted(set(seqs)) == [1, 2, 3]


async def test_phone_number_is_validated(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with page_rig(sock_dir) as p:
            for bad in ("+12025550108", "123", "1202555010812345", "12 025"):
                with pytest.raises(InvalidArgument):
                    await p.wa.connect("a", phone_number=bad)
            assert p.daemon.driver.launches == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("forced", "reason"),
    [("TOS_BLOCK", "blocked"), ("PROXYBLOCK", "blocked"), ("DEPRECATED_VERSION", "web_version_deprecated")],
)
async def test_whatsapp_refusals_fail_the_session(sock_dir: Path, forced: str, reason: str) -> None:
    with trio.fail_after(60):
        async with page_rig(sock_dir) as p:
            await p.wa.connect("a")
            await reach(p.wa, "a", "waiting_qr")
            p.engine.force_state(page_of(p, "a"), forced)
            await reach(p.wa, "a", "failed")
            st = await p.wa.status("a")
            assert st.reason == reason and forced in (st.message or "") and st.web_state == forced
            assert p.daemon.driver.live == {}  # type: ignore[union-attr]


async def test_unknown_state_changes_nothing(sock_dir: Path) -> None:
    with trio.fail_after(60):
        async with page_rig(sock_dir) as p:
            await p.wa.connect("a")
            await reach(p.wa, "a", "waiting_qr")
            p.engine.scan((await p.wa.qr("a")).data)
            await reach(p.wa, "a", "connected")
            history = await p.wa.history("a")
            p.engine.force_state(page_of(p, "a"), "FROBNICATED")
            while (await p.wa.status("a")).web_state != "FROBNICATED":
                await trio.sleep(0.05)
            counted = [
                s for s in (await p.wa.metrics()).samples
                if s.name == "wa_web_unknown_states_total" and s.labels == {"state": "FROBNICATED"}
            ]
            assert [s.value for s in counted] == [1.0]
            p.engine.force_state(page_of(p, "a"), None)
            while (await p.wa.status("a")).web_state != "CONNECTED":
                await trio.sleep(0.05)
            st = await p.wa.status("a")
            assert st.state == State.CONNECTED and await p.wa.history("a") == history


async def test_a_page_in_german_works(sock_dir: Path) -> None:
    with trio.fail_after(60):
        async with page_rig(sock_dir, sim={"locale": "de"}) as p:
            await p.wa.connect("a")
            await reach(p.wa, "a", "waiting_qr")
            html = await trio.to_thread.run_sync(lambda: urllib.request.urlopen(p.url + "/", timeout=10).read())
            assert b'lang="de"' in html  # what the page draws is German (tests/test_sim.py reads it in Chromium)
            p.engine.scan((await p.wa.qr("a")).data)
            await reach(p.wa, "a", "connected")
            await p.wa.connect("b", takeover_on_conflict=True)
            await reach(p.wa, "b", "waiting_qr")
            p.engine.scan((await p.wa.qr("b")).data)
            await reach(p.wa, "b", "connected")
            devices = {d["page"]: d["id"] for d in p.engine.devices()}
            p.engine.conflict(devices[page_of(p, "b")])  # taken back with Socket.takeover(), no text read
            while p.engine.device(devices[page_of(p, "b")])["state"] != "linked":
                await trio.sleep(0.05)
            assert (await p.wa.status("b")).state == State.CONNECTED
            st = await p.wa.logout("a")  # Socket.logout(): the simulator's device is gone
            assert st.reason == "logout_requested" and "not confirm" not in (st.message or "")
            assert len(p.engine.devices()) == 1


async def test_legacy_page_through_the_dom_fallback(sock_dir: Path) -> None:
    with trio.fail_after(60):
        async with page_rig(sock_dir, sim={"page": "legacy"}) as p:
            await p.wa.connect("a")
            await reach(p.wa, "a", "waiting_qr")
            p.engine.scan((await p.wa.qr("a")).data)
            await reach(p.wa, "a", "connected")
            assert [t.to_state for t in await p.wa.history("a")] == [
                State.STARTING, State.WAITING_QR, State.AUTHENTICATING, State.CONNECTED
            ]
            assert (await p.wa.status("a")).web_state is None


async def test_a_page_without_modules_fails_its_launch_naming_them(sock_dir: Path) -> None:
    with trio.fail_after(60):
        async with page_rig(sock_dir, sim={"drop_modules": ("WAWebSocketModel",)}, launch_timeout=4) as p:
            await p.wa.connect("a")
            await reach(p.wa, "a", "failed")
            st = await p.wa.status("a")
            assert st.reason == "launch_error" and "WAWebSocketModel.Socket" in (st.message or ""), st
            assert [t.to_state for t in await p.wa.history("a")] == [State.STARTING, State.FAILED]


async def test_a_linked_session_unlinked_while_the_daemon_was_down_is_logged_out(sock_dir: Path) -> None:
    engine = SimEngine(SimOptions(time_scale=SCALE))
    state = sock_dir / "state"
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_simulator, engine.options, engine=engine))
            settings = {"driver": "chromium", "whatsapp_url": url + "/", "state_dir": str(state)}
            async with running_daemon(sock_dir, **settings) as d, AsyncClient(d.socket_path) as wa:
                await wa.connect("a")
                await reach(wa, "a", "waiting_qr")
                engine.scan((await wa.qr("a")).data)
                await reach(wa, "a", "connected")
            engine.logout(engine.devices()[0]["id"])  # the phone unlinks it while no daemon runs
            async with running_daemon(sock_dir, **settings) as d, AsyncClient(d.socket_path) as wa:
                assert (await wa.status("a")).linked
                await reach(wa, "a", "logged_out")
                st = await wa.status("a")
                assert st.reason == "logged_out_by_phone" and not st.linked
                assert State.WAITING_QR not in [t.to_state for t in await wa.history("a")]
            nursery.cancel_scope.cancel()


def _probe(url: str, *extra: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "wa_daemon.daemon.main", "probe", "--config", os.devnull, "--url", url, "--json",
         "--timeout", "15", *extra],
        capture_output=True, text=True, timeout=90,
    )
    return out.returncode, json.loads(out.stdout)


async def test_probe_passes_on_the_simulator_and_names_what_is_missing(sock_dir: Path) -> None:
    with trio.fail_after(200):
        for sim, expect_missing in (
            ({}, []),
            ({"drop_modules": ("WAWebAltDeviceLinkingApi", "WAWebNetworkStatus")}, ["WAWebAltDeviceLinkingApi"]),
            ({"page": "legacy"}, ["window.require", "WAWebSocketModel.Socket"]),
        ):
            engine = SimEngine(SimOptions(time_scale=SCALE, **sim))  # type: ignore[arg-type]
            async with trio.open_nursery() as nursery:
                url = await nursery.start(partial(serve_simulator, engine.options, engine=engine))
                code, report = await trio.to_thread.run_sync(_probe, url + "/")
                nursery.cancel_scope.cancel()
            assert (code == 0) is (not expect_missing), (sim, report)
            assert set(expect_missing) <= set(report["missing"]), (sim, report["missing"])
            if not expect_missing:
                assert report["web_version"] == engine.options.web_version and report["web_state"] == "UNPAIRED"
                assert report["missing"] == []
            qr = next(i for i in report["items"] if i["item"] == "QR payload")
            assert "2@" not in json.dumps(report)  # the QR payload itself is never printed
            assert qr["found"] is (not sim.get("page"))


async def test_a_pinned_web_version_is_served_from_the_cache(sock_dir: Path) -> None:
    """The cache fills from a connected session; a later page gets the pinned shell even
    where the server now serves another version (its Debug.VERSION is the pinned one)."""
    old, new = "2.3000.1111111111", "2.3000.2222222222"
    engines = [SimEngine(SimOptions(time_scale=SCALE, web_version=v)) for v in (old, new)]
    state = sock_dir / "state"
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            urls = [await nursery.start(partial(serve_simulator, e.options, engine=e)) + "/" for e in engines]
            settings = {"driver": "chromium", "whatsapp_url": urls[0], "state_dir": str(state), "web_version": old}
            async with running_daemon(sock_dir, **settings) as d, AsyncClient(d.socket_path) as wa:
                await wa.connect("a")
                await reach(wa, "a", "waiting_qr")
                engines[0].scan((await wa.qr("a")).data)
                await reach(wa, "a", "connected")
                cached = state / "web-cache" / f"{old}.html"
                while not cached.exists():
                    await trio.sleep(0.05)
                assert cached.stat().st_mode & 0o777 == 0o600
                await wa.connect("b", whatsapp_url=urls[1])  # this server now serves `new`
                await reach(wa, "b", "waiting_qr")
                assert (await wa.status("b")).web_version == old
                engines[1].scan((await wa.qr("b")).data)  # the pinned shell still runs the server's login
                await reach(wa, "b", "connected")
            nursery.cancel_scope.cancel()
