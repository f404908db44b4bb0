"""The session machine without trio or a browser: every event in every state, deadlines, backoff.

Times are plain floats (the machine never reads a clock of its own); the wall
clock is a fixed function.
"""

from __future__ import annotations

import itertools
import math
import random
import typing
from collections.abc import Callable
from datetime import datetime, timezone

import pytest

from wa_daemon.daemon.browser import base as page
from wa_daemon.daemon.ops.config import Config
from wa_daemon.daemon.sessions import events as ev
from wa_daemon.daemon.sessions import states
from wa_daemon.daemon.sessions.events import Phase
from wa_daemon.daemon.sessions.machine import Machine
from wa_daemon.daemon.sessions.options import SessionOptions
from wa_daemon.daemon.sessions.states import ACTIVE, EVENT_EDGES, TRANSITIONS, IllegalTransition, takes
from wa_daemon.protocol import PairingCodeUpdated, QrUpdated, Reason, SessionError, State

S = State
WALL = datetime(2030, 1, 1, tzinfo=timezone.utc)
CFG = Config().replace(reconnect_jitter=0.0)
PHONE = SessionOptions(phone_number="15551234567")
BROWSER_CALLS = (ev.ReloadQr, ev.TakeOver, ev.RequestPairingCode, ev.LogOutPage)


class Run:
    """A machine, the trio time it was last given, and every effect it returned."""

    def __init__(self, options: SessionOptions | None = None, config: Config = CFG, linked: bool = False) -> None:
        self.m = Machine("s", config, 0.0, options=options, linked=linked, rng=random.Random(7), clock=lambda: WALL)
        self.now = 0.0
        self.effects: list[ev.Effect] = []

    def __call__(self, event: ev.Event, at: float | None = None) -> list[ev.Effect]:
        self.now = self.now if at is None else at
        out = self.m.handle(event, self.now)
        self.effects += out
        for move in _transitions(out):
            # Each transition is an edge of both tables for the event that took it.
            edge = (type(event).__name__, move.record.from_state, move.record.to_state)
            assert takes(*edge), edge
            TAKEN.add(edge)
        return out

    def settle(self) -> None:
        """Do what the runner would once the browser is closed (and the auth wiped)."""
        if self.m.phase is Phase.CLOSING:
            self(ev.BrowserClosed())
        if self.m.phase is Phase.WIPING:
            self(ev.AuthWiped())

    @property
    def state(self) -> State:
        return self.m.state


# ------------------------------------------------------------------ the states, reached through events


def _driving(run: Run, *events: ev.Event) -> Run:
    """Begun, its browser launched, then ``events``."""
    run(ev.Begin())
    run(ev.Launched())
    for event in events:
        run(event)
    return run


def _lost(run: Run) -> Run:
    """Connected, then the browser lost: reconnecting, waiting out the backoff."""
    _driving(run, page.AppShown(), page.BrowserGone("crashed", "boom"))
    run.settle()
    return run


def _relaunched(run: Run) -> Run:
    _lost(run)(ev.Tick(), at=run.m.next_deadline())
    return run


def _ended(event: ev.Event) -> Callable[[Run], Run]:
    def build(run: Run) -> Run:
        _driving(run, event)
        run.settle()
        run(ev.RunnerEnded())
        return run

    return build


def _then(build: Callable[[Run], Run], *events: ev.Event) -> Callable[[Run], Run]:
    def then(run: Run) -> Run:
        build(run)
        for event in events:
            run(event)
        return run

    return then


SETUPS: dict[str, tuple[Callable[[Run], Run], SessionOptions | None, State, Phase]] = {
    "stopped": (lambda run: run, None, S.STOPPED, Phase.IDLE),
    "launching": (_then(lambda run: run, ev.Begin()), None, S.STARTING, Phase.LAUNCHING),
    "starting": (_driving, None, S.STARTING, Phase.DRIVING),
    "code_asked": (_then(_driving, page.LoginRequired()), PHONE, S.STARTING, Phase.DRIVING),
    "waiting_qr": (_then(_driving, page.QrShown("ref-1", 60)), None, S.WAITING_QR, Phase.DRIVING),
    "waiting_code": (
        _then(_driving, page.LoginRequired(), ev.CodeGiven("ABCD1234", 0)), PHONE, S.WAITING_CODE, Phase.DRIVING
    ),
    "authenticating": (_then(_driving, page.Loading()), None, S.AUTHENTICATING, Phase.DRIVING),
    "connected": (_then(_driving, page.AppShown()), None, S.CONNECTED, Phase.DRIVING),
    "backoff": (_lost, None, S.RECONNECTING, Phase.BACKOFF),
    "relaunching": (_relaunched, None, S.RECONNECTING, Phase.LAUNCHING),
    "reconnecting": (_then(_relaunched, ev.Launched()), None, S.RECONNECTING, Phase.DRIVING),
    "failed": (_ended(page.Refused("blocked", "TOS_BLOCK")), None, S.FAILED, Phase.IDLE),
    "logged_out": (_ended(page.LoggedOut()), None, S.LOGGED_OUT, Phase.IDLE),
}


