"""The session manager and session actor under MockClock: every number of the issue."""

from __future__ import annotations

from contextlib import asynccontextmanager

import msgspec
import pytest
import structlog
import trio
import trio.testing

from wa_daemon.daemon.sessions import states
from wa_daemon.daemon.sessions.hub import StreamEnd
from wa_daemon.errors import LimitExceeded, NotFound, RateLimited
from wa_daemon.protocol import QrUpdated, Reason, SessionStatus, State, StateChanged

from .helpers import open_manager, wait_state


def before_open(driver, hook) -> None:  # type: ignore[no-untyped-def]
    """Call ``hook(options)`` as each browser is opened (it may raise, as a broken driver would)."""
    real_open = driver.open

    def spying_open(options):  # type: ignore[no-untyped-def]
        hook(options)
        return real_open(options)

    driver.open = spying_open


def invalid_transitions(manager) -> float:  # type: ignore[no-untyped-def]
    return sum(
        s.value for s in manager.metrics.samples() if s.name == "wa_invalid_transitions_total"
    )


async def test_connect_reaches_waiting_qr_then_connected_on_scan(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, driver):
        st = await m.connect("alice")
        assert st.state == State.STARTING
        await wait_state(m, "alice", State.WAITING_QR)
        assert m.status("alice").qr is not None
        driver.simulate("alice", "scan")
        await wait_state(m, "alice", State.CONNECTED)
        assert [t.to_state for t in m.history("alice")] == [
            State.STARTING,
            State.WAITING_QR,
            State.AUTHENTICATING,
            State.CONNECTED,
        ]
        assert m.status("alice").qr is None  # dropped on leaving waiting_qr


