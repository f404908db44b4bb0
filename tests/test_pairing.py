"""Sessions against what WhatsApp's modules report, under MockClock with the scripted driver:
linking by phone number, refusals, unknown states, the remembered link."""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing

from wa_daemon.daemon.sessions.registry import SessionOptions, SqliteRegistry
from wa_daemon.errors import NotFound
from wa_daemon.protocol import PairingCodeUpdated, Reason, State

from .helpers import make_config, open_manager, wait_state
from .test_manager import invalid_transitions

PHONE = "12025550108"


async def test_link_by_phone_number(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, driver):
        sub, _ = m.subscribe(None, [])
        await m.connect("a", options=SessionOptions(phone_number=PHONE))
        await wait_state(m, "a", State.WAITING_CODE)
        code = m.pairing_code("a")
        assert re.fullmatch(r"[1-9A-HJ-NP-TV-Z]{4}-[1-9A-HJ-NP-TV-Z]{4}", code.code)
        assert code.seq == 1 and (code.expires_at - code.generated_at).total_seconds() == 180
        assert m.status("a").pairing_code == code and m.status("a").qr is None
        assert driver.live["a"].code_phone == PHONE
        with pytest.raises(NotFound):
            m.qr("a")
        driver.simulate("a", "scan")  # the phone took the code
        await wait_state(m, "a", State.CONNECTED)
        assert [(t.to_state, t.reason) for t in m.history("a")][1:] == [
            (State.WAITING_CODE, Reason.CODE_SHOWN.value),
            (State.AUTHENTICATING, Reason.CODE_ENTERED.value),
            (State.CONNECTED, Reason.APP_LOADED.value),
        ]
        assert m.status("a").pairing_code is None and m.status("a").linked
        events = []
        with trio.move_on_after(1):
            while True:
                events.append(await sub.next())
        assert [e.code for e in events if isinstance(e, PairingCodeUpdated)] == [code]
        m.unsubscribe(sub)
        assert invalid_transitions(m) == 0


async def test_codes_renew_then_code_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(pairing_code_max_refreshes=2, pairing_code_timeout=3600) as (m, driver):
        await m.connect("a", options=SessionOptions(phone_number=PHONE))
        await wait_state(m, "a", State.WAITING_CODE)
        seen = [m.pairing_code("a")]
        for _ in range(2):
            with trio.fail_after(200):
                while m.status("a").pairing_code == seen[-1]:
                    await trio.sleep(1)
            seen.append(m.pairing_code("a"))
        assert [c.seq for c in seen] == [1, 2, 3]
        assert len({c.code for c in seen}) == 3
        await wait_state(m, "a", State.FAILED, timeout=400)
        st = m.status("a")
        assert st.reason == Reason.CODE_TIMEOUT.value and "2 new codes" in (st.message or "")
        assert st.pairing_code is None


async def test_code_phase_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(pairing_code_timeout=100) as (m, _):
        await m.connect("a", options=SessionOptions(phone_number=PHONE))
        await wait_state(m, "a", State.WAITING_CODE)
        started = trio.current_time()
        await wait_state(m, "a", State.FAILED)
        assert m.status("a").reason == Reason.CODE_TIMEOUT.value
        assert trio.current_time() - started == pytest.approx(100, abs=1)