def setup(name: str) -> Run:
    build, options, state, phase = SETUPS[name]
    run = build(Run(options))
    assert (run.state, run.m.phase) == (state, phase), name
    run.effects.clear()
    return run


EVENTS: dict[str, ev.Event] = {
    "Begin": ev.Begin(),
    "Disconnect": ev.Disconnect("bye"),
    "IdleTimeout": ev.IdleTimeout("idle"),
    "Inactive": ev.Inactive("nobody"),
    "Shutdown": ev.Shutdown(),
    "Fenced": ev.Fenced("lease lost"),
    "LogoutStarted": ev.LogoutStarted(browser_open=True),
    "LogoutDone": ev.LogoutDone(),
    "Recycle": ev.Recycle(Reason.MEMORY_LIMIT, "too big"),
    "Launched": ev.Launched(),
    "LaunchFailed": ev.LaunchFailed("no chromium"),
    "BrowserClosed": ev.BrowserClosed(),
    "AuthWiped": ev.AuthWiped(),
    "CodeGiven": ev.CodeGiven("WXYZ9876", 0),
    "CodeFailed": ev.CodeFailed("no code"),
    "Tick": ev.Tick(),
    "RunnerCrashed": ev.RunnerCrashed("internal error: KeyError"),
    "RunnerEnded": ev.RunnerEnded(),
    "PageInfo": page.PageInfo("CONNECTED", False, "2.3000.1", ()),
    "LoginRequired": page.LoginRequired(),
    "LoginRequired(idle)": page.LoginRequired(idle=True),
    "QrShown": page.QrShown("ref-2", 20),
    "QrExpired": page.QrExpired(),
    "Loading": page.Loading(),
    "AppShown": page.AppShown(),
    "LoggedOut": page.LoggedOut("unpaired"),
    "Conflict": page.Conflict(),
    "PhoneOffline": page.PhoneOffline(True),
    "Refused": page.Refused("deprecated", "DEPRECATED_VERSION"),
    "BrowserGone": page.BrowserGone("hung", "no answer"),
}

DRIVING = {"starting", "code_asked", "waiting_qr", "waiting_code", "authenticating", "connected", "reconnecting"}
ALIVE = DRIVING | {"launching", "relaunching", "backoff"}  # an active state: a runner is at work
ALL = set(SETUPS)


def _to(names: set[str], state: State) -> dict[str, State]:
    return dict.fromkeys(names, state)


# Where each event leaves each set-up session once the runner has done what the
# machine asked (closed the browser, wiped the auth). Not listed: it stays.
# Written from docs/states.md, not from the machine.
EXPECTED: dict[str, dict[str, State]] = {
    "Begin": _to({"stopped", "failed", "logged_out"}, S.STARTING),
    "Disconnect": _to(ALL - {"stopped"}, S.STOPPED),
    "IdleTimeout": _to(ALL - {"stopped"}, S.STOPPED),
    "Inactive": _to(ALIVE, S.FAILED),
    "Shutdown": _to(ALIVE, S.STOPPED),
    "Fenced": _to(ALIVE, S.STOPPED),
    "LogoutDone": _to(ALL - {"logged_out"}, S.LOGGED_OUT),
    "Recycle": {"connected": S.RECONNECTING},
    "LaunchFailed": {"launching": S.FAILED},  # a relaunch spends a reconnect attempt instead
    "CodeFailed": {"code_asked": S.RECONNECTING},
    "CodeGiven": {"code_asked": S.WAITING_CODE},
    "RunnerCrashed": _to(ALIVE, S.FAILED),
    # "reconnecting" was connected before: a linked profile asking for a login was unlinked.
    "LoginRequired": _to({"connected", "reconnecting"}, S.LOGGED_OUT),
    "LoginRequired(idle)": _to({"connected", "reconnecting"}, S.LOGGED_OUT),
    "QrShown": _to({"starting", "authenticating", "reconnecting"}, S.WAITING_QR),
    "QrExpired": _to({"starting", "authenticating", "connected", "reconnecting"}, S.FAILED),
    "Loading": _to({"starting", "code_asked", "waiting_qr", "waiting_code", "reconnecting"}, S.AUTHENTICATING),
    "AppShown": _to(DRIVING - {"connected"}, S.CONNECTED),
    "LoggedOut": _to(DRIVING, S.LOGGED_OUT),
    "Refused": _to(DRIVING, S.FAILED),
    "BrowserGone": _to(DRIVING, S.RECONNECTING),
}