async def test_qr_refresh_is_an_event_not_a_transition(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        seqs = []
        for _ in range(10):
            driver.simulate("a", "refresh_qr")
            await trio.sleep(1)
            seqs.append(m.status("a").qr.seq)  # type: ignore[union-attr]
        assert seqs == list(range(2, 12))
        waiting = [t for t in m.history("a") if t.to_state == State.WAITING_QR]
        assert len(waiting) == 1
        assert invalid_transitions(m) == 0


async def test_invalid_transition_is_logged_counted_and_fails_the_session(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine bug that takes an edge its tables refuse raises in the runner: logged,
    counted, and the session ends failed (internal_error) with its browser closed."""
    monkeypatch.setitem(states.EVENT_EDGES, "AppShown", {})  # the bug: AppShown may not go anywhere
    with structlog.testing.capture_logs() as logs:
        async with open_manager() as (m, driver):
            await m.connect("a")
            await wait_state(m, "a", State.WAITING_QR)
            driver.simulate("a", "scan")
            await wait_state(m, "a", State.FAILED)
            st = m.status("a")
            assert st.reason == Reason.INTERNAL_ERROR.value and "IllegalTransition" in (st.last_error or "")
            assert invalid_transitions(m) == 1
            assert driver.live == {}
    bad = [(e["from_state"], e["to_state"], e["trigger"]) for e in logs if e["event"] == "invalid_transition"]
    assert bad == [("authenticating", "connected", "AppShown")]


async def test_history_keeps_last_100_with_timestamp_reason_attempt(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(connect_min_interval=0, history_size=100) as (m, driver):
        for _ in range(30):
            await m.connect("a")
            await wait_state(m, "a", State.WAITING_QR)
            driver.simulate("a", "scan")
            await wait_state(m, "a", State.CONNECTED)
            await m.logout("a")
        history = m.history("a")
        assert len(history) == 100
        assert history[-1].to_state == State.LOGGED_OUT
        assert all(t.at.tzinfo is not None and t.at.utcoffset().total_seconds() == 0 for t in history)  # type: ignore[union-attr]
        assert history[-1].reason == Reason.LOGOUT_REQUESTED.value
        assert len(m.history("a", limit=5)) == 5


async def test_200_concurrent_connects_launch_one_browser(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, driver):
        results = []

        async def one() -> None:
            results.append(await m.connect("a"))

        async with trio.open_nursery() as n:
            for _ in range(200):
                n.start_soon(one)
        assert driver.launches == 1
        assert len(results) == 200
        assert {r.state for r in results} == {State.STARTING}
        await wait_state(m, "a", State.WAITING_QR)
        # connect while active: same session, no new attempt, latest QR returned
        st = await m.connect("a")
        assert st.qr is not None and st.qr == m.status("a").qr
        assert driver.launches == 1


async def test_rate_limit_once_per_5s_with_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, driver):
        await m.connect("a")
        t0 = trio.current_time()
        await wait_state(m, "a", State.WAITING_QR)
        await m.disconnect("a")
        await trio.sleep(1.5)
        with pytest.raises(RateLimited) as info:
            await m.connect("a")
        assert info.value.retry_after == pytest.approx(5 - (trio.current_time() - t0), abs=0.01)
        await trio.sleep(info.value.retry_after)
        st = await m.connect("a")
        assert st.state == State.STARTING
        await wait_state(m, "a", State.WAITING_QR)
        assert driver.launches == 2
        rl = [s for s in m.metrics.samples() if s.name == "wa_rate_limited_total"]
        assert rl[0].value == 1


async def test_delete_does_not_reset_the_rate_limit(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, _):
        await m.connect("a")
        await m.delete("a")
        with pytest.raises(RateLimited):
            await m.connect("a")
        await trio.sleep(5)
        assert (await m.connect("a")).state == State.STARTING


async def test_max_sessions_limit(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(max_sessions=3) as (m, _):
        for sid in "abc":
            await m.connect(sid)
        with pytest.raises(LimitExceeded):
            await m.connect("d")
        await m.delete("a")
        await m.connect("d")
        with pytest.raises(NotFound):
            m.status("a")


async def test_launches_limited_and_queued_in_order(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(max_concurrent_launches=2, scripted={"launch_delay": 3}) as (m, driver):
        active = peak = 0
        order: list[str] = []
        real_open = driver.open

        @asynccontextmanager
        async def counting_open(options):  # type: ignore[no-untyped-def]
            nonlocal active, peak
            order.append(options.session_id)
            active += 1
            peak = max(peak, active)
            try:
                cm = real_open(options)
                browser = await cm.__aenter__()
            finally:
                active -= 1  # launched (or not): the launch slot is free again
            try:
                yield browser
            finally:
                await cm.__aexit__(None, None, None)

        driver.open = counting_open  # type: ignore[method-assign]
        ids = [f"s{i}" for i in range(7)]
        for sid in ids:
            await m.connect(sid)
            await trio.sleep(0.01)
        t0 = trio.current_time()
        for sid in ids:
            await wait_state(m, sid, State.WAITING_QR)
        assert peak == 2
        assert order == ids
        # 7 launches of 3 s, two at a time: four rounds
        assert trio.current_time() - t0 == pytest.approx(12, abs=0.2)


async def test_qr_events_debounced_trailing_edge_latest_delivered(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(qr_debounce=2.0) as (m, driver):
        await m.connect("a")
        sub, _ = m.subscribe("a", [])
        got: list[tuple[float, str]] = []

        async def collect() -> None:
            while True:
                ev = await sub.next()
                if isinstance(ev, QrUpdated):
                    got.append((trio.current_time(), ev.qr.data))

        async with trio.open_nursery() as n:
            n.start_soon(collect)
            await wait_state(m, "a", State.WAITING_QR)
            t_first = trio.current_time()
            for _ in range(4):  # a burst: five QRs inside one second
                await trio.sleep(0.2)
                driver.simulate("a", "refresh_qr")
            await trio.sleep(0.1)
            latest = m.status("a").qr.data  # type: ignore[union-attr]
            await trio.sleep(5)
            n.cancel_scope.cancel()
        assert len(got) == 1
        assert got[0][1] == latest
        assert got[0][0] == pytest.approx(t_first + 2.0, abs=0.05)
        produced = {s.name: s.value for s in m.metrics.samples()}
        assert produced["wa_qr_generated_total"] == 5
        assert produced["wa_qr_events_total"] == 1


async def test_qr_events_at_most_one_per_2s_under_steady_refresh(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(qr_debounce=2.0, watch_qr_interval=0) as (m, driver):
        await m.connect("a")
        sub, _ = m.subscribe("a", [])
        times: list[float] = []

        async def collect() -> None:
            while True:
                ev = await sub.next()
                if isinstance(ev, QrUpdated):
                    times.append(trio.current_time())

        async with trio.open_nursery() as n:
            n.start_soon(collect)
            await wait_state(m, "a", State.WAITING_QR)
            for _ in range(40):
                await trio.sleep(0.5)
                driver.simulate("a", "refresh_qr")
            await trio.sleep(3)
            n.cancel_scope.cancel()
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert len(times) >= 9
        assert min(gaps) >= 2.0 - 1e-6


async def test_qr_phase_times_out_after_3_minutes(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        t0 = trio.current_time()
        await wait_state(m, "a", State.FAILED)
        st = m.status("a")
        assert st.reason == Reason.QR_TIMEOUT.value
        assert trio.current_time() - t0 == pytest.approx(180, abs=0.1)
        assert st.qr is None
        assert driver.live == {}  # the browser was closed
        # the scripted page ran one full cycle (6 refs in 160 s) and the reload button was clicked
        assert m.history("a")[-1].from_state == State.WAITING_QR


async def test_qr_phase_ends_after_configured_refreshes(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(qr_max_refreshes=3) as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        t0 = trio.current_time()
        await wait_state(m, "a", State.FAILED)
        assert m.status("a").reason == Reason.QR_TIMEOUT.value
        # first ref 60 s, then 20 s each: the 4th refresh comes at 60 + 3*20
        assert trio.current_time() - t0 == pytest.approx(120, abs=0.1)


async def test_reload_button_cycles_count_against_the_qr_limit(autojump_clock: trio.testing.MockClock) -> None:
    cycle = {"first_qr_ttl": 10, "qr_ttl": 5, "qr_refs_per_cycle": 2}
    async with open_manager(qr_timeout=3600, qr_max_refreshes=4, scripted=cycle) as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        await wait_state(m, "a", State.FAILED)
        browser_refs = m.status("a")
        assert browser_refs.reason == Reason.QR_TIMEOUT.value
        # cycle 1: refs at 0, 10; reload at 15 -> cycle 2: 15, 25; reload at 30 -> cycle 3: 30 (4th refresh)
        assert "refreshes" in (browser_refs.message or "")


async def test_reconnect_backoff_5_15_45_then_failed(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(reconnect_jitter=0) as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        driver.simulate("a", "scan")
        await wait_state(m, "a", State.CONNECTED)
        launch_times: list[float] = []
        before_open(driver, lambda options: launch_times.append(trio.current_time()))
        crash_times = []
        for expected_attempt in (1, 2, 3):
            crash_times.append(trio.current_time())
            driver.simulate("a", "crash")
            await wait_state(m, "a", State.RECONNECTING)
            assert m.status("a").attempt == expected_attempt
            await wait_state(m, "a", State.CONNECTED)  # auth kept: no QR
        delays = [lt - ct for ct, lt in zip(crash_times, launch_times, strict=False)]
        assert delays == pytest.approx([5, 15, 45], abs=0.05)
        driver.simulate("a", "crash")
        await wait_state(m, "a", State.FAILED)
        st = m.status("a")
        assert st.reason == Reason.MAX_RECONNECTS.value
        assert "crashed" in (st.last_error or "")
        assert driver.live == {}
        reconnects = [s.value for s in m.metrics.samples() if s.name == "wa_reconnects_total"]
        assert reconnects == [3]


async def test_backoff_jitter_stays_within_bounds(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(reconnect_jitter=0.2) as (m, _):
        machine = await m.connect("a") and m._sessions["a"].machine
        for attempt, base in ((1, 5), (2, 15), (3, 45), (10, 300)):
            for _ in range(50):
                assert base * 0.8 <= machine.backoff(attempt) <= min(base * 1.2, 300)


async def test_reconnect_counter_resets_after_10_minutes_connected(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(reconnect_jitter=0) as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        driver.simulate("a", "scan")
        await wait_state(m, "a", State.CONNECTED)
        for _ in range(2):
            driver.simulate("a", "crash")
            await wait_state(m, "a", State.RECONNECTING)
            await wait_state(m, "a", State.CONNECTED)
        assert m.status("a").attempt == 2
        await trio.sleep(601)
        driver.simulate("a", "crash")
        await wait_state(m, "a", State.RECONNECTING)
        assert m.status("a").attempt == 1


async def test_crash_while_waiting_qr_is_bounded_too(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(reconnect_jitter=0) as (m, driver):
        await m.connect("a")
        for _ in range(4):
            await wait_state(m, "a", State.WAITING_QR, State.FAILED)
            if m.status("a").state == State.FAILED:
                break
            driver.simulate("a", "crash")
            await wait_state(m, "a", State.RECONNECTING, State.FAILED)
        await wait_state(m, "a", State.FAILED)
        assert m.status("a").reason == Reason.MAX_RECONNECTS.value
        assert driver.launches == 4  # the first launch and three reconnects


async def test_launch_error_fails_with_reason_and_last_error(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(scripted={"fail_launch": True}) as (m, _):
        await m.connect("a")
        await wait_state(m, "a", State.FAILED)
        st = m.status("a")
        assert st.reason == Reason.LAUNCH_ERROR.value
        assert st.last_error and "scripted launch failure" in st.last_error


async def test_logout_from_phone_wipes_auth_and_next_connect_shows_qr(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(connect_min_interval=0) as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        driver.simulate("a", "scan")
        await wait_state(m, "a", State.CONNECTED)
        assert "a" in driver.authed
        driver.simulate("a", "logout")
        await wait_state(m, "a", State.LOGGED_OUT)
        assert m.status("a").reason == Reason.LOGGED_OUT_BY_PHONE.value
        assert "a" not in driver.authed and driver.live == {}
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)


async def test_disconnect_keeps_auth_logout_wipes_it(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(connect_min_interval=0) as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        driver.simulate("a", "scan")
        await wait_state(m, "a", State.CONNECTED)
        st = await m.disconnect("a")
        assert st.state == State.STOPPED and driver.live == {}
        await m.connect("a")
        await wait_state(m, "a", State.CONNECTED)  # straight back, no QR
        assert State.WAITING_QR not in [t.to_state for t in m.history("a")[-3:]]
        st = await m.logout("a")
        assert st.state == State.LOGGED_OUT and st.reason == Reason.LOGOUT_REQUESTED.value
        assert "a" not in driver.authed and driver.live == {}


async def test_conflict_takeover_and_without(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        driver.simulate("a", "scan")
        await wait_state(m, "a", State.CONNECTED)
        taken_over = trio.Event()
        page = driver.live["a"]
        real_take_over = page.take_over

        async def spy() -> None:
            taken_over.set()
            await real_take_over()

        page.take_over = spy  # type: ignore[method-assign]
        before = len(m.history("a"))
        driver.simulate("a", "conflict")
        with trio.fail_after(5):  # "Use here" is clicked at once, not after a timeout
            await taken_over.wait()
        # Taken back without a transition: the session never left connected.
        assert len(m.history("a")) == before and m.status("a").state == State.CONNECTED
    async with open_manager(takeover_on_conflict=False) as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        driver.simulate("a", "scan")
        await wait_state(m, "a", State.CONNECTED)
        driver.simulate("a", "conflict")
        await wait_state(m, "a", State.FAILED)
        assert m.status("a").reason == Reason.CONFLICT.value


async def test_phone_offline_is_a_flag_not_a_state(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        driver.simulate("a", "scan")
        await wait_state(m, "a", State.CONNECTED)
        driver.simulate("a", "offline")
        await trio.sleep(0.1)
        assert m.status("a").phone_offline and m.status("a").state == State.CONNECTED
        driver.simulate("a", "online")
        await trio.sleep(0.1)
        assert not m.status("a").phone_offline


async def test_long_phone_outage_reconnects_after_grace(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(phone_offline_grace=120, reconnect_jitter=0) as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        driver.simulate("a", "scan")
        await wait_state(m, "a", State.CONNECTED)
        driver.simulate("a", "offline")
        await trio.sleep(119)
        assert m.status("a").state == State.CONNECTED and m.status("a").phone_offline
        await trio.sleep(2)
        st = m.status("a")
        assert st.state == State.RECONNECTING and st.reason == Reason.CONNECTION_LOST.value
        await wait_state(m, "a", State.CONNECTED)
        assert not m.status("a").phone_offline


async def test_connect_options_are_remembered(autojump_clock: trio.testing.MockClock) -> None:
    from wa_daemon.daemon.sessions.registry import SessionOptions

    async with open_manager(connect_min_interval=0) as (m, driver):
        seen = []
        before_open(driver, lambda options: seen.append(options.url))
        await m.connect("a", options=SessionOptions(whatsapp_url="http://127.0.0.1:9/", takeover_on_conflict=False))
        await wait_state(m, "a", State.WAITING_QR)
        await m.disconnect("a")
        await m.connect("a", options=SessionOptions(idle_timeout=60))
        await wait_state(m, "a", State.WAITING_QR)
        assert seen == ["http://127.0.0.1:9/", "http://127.0.0.1:9/"]
        assert m._sessions["a"].options == SessionOptions("http://127.0.0.1:9/", False, 60)
        assert m.registry.load()[0].options == m._sessions["a"].options


async def test_inactive_sweep_stops_untouched_sessions_only(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(qr_timeout=7200) as (m, driver):
        for sid in ("idle", "touched", "linked"):
            await m.connect(sid)
            await wait_state(m, sid, State.WAITING_QR)
        driver.simulate("linked", "scan")
        await wait_state(m, "linked", State.CONNECTED)
        for _ in range(5):  # 50 minutes, touching one session every 10
            await trio.sleep(600)
            m.status("touched")
        assert m.status("idle").state == State.FAILED
        assert m.status("idle").reason == Reason.INACTIVE.value
        assert m.status("touched").state == State.WAITING_QR
        assert m.status("linked").state == State.CONNECTED  # connected sessions are left alone
        assert "idle" not in driver.live and "idle" in m.session_ids()
        cleanups = [s.value for s in m.metrics.samples() if s.name == "wa_inactive_cleanups_total"]
        assert cleanups == [1]


async def test_connected_idle_timeout_when_set(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(connected_idle_timeout=900) as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        driver.simulate("a", "scan")
        await wait_state(m, "a", State.CONNECTED)
        await trio.sleep(1201)
        st = m.peek("a")
        assert st is not None
        assert st.state == State.STOPPED and st.reason == Reason.IDLE_TIMEOUT.value
        assert "a" in driver.authed  # auth kept


async def test_reads_never_wait_for_a_locked_session(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        session = m._sessions["a"]
        async with session.lock:  # a long operation holds the lock
            t0 = trio.current_time()
            assert m.status("a").busy is True
            assert m.qr("a").seq == 1
            assert m.list()[0].session == "a"
            assert m.history("a")
            sub, snaps = m.subscribe("a", [])
            m.unsubscribe(sub)
            assert snaps[0].state == State.WAITING_QR
            # connect on an active session answers at once too
            assert (await m.connect("a")).state == State.WAITING_QR
            assert trio.current_time() == t0


async def test_broken_driver_reports_state_and_error_never_raises(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, driver):

        class Boom(Exception):
            pass

        def broken(options):  # type: ignore[no-untyped-def]
            raise Boom("driver bug")

        before_open(driver, broken)
        await m.connect("a")
        await wait_state(m, "a", State.FAILED)
        st = m.status("a")
        assert st.reason == Reason.INTERNAL_ERROR.value
        assert st.last_error is not None and "driver bug" in st.last_error


async def test_status_of_unknown_and_qr_absent_errors(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, _):
        with pytest.raises(NotFound):
            m.status("nope")
        await m.connect("a")
        with pytest.raises(NotFound, match="no QR"):
            m.qr("a")


async def test_watch_coalesces_qr_per_subscriber_and_keeps_final(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(qr_debounce=0, watch_qr_interval=3.0) as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        sub, _ = m.subscribe("a", [State.CONNECTED])
        sub.mark_qr_sent(m.status("a").qr, trio.current_time())  # type: ignore[arg-type]
        got: list[tuple[float, object]] = []

        async def collect() -> None:
            while True:
                ev = await sub.next()
                got.append((trio.current_time(), ev))
                if isinstance(ev, StreamEnd):
                    return

        async with trio.open_nursery() as n:
            n.start_soon(collect)
            for _ in range(20):
                await trio.sleep(0.5)
                driver.simulate("a", "refresh_qr")
            await trio.sleep(0.01)
            latest = m.status("a").qr
            await trio.sleep(4)
            driver.simulate("a", "scan")
        qr_times = [t for t, ev in got if isinstance(ev, QrUpdated)]
        assert all(b - a >= 3.0 - 1e-6 for a, b in zip(qr_times, qr_times[1:], strict=False))
        last_qr = [ev for _, ev in got if isinstance(ev, QrUpdated)][-1]
        assert last_qr.qr == latest  # type: ignore[union-attr]
        assert isinstance(got[-1][1], StreamEnd) and got[-1][1].reason == "until"
        assert got[-1][1].status.state == State.CONNECTED  # type: ignore[union-attr]


async def test_slow_subscriber_queue_is_bounded_and_final_kept(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(watch_queue_size=8, connect_min_interval=0, qr_debounce=0) as (m, driver):
        sub, _ = m.subscribe(None, [])  # never read until the end
        for _i in range(30):
            await m.connect("a")
            await wait_state(m, "a", State.WAITING_QR)
            await m.disconnect("a")
        sub.finish("shutdown", None)
        events = []
        while True:
            ev = await sub.next()
            events.append(ev)
            if isinstance(ev, StreamEnd):
                break
        assert len(events) <= 9
        assert isinstance(events[-1], StreamEnd)
        states = [e for e in events if isinstance(e, StateChanged)]
        assert states[-1].transition.to_state == State.STOPPED  # the newest state survives
        assert sub.dropped > 0


def test_sqlite_registry_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from datetime import datetime, timezone

    from wa_daemon.daemon.sessions.registry import SessionRecord, SqliteRegistry

    path = tmp_path / "state" / "registry.sqlite3"
    reg = SqliteRegistry(path)
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    reg.put(SessionRecord("a", 1000, created, True))
    reg.put(SessionRecord("b", None, created, False))
    reg.put(SessionRecord("a", 1000, created, False))
    reg.remove("b")
    reg.close()
    again = SqliteRegistry(path)
    assert again.load() == [SessionRecord("a", 1000, created, False)]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again.close()


async def test_failed_sessions_are_not_restored(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(scripted={"fail_launch": True}) as (m, _):
        await m.connect("f")
        await wait_state(m, "f", State.FAILED)
        assert m.registry.load()[0].should_run is False


async def test_qr_while_connected_means_logged_out(autojump_clock: trio.testing.MockClock) -> None:
    from wa_daemon.daemon.browser.base import LoginRequired, QrShown

    async with open_manager() as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        driver.simulate("a", "scan")
        await wait_state(m, "a", State.CONNECTED)
        driver.live["a"]._send.send_nowait(LoginRequired())
        driver.live["a"]._send.send_nowait(QrShown("2@again,a,b,c", 60))
        await wait_state(m, "a", State.LOGGED_OUT)
        assert m.status("a").reason == Reason.LOGGED_OUT_BY_PHONE.value
        assert "a" not in driver.authed
        assert invalid_transitions(m) == 0


async def test_phone_logout_while_the_browser_is_down_is_logged_out(autojump_clock: trio.testing.MockClock) -> None:
    """The relaunch of a linked profile shows a QR: the phone unlinked the device while
    no browser ran. That is `logged_out`, not a new QR phase."""
    async with open_manager(reconnect_jitter=0) as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        driver.simulate("a", "scan")
        await wait_state(m, "a", State.CONNECTED)
        driver.simulate("a", "crash")
        await wait_state(m, "a", State.RECONNECTING)
        await driver.wipe_auth("a")  # what the phone's "log out" does to a profile while no browser runs
        await wait_state(m, "a", State.LOGGED_OUT)
        st = m.status("a")
        assert st.reason == Reason.LOGGED_OUT_BY_PHONE.value
        # A session never linked still gets its QR after a crash (test above); and a
        # new link after this logout is an ordinary QR phase again.
        await trio.sleep(10)  # past connect_min_interval
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)


async def test_recycle_goes_through_the_lock_and_the_session(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        assert not m.recycle("a", Reason.MEMORY_LIMIT, "big", group=None)  # not connected
        driver.simulate("a", "scan")
        await wait_state(m, "a", State.CONNECTED)
        assert not m.recycle("nobody", Reason.MEMORY_LIMIT, "big", group=None)
        assert not m.recycle("a", Reason.MEMORY_LIMIT, "big", group=12345)  # sampled another browser
        async with m._sessions["a"].lock:  # an operation is changing the session
            assert not m.recycle("a", Reason.MEMORY_LIMIT, "big", group=None)
        assert m.status("a").state == State.CONNECTED
        assert m.recycle("a", Reason.MEMORY_LIMIT, "big", group=None)
        await wait_state(m, "a", State.RECONNECTING)
        await wait_state(m, "a", State.CONNECTED)
        assert [t.reason for t in m.history("a")][-3:] == ["memory_limit", "auth_restored", "app_loaded"]


async def test_reads_for_the_layers_above(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as (m, driver):
        await m.connect("a")
        await wait_state(m, "a", State.WAITING_QR)
        assert set(m.session_ids()) == {"a"} and m.peek("b") is None
        touched = m._sessions["a"].last_touch
        await trio.sleep(5)
        peeked = m.peek("a")
        assert peeked is not None and peeked.state == State.WAITING_QR
        assert m._sessions["a"].last_touch == touched  # peek is not a touch
        [(state, reason, since)] = list(m.states())
        assert (state, reason, since) == (State.WAITING_QR, "qr_shown", peeked.since)
        assert m.browser_groups() == {}  # scripted browsers have no processes
        # status_raw (what the RPC sends) is status encoded, and a touch like it.
        await trio.sleep(5)
        raw = m.status_raw("a")
        assert msgspec.msgpack.decode(raw, type=SessionStatus) == m.status("a") == peeked
        assert m._sessions["a"].last_touch == touched + 10
        with pytest.raises(NotFound):
            m.status_raw("b")