async def test_empty_phone_number_goes_back_to_qr(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(connect_min_interval=0) as (m, _):
        await m.connect("a", options=SessionOptions(phone_number=PHONE))
        await wait_state(m, "a", State.WAITING_CODE)
        await m.disconnect("a")
        await m.connect("a", options=SessionOptions(phone_number=""))
        await wait_state(m, "a", State.WAITING_QR)
        assert m.status("a").qr is not None


@pytest.mark.parametrize(
    ("command", "reason", "needle"),
    [("blocked", Reason.BLOCKED, "TOS_BLOCK"), ("deprecated", Reason.WEB_VERSION_DEPRECATED, "DEPRECATED_VERSION")],
)
async def test_refusals_fail_without_retrying(
    autojump_clock: trio.testing.MockClock, command: str, reason: Reason, needle: str
) -> None:
    async with open_manager() as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        driver.simulate("a", "scan")
        await wait_state(m, "a", State.CONNECTED)
        launches = driver.launches
        driver.live["a"].command(command)
        await wait_state(m, "a", State.FAILED)
        st = m.status("a")
        assert st.reason == reason.value and needle in (st.message or "")
        assert st.web_state == needle
        await trio.sleep(600)
        assert driver.launches == launches  # no reconnect loop against a refusal
        assert "a" in driver.authed  # the login is kept: a refusal is not a logout


async def test_unknown_state_is_shown_and_counted_and_changes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        driver.simulate("a", "scan")
        await wait_state(m, "a", State.CONNECTED)
        history = len(m.history("a"))
        driver.live["a"].command("unknown_state")
        with trio.fail_after(5):
            while m.status("a").web_state != "FROBNICATED":
                await trio.sleep(0.1)
        await trio.sleep(600)
        assert m.status("a").state == State.CONNECTED and len(m.history("a")) == history
        counted = [s for s in m.metrics.samples() if s.name == "wa_web_unknown_states_total"]
        assert [(s.labels, s.value) for s in counted] == [({"state": "FROBNICATED"}, 1.0)]


async def test_web_version_in_status_and_metrics(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, _):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        assert m.status("a").web_version == "2.3000.0-scripted"
        info = [s for s in m.metrics.samples() if s.name == "wa_web_version_info"]
        assert [(s.labels, s.value) for s in info] == [({"session": "a", "version": "2.3000.0-scripted"}, 1.0)]


async def test_linked_is_remembered_across_a_restart(autojump_clock: trio.testing.MockClock, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """After a restart, a linked session whose page asks for a login was unlinked
    meanwhile: `logged_out` (`logged_out_by_phone`), not a new QR phase."""
    registry = SqliteRegistry(tmp_path / "r.sqlite3")
    from wa_daemon.daemon.browser.scripted import ScriptedDriver
    from wa_daemon.daemon.sessions.manager import SessionManager

    cfg = make_config()
    async with trio.open_nursery() as nursery:
        driver = ScriptedDriver(cfg.scripted)
        m = SessionManager(cfg, driver, nursery, registry=registry)
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        driver.simulate("a", "scan")
        await wait_state(m, "a", State.CONNECTED)
        await m.shutdown()
        nursery.cancel_scope.cancel()
    assert [r.linked for r in registry.load()] == [True]
    registry.close()

    registry = SqliteRegistry(tmp_path / "r.sqlite3")
    async with trio.open_nursery() as nursery:
        driver = ScriptedDriver(cfg.scripted)  # a fresh driver: the phone unlinked the profile
        m = SessionManager(cfg, driver, nursery, registry=registry)
        assert m.restore() == 1
        assert m.status("a").linked
        await wait_state(m, "a", State.LOGGED_OUT)
        st = m.status("a")
        assert st.reason == Reason.LOGGED_OUT_BY_PHONE.value and not st.linked
        assert [(r.linked, r.should_run) for r in registry.load()] == [(False, False)]
        await m.shutdown()
        nursery.cancel_scope.cancel()
    registry.close()


async def test_a_code_the_page_lets_run_out_early_is_renewed_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(scripted={"pairing_code_ttl": 60}) as (m, _):
        await m.connect("a", options=SessionOptions(phone_number=PHONE))
        await wait_state(m, "a", State.WAITING_CODE)
        first = m.pairing_code("a")
        started = trio.current_time()
        with trio.fail_after(200):
            while m.pairing_code("a") == first:
                await trio.sleep(0.5)
        assert trio.current_time() - started == pytest.approx(60, abs=1)  # the page's 60 s, not our 180 s
        assert m.pairing_code("a").seq == 2