# Browser calls each event asks for, per set-up (none elsewhere).
CALLS: dict[tuple[str, str], type] = {
    ("LogoutStarted", "connected"): ev.LogOutPage,
    ("LogoutStarted", "authenticating"): ev.LogOutPage,
    ("LoginRequired", "code_asked"): ev.RequestPairingCode,
    ("LoginRequired(idle)", "code_asked"): ev.RequestPairingCode,
    ("LoginRequired(idle)", "waiting_code"): ev.RequestPairingCode,
    ("QrExpired", "waiting_qr"): ev.ReloadQr,
    **{("Conflict", name): ev.TakeOver for name in DRIVING},
}

# Every (event, from, to) any Run took, to show that each edge of the table is reachable.
TAKEN: set[tuple[str, State, State]] = set()


def _transitions(effects: list[ev.Effect]) -> list[ev.Transitioned]:
    return [e for e in effects if isinstance(e, ev.Transitioned)]


@pytest.mark.parametrize(("setup_name", "event_name"), list(itertools.product(SETUPS, EVENTS)))
def test_every_event_in_every_state(setup_name: str, event_name: str) -> None:
    run = setup(setup_name)
    before = run.state
    first = run(EVENTS[event_name])
    calls = [type(e) for e in first if isinstance(e, BROWSER_CALLS)]
    assert calls == ([CALLS[event_name, setup_name]] if (event_name, setup_name) in CALLS else [])
    # Browser calls come last: the session applies the rest before it awaits them.
    is_call = [isinstance(e, BROWSER_CALLS) for e in first]
    assert is_call == sorted(is_call)
    run.settle()
    assert run.state == EXPECTED.get(event_name, {}).get(setup_name, before)
    # The history and the view agree with what was published.
    moves = _transitions(run.effects)
    if moves:
        assert [t.record for t in moves] == list(run.m.history)[-len(moves):]
    src = before
    for move in moves:
        record = move.record
        assert record.from_state == src and move.view.state == record.to_state
        src = record.to_state
    assert src == run.state and run.m.view.state == run.state
    if before not in ACTIVE and run.m.phase is Phase.IDLE:
        assert run.m.next_deadline() == math.inf


def is_edge_of_some_event(src: State, dst: State) -> bool:
    return dst in TRANSITIONS[src] and any(dst in edges.get(src, ()) for edges in EVENT_EDGES.values())


def test_every_edge_of_the_event_table_is_taken() -> None:
    """Each (event, from, to) of EVENT_EDGES is taken: by the product, or by the paths below."""
    for setup_name, event_name in itertools.product(SETUPS, EVENTS):
        test_every_event_in_every_state(setup_name, event_name)
    edges = {(e, s, d) for e, table in EVENT_EDGES.items() for s, ds in table.items() for d in ds}
    # Two edges need a session that was linked before: its relaunch asks for a login.
    for name in ("launching", "backoff"):
        run = Run(linked=True)
        SETUPS[name][0](run)
        if run.m.phase is Phase.BACKOFF:
            run(ev.Tick(), at=run.m.next_deadline())
        run(ev.Launched())
        run(page.LoginRequired())
        run.settle()
        assert run.state == S.LOGGED_OUT
    # A reconnect cap reached: relaunching -> failed (max_reconnects) by LaunchFailed and BrowserClosed.
    for final in (ev.LaunchFailed("again"), page.BrowserGone("crashed")):
        run = Run(config=CFG.replace(reconnect_max_attempts=1))
        _relaunched(run)
        if isinstance(final, page.BrowserGone):
            run(ev.Launched())
        run(final)
        run.settle()
        assert run.state == S.FAILED and run.m.view.reason == Reason.MAX_RECONNECTS.value
    # A pairing code asked for in authenticating (the phone rejected the link) and
    # after a relaunch of a session not linked yet.
    for build in (_then(_driving, page.Loading()), _then(_driving, page.LoginRequired(), ev.CodeGiven("ABCD1234", 0),
                                                     page.BrowserGone("crashed"))):
        run = Run(PHONE)
        build(run)
        run.settle()
        if run.m.phase is Phase.BACKOFF:
            run(ev.Tick(), at=run.m.next_deadline())
            run(ev.Launched())
        run(page.LoginRequired())
        run(ev.CodeGiven("EEEE5555", 0))
        assert run.state == S.WAITING_CODE
    missing = sorted(edges - TAKEN, key=str)
    assert missing == []


def test_the_tables_agree() -> None:
    names = {cls.__name__ for cls in typing.get_args(ev.Operation) + typing.get_args(ev.RunnerEvent)}
    page_events = {cls.__name__ for cls in (page.AppShown, page.Loading, page.QrShown, page.LoginRequired)}
    assert set(EVENT_EDGES) <= names | page_events
    for event, table in EVENT_EDGES.items():
        for src, targets in table.items():
            assert all(states.is_allowed(src, dst) for dst in targets), (event, src)
    # Every edge of TRANSITIONS is taken by some event: none is dead.
    dead = [(s, d) for s, ds in TRANSITIONS.items() for d in ds if not is_edge_of_some_event(s, d)]
    assert dead == []


def test_an_illegal_edge_raises_before_changing_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    run = setup("waiting_qr")
    view, history = run.m.view, list(run.m.history)
    monkeypatch.setitem(EVENT_EDGES, "AppShown", {})  # a bug: the table and the machine disagree
    with pytest.raises(IllegalTransition) as info:
        run.m.handle(page.AppShown(), 1.0)
    assert (info.value.event, info.value.from_state, info.value.to_state) == ("AppShown", S.WAITING_QR, S.CONNECTED)
    assert run.m.view is view and list(run.m.history) == history


def test_unknown_events_are_refused() -> None:
    with pytest.raises(TypeError):
        Run().m.handle(object(), 0.0)  # type: ignore[arg-type]


# ------------------------------------------------------------------ deadlines


def test_qr_debounce_publishes_the_latest_qr_at_the_window_end() -> None:
    run = setup("waiting_qr")
    assert run.m.next_deadline() == CFG.qr_debounce  # the first QR's window
    run(page.QrShown("ref-2", 20), at=0.5)
    run(page.QrShown("ref-3", 20), at=1.0)
    assert not [e for e in run.effects if isinstance(e, ev.Publish)]
    run(ev.Tick(), at=run.m.next_deadline())
    published = [e.event for e in run.effects if isinstance(e, ev.Publish)]
    assert [(p.qr.data, p.qr.seq) for p in published if isinstance(p, QrUpdated)] == [("ref-3", 3)]
    assert run.m.next_deadline() == CFG.qr_timeout  # only the phase's end is left


def test_qr_phase_ends_at_qr_timeout() -> None:
    run = setup("waiting_qr")
    run(ev.Tick(), at=CFG.qr_debounce)
    assert run.m.next_deadline() == CFG.qr_timeout
    assert run(ev.Tick(), at=CFG.qr_timeout - 0.001) == []
    assert isinstance(run(ev.Tick(), at=CFG.qr_timeout)[-1], ev.CloseBrowser)
    run.settle()
    assert (run.state, run.m.view.reason, run.m.phase) == (S.FAILED, Reason.QR_TIMEOUT.value, Phase.DONE)
    assert run.m.view.qr is None


def test_qr_refresh_cap_and_reload_budget() -> None:
    run = Run(config=CFG.replace(qr_max_refreshes=2))
    _driving(run)(page.QrShown("r1", 20))
    run(page.QrShown("r2", 20))
    assert run(page.QrExpired()) == [ev.Log("qr_reload", "info", {"refreshes": 1}), ev.ReloadQr()]
    run(page.QrShown("r3", 20))
    assert run(page.QrExpired())[-1] == ev.CloseBrowser()  # the budget is spent
    run.settle()
    assert run.state == S.FAILED and run.m.view.message == "the QR codes ran out without a scan"


def test_phone_offline_grace_then_connection_lost() -> None:
    run = setup("connected")
    run(page.PhoneOffline(True), at=10.0)
    assert run.m.view.phone_offline and run.m.next_deadline() == 10.0 + CFG.phone_offline_grace
    run(page.PhoneOffline(False), at=20.0)
    assert not run.m.view.phone_offline and run.m.next_deadline() == math.inf
    run(page.PhoneOffline(True), at=30.0)
    run(ev.Tick(), at=30.0 + CFG.phone_offline_grace)
    run.settle()
    assert (run.state, run.m.view.reason) == (S.RECONNECTING, Reason.CONNECTION_LOST.value)
    errors = [e.event for e in run.effects if isinstance(e, ev.Publish) and isinstance(e.event, SessionError)]
    assert [e.code for e in errors] == [Reason.BROWSER_CRASHED.value]


def test_pairing_code_renewal_cap_and_timeout() -> None:
    cfg = CFG.replace(pairing_code_max_refreshes=2)
    run = Run(PHONE, cfg)
    _driving(run)(page.LoginRequired())
    run(ev.CodeGiven("AAAA1111", 0))
    code = run.m.view.pairing_code
    assert code is not None and code.code == "AAAA-1111" and code.seq == 1 and run.state == S.WAITING_CODE
    assert run.m.next_deadline() == cfg.pairing_code_interval
    for seq in (2, 3):
        assert run(ev.Tick(), at=run.m.next_deadline())[-1] == ev.RequestPairingCode(PHONE.phone_number or "")
        run(ev.CodeGiven(f"BBBB{seq:04d}", 0))
        assert run.m.view.pairing_code.seq == seq  # type: ignore[union-attr]
    published = [e.event for e in run.effects if isinstance(e, ev.Publish)]
    assert [p.code.seq for p in published if isinstance(p, PairingCodeUpdated)] == [1, 2, 3]
    run(ev.Tick(), at=run.m.next_deadline())  # a third renewal is over the cap
    run.settle()
    assert (run.state, run.m.view.reason) == (S.FAILED, Reason.CODE_TIMEOUT.value)
    assert "after 2 new codes" in (run.m.view.message or "")

    run = Run(PHONE, cfg.replace(pairing_code_timeout=100.0, pairing_code_interval=180.0))
    _driving(run)(page.LoginRequired())
    run(ev.CodeGiven("AAAA1111", 0))
    assert run.m.next_deadline() == 100.0
    run(ev.Tick(), at=100.0)
    run.settle()
    assert (run.state, run.m.view.message) == (S.FAILED, "no pairing code entered within 100 s")


def test_an_idle_login_queued_before_a_new_code_is_stale() -> None:
    run = setup("waiting_code")
    run(page.LoginRequired(idle=True))
    run(ev.CodeGiven("CCCC2222", queued=1))  # one page event was already waiting
    assert not [e for e in run(page.LoginRequired(idle=True)) if isinstance(e, ev.RequestPairingCode)]
    assert [e for e in run(page.LoginRequired(idle=True)) if isinstance(e, ev.RequestPairingCode)]


# ------------------------------------------------------------------ backoff and recycling


def test_backoff_5_15_45_then_max_reconnects() -> None:
    run = setup("connected")
    delays = []
    for attempt in (1, 2, 3):
        run(page.BrowserGone("crashed"))
        run.settle()
        assert (run.state, run.m.view.attempt, run.m.phase) == (S.RECONNECTING, attempt, Phase.BACKOFF)
        delays.append(run.m.next_deadline() - run.now)
        assert run(ev.Tick(), at=run.m.next_deadline() - 0.001) == [] and run.m.phase is Phase.BACKOFF
        run(ev.Tick(), at=run.m.next_deadline())
        assert run.m.phase is Phase.LAUNCHING
        run(ev.Launched())
    assert delays == [5.0, 15.0, 45.0]
    run(page.BrowserGone("crashed"))
    run.settle()
    assert (run.state, run.m.view.reason, run.m.phase) == (S.FAILED, Reason.MAX_RECONNECTS.value, Phase.DONE)
    assert run(ev.RunnerEnded()) == [ev.Settled()]


def test_a_proxy_failure_fails_a_first_launch_and_spends_the_reconnect_budget_of_a_relaunch() -> None:
    for reason in (Reason.PROXY_UNREACHABLE, Reason.PROXY_AUTH_FAILED):
        run = Run()
        run(ev.Begin())
        errors = run(ev.LaunchFailed("proxy http://10.0.0.5:3128 ...", reason))
        assert (run.state, run.m.view.reason) == (S.FAILED, reason.value)
        assert [e.event.code for e in errors if isinstance(e, ev.Publish)] == [reason.value]
        # Connected, then the proxy goes away: each relaunch fails the same way and costs an
        # attempt; out of attempts, the session fails naming the proxy, not max_reconnects.
        run = setup("connected")
        run(page.BrowserGone("connection_lost"))
        run.settle()
        for attempt in (1, 2, 3):
            assert (run.state, run.m.view.attempt, run.m.phase) == (S.RECONNECTING, attempt, Phase.BACKOFF)
            run(ev.Tick(), at=run.m.next_deadline())
            run(ev.LaunchFailed("proxy http://10.0.0.5:3128 ...", reason))
        assert (run.state, run.m.view.reason, run.m.phase) == (S.FAILED, reason.value, Phase.DONE)
        assert run.m.view.message is not None and run.m.view.message.startswith("gave up after 3 reconnect attempts")


def test_a_connection_that_held_starts_a_new_incident() -> None:
    run = setup("connected")
    run(page.BrowserGone("crashed"), at=1.0)
    run.settle()
    run(ev.Tick(), at=run.m.next_deadline())
    run(ev.Launched())
    run(page.AppShown())
    assert run.m.view.attempt == 1
    run(page.BrowserGone("crashed"), at=run.now + CFG.reconnect_reset_after)
    run.settle()
    assert run.m.view.attempt == 1  # counted from 1 again


def test_backoff_jitter_stays_within_bounds() -> None:
    machine = Run(config=CFG.replace(reconnect_jitter=0.2)).m
    for attempt, base in ((1, 5), (2, 15), (3, 45), (10, 300)):
        for _ in range(50):
            assert base * 0.8 <= machine.backoff(attempt) <= min(base * 1.2, 300)


def test_recycle_is_free_once_then_a_reconnect_attempt() -> None:
    run = setup("connected")
    assert run(ev.Recycle(Reason.MEMORY_LIMIT, "big")) == [ev.CloseBrowser()]
    assert run(ev.Recycle(Reason.MEMORY_LIMIT, "big")) == []  # one at a time
    run.settle()
    assert (run.state, run.m.view.reason, run.m.view.attempt, run.m.phase) == (
        S.RECONNECTING, Reason.MEMORY_LIMIT.value, 0, Phase.LAUNCHING)  # relaunched at once, no backoff
    run(ev.Launched())
    run(page.AppShown(), at=10.0)
    run(ev.Recycle(Reason.MEMORY_LIMIT, "big again"), at=20.0)
    run.settle()
    assert (run.state, run.m.view.attempt, run.m.phase) == (S.RECONNECTING, 1, Phase.BACKOFF)
    counted = [e.labels for e in run.effects if isinstance(e, ev.Count) and e.counter == "session_recycles"]
    assert counted == [("memory_limit",), ("memory_limit",)]


def test_logout_ends_the_stream_without_a_reconnect() -> None:
    run = setup("connected")
    assert run(ev.LogoutStarted(browser_open=True)) == [ev.LogOutPage()]
    run(page.BrowserGone("exited", "the browser's event stream ended"))
    run.settle()
    assert (run.state, run.m.phase) == (S.CONNECTED, Phase.DONE)  # the operation sets the state
    run(ev.RunnerEnded())
    run(ev.LogoutDone())
    assert (run.state, run.m.view.reason, run.m.view.linked) == (S.LOGGED_OUT, Reason.LOGOUT_REQUESTED.value, False)
    assert ev.SaveLinked() in run.effects


def test_app_shown_links_and_a_wiped_logout_unlinks() -> None:
    run = setup("connected")
    assert run.m.view.linked
    run(page.LoginRequired())  # a linked page asking for a login: unlinked on the phone
    assert run.m.phase is Phase.CLOSING
    run(ev.BrowserClosed())
    assert (run.m.phase, run.state) == (Phase.WIPING, S.CONNECTED)  # no state change before the wipe
    run(ev.AuthWiped())
    assert (run.state, run.m.view.linked, run.m.view.reason) == (S.LOGGED_OUT, False, "logged_out_by_phone")
    assert [type(e) for e in run.effects].count(ev.SaveLinked) == 1


def test_takeover_follows_the_session_option_else_the_config() -> None:
    for options, config, takes_over in (
        (None, CFG, True),
        (None, CFG.replace(takeover_on_conflict=False), False),
        (SessionOptions(takeover_on_conflict=True), CFG.replace(takeover_on_conflict=False), True),
        (SessionOptions(takeover_on_conflict=False), CFG, False),
    ):
        run = Run(options, config)
        _driving(run)(page.AppShown())
        assert (run(page.Conflict())[-1] == ev.TakeOver()) is takes_over
