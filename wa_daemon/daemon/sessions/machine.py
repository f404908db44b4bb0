"""A session's decisions, without I/O (like h11's ``_state.py``).

:meth:`Machine.handle` takes an event (``events.py``: an operation, the runner's
browser launched or closed, a page event, ``Tick``) and the trio clock's
``now``, changes the machine and returns the effects the session must apply, in
order. :meth:`Machine.next_deadline` says when the machine wants its next
``Tick``, and :attr:`Machine.phase` what the session's runner task does next.
Nothing here awaits, reads a clock of its own accord (the wall clock for the
timestamps it shows is injected), or touches the browser, the hub, the
registry, logs or metrics.

Every transition is one of ``EVENT_EDGES`` (``states.py``) for the event being
handled, and of ``TRANSITIONS``; any other is a bug in this module and raises
:class:`IllegalTransition` before anything changes. The session counts and
logs it (``invalid_transition``); raised in the runner, the session then ends
``failed`` (``internal_error``) like any crash of its runner.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from ...protocol import PairingCode, PairingCodeUpdated, QrCode, QrUpdated, Reason, SessionError, State, Transition
from ..browser import base as page
from ..ops.config import Config
from . import events as ev
from .events import Phase
from .options import SessionOptions, Settings, resolve
from .states import ACTIVE, NEEDS_REASON, RESTARTABLE, IllegalTransition, takes


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def qr_fingerprint(data: str) -> str:
    """12 hex digits of the payload's SHA-256: enough to tell QRs apart in logs, useless to log in with."""
    return hashlib.sha256(data.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class _Terminal:
    """How the attempt ends once the browser is closed."""

    state: State
    reason: Reason
    message: str
    wipe_auth: bool = False


@dataclass(frozen=True)
class _Gone:
    """The browser or its page was lost: reconnect once it is closed."""

    kind: str
    message: str


class Machine:
    """One session's state and decisions. ``config`` and ``options`` are read at each decision."""

    def __init__(
        self,
        session_id: str,
        config: Config,
        now: float,
        *,
        options: SessionOptions | None = None,
        linked: bool = False,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.id = session_id
        self.config = config
        self.options = options or SessionOptions()
        self.rng = rng or random.Random()
        self._clock = clock  # the wall clock, for the timestamps the status shows
        self.view = ev.View(state=State.STOPPED, since=clock(), linked=linked)
        self.history: deque[Transition] = deque(maxlen=config.history_size)
        self.phase = Phase.IDLE
        self.state_changed_at = now  # trio time, for the inactive sweep
        self.page_missing: tuple[str, ...] = ()  # contract items the live page lacks
        self._now = now
        self._event = ""  # the class name of the event being handled
        self._out: list[ev.Effect] = []
        # the attempt
        self._connected_since: float | None = None
        self._offline_since: float | None = None
        self._last_recycle_at: float | None = None
        self._stop_requested = False  # the browser goes away on purpose (logout): not a crash
        self._outcome: _Terminal | _Gone | None = None  # decided while driving, taken once closed
        self._recycle: ev.Recycle | None = None  # a recycle under way
        self._relaunch_at: float | None = None
        # QR phase
        self._qr_seq = 0
        self._qr_refreshes = 0
        self._qr_deadline: float | None = None
        self._qr_pending: QrCode | None = None
        self._qr_flush_at: float | None = None
        # pairing-code phase
        self._code_seq = 0
        self._code_refreshes = 0
        self._code_deadline: float | None = None  # the code phase ends: code_timeout
        self._code_renew_at: float | None = None  # the shown code runs out: ask for the next
        self._code_requested = False
        # Page events already queued when the current code was given: an "idle" among
        # them is about the code it replaced (both ran out at once), not the new one.
        self._stale_events = 0

    # ------------------------------------------------------------------ reads

    @property
    def state(self) -> State:
        return self.view.state

    @property
    def settings(self) -> Settings:
        return resolve(self.options, self.config)

    @property
    def recycling(self) -> bool:
        return self._recycle is not None

    def backoff(self, attempt: int) -> float:
        """The delay before reconnect ``attempt``, with its jitter."""
        cfg = self.config
        return cfg.reconnect_delay(attempt, self.rng.uniform(1 - cfg.reconnect_jitter, 1 + cfg.reconnect_jitter))

    def next_deadline(self) -> float:
        """When the machine wants a ``Tick`` (trio time); ``inf``: not before another event."""
        if self.phase is Phase.BACKOFF:
            return self._relaunch_at if self._relaunch_at is not None else math.inf
        if self.phase is not Phase.DRIVING:
            return math.inf
        offline_end = None if self._offline_since is None else self._offline_since + self.config.phone_offline_grace
        due = [self._qr_deadline if self.state is State.WAITING_QR else None, self._qr_flush_at, offline_end,
               self._code_deadline, self._code_renew_at]
        return min((at for at in due if at is not None), default=math.inf)

    # ------------------------------------------------------------------ handle

    def handle(self, event: ev.Event, now: float) -> list[ev.Effect]:
        """Take ``event`` at trio time ``now``; the effects to apply, in order."""
        self._now = now
        self._event = type(event).__name__
        self._out = out = list[ev.Effect]()
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"not a session event: {event!r}")
        handler(self, event)
        return out

    # ------------------------------------------------------------------ operations

    def _begin(self, event: ev.Begin) -> None:
        if self.state not in RESTARTABLE:
            return  # connect is a no-op in an active state
        self._set(attempt=0)
        self._connected_since = None
        self._stop_requested = False
        self._outcome = self._recycle = self._relaunch_at = None
        self._enter(State.STARTING, event.reason)
        self.phase = Phase.LAUNCHING
        self._emit(ev.StartRunner())

    def _stop(self, event: ev.Disconnect | ev.IdleTimeout) -> None:
        reason = Reason.IDLE_TIMEOUT if isinstance(event, ev.IdleTimeout) else Reason.DISCONNECT_REQUESTED
        if self.state is not State.STOPPED:
            self._enter(State.STOPPED, reason, event.message)

    def _inactive(self, event: ev.Inactive) -> None:
        if self.state in ACTIVE:  # it may have ended while the sweep waited for its lock
            self._enter(State.FAILED, Reason.INACTIVE, event.message)

    def _shutdown(self, event: ev.Shutdown) -> None:
        if self.state in ACTIVE:
            self._enter(State.STOPPED, Reason.SHUTDOWN, "daemon shutting down")

    def _fenced(self, event: ev.Fenced) -> None:
        if self.state in ACTIVE:
            self._enter(State.STOPPED, Reason.FENCED, event.message)

    def _logout_started(self, event: ev.LogoutStarted) -> None:
        if event.browser_open and self.state in (State.CONNECTED, State.AUTHENTICATING):
            # The page logout ends the browser's event stream; the runner must
            # not mistake that for a crash and start reconnecting.
            self._stop_requested = True
            self._emit(ev.LogOutPage())

    def _logout_done(self, event: ev.LogoutDone) -> None:
        self._set_linked(False)
        if self.state is not State.LOGGED_OUT:
            self._enter(State.LOGGED_OUT, Reason.LOGOUT_REQUESTED, "logged out on request; auth wiped")

    def _recycle_requested(self, event: ev.Recycle) -> None:
        if self.state is State.CONNECTED and self.phase is Phase.DRIVING:
            self._recycle = event
            self.phase = Phase.CLOSING
            self._emit(ev.CloseBrowser())

    # ------------------------------------------------------------------ the runner

    def _launched(self, event: ev.Launched) -> None:
        if self.phase is Phase.LAUNCHING:
            self.phase = Phase.DRIVING

    def _launch_failed(self, event: ev.LaunchFailed) -> None:
        if self.phase is not Phase.LAUNCHING:
            return
        self._error(event.reason, f"launch failed: {event.message}")
        if self.state is State.RECONNECTING:  # a relaunch: one more reconnect attempt
            # Out of attempts, a proxy failure is named as such, not max_reconnects.
            give_up = Reason.MAX_RECONNECTS if event.reason is Reason.LAUNCH_ERROR else event.reason
            self._reconnect(event.reason, event.message, give_up)
        else:
            self._finish(State.FAILED, event.reason, event.message)

    def _browser_closed(self, event: ev.BrowserClosed) -> None:
        if self.phase is not Phase.CLOSING:
            return
        outcome, recycle = self._outcome, self._recycle
        self._outcome = self._recycle = None
        if self._stop_requested:
            self.phase = Phase.DONE  # the operation that asked for the stop (logout) sets the state
        elif recycle is not None:
            self._after_recycle(recycle)
        elif isinstance(outcome, _Terminal):
            if outcome.wipe_auth:
                self._outcome = outcome
                self.phase = Phase.WIPING
            else:
                self._finish(outcome.state, outcome.reason, outcome.message)
        elif isinstance(outcome, _Gone):
            what = f"{outcome.kind}: {outcome.message}"
            self._count("browser_crashes", outcome.kind)
            self._error(Reason.BROWSER_CRASHED, what)
            self._reconnect(Reason.CONNECTION_LOST if outcome.kind == "connection_lost" else Reason.BROWSER_CRASHED, what)

    def _auth_wiped(self, event: ev.AuthWiped) -> None:
        outcome, self._outcome = self._outcome, None
        if self.phase is Phase.WIPING and isinstance(outcome, _Terminal):
            self._set_linked(False)
            self._finish(outcome.state, outcome.reason, outcome.message)

    def _runner_crashed(self, event: ev.RunnerCrashed) -> None:
        self._set(last_error=event.message)
        if self.state in ACTIVE:
            self._enter(State.FAILED, Reason.INTERNAL_ERROR, event.message)
        self.phase = Phase.DONE

    def _runner_ended(self, event: ev.RunnerEnded) -> None:
        self.phase = Phase.IDLE
        self._outcome = self._recycle = self._relaunch_at = None
        self._code_requested = False
        if self.state in NEEDS_REASON:
            self._emit(ev.Settled())

    def _tick(self, event: ev.Tick) -> None:
        now, cfg = self._now, self.config
        if self.phase is Phase.BACKOFF:
            if self._relaunch_at is not None and now >= self._relaunch_at:
                self._relaunch_at = None
                self.phase = Phase.LAUNCHING
            return
        if self.phase is not Phase.DRIVING:
            return
        self._flush_qr_if_due()
        grace = cfg.phone_offline_grace
        if self._offline_since is not None and now >= self._offline_since + grace:
            self._offline_since = None
            self._end(_Gone("connection_lost", f"the connection to WhatsApp was down for {grace:g} s"))
        elif self._qr_deadline is not None and now >= self._qr_deadline:
            self._end(_Terminal(State.FAILED, Reason.QR_TIMEOUT, f"no scan within {cfg.qr_timeout:g} s"))
        elif self._code_deadline is not None and now >= self._code_deadline:
            message = f"no pairing code entered within {cfg.pairing_code_timeout:g} s"
            self._end(_Terminal(State.FAILED, Reason.CODE_TIMEOUT, message))
        elif self._code_renew_at is not None and now >= self._code_renew_at:
            self._code_renew_at = None
            self._want_code()

    def _reconnect(self, reason: Reason, message: str, give_up: Reason = Reason.MAX_RECONNECTS) -> None:
        """Count a reconnect attempt and wait its backoff; FAILED (``give_up``) once the cap is hit."""
        cfg, now = self.config, self._now
        if self._connected_since is not None and now - self._connected_since >= cfg.reconnect_reset_after:
            self._set(attempt=0)  # the previous incident is over: the session held for long enough
        self._connected_since = None
        attempt = self.view.attempt
        if attempt >= cfg.reconnect_max_attempts:
            message = f"gave up after {attempt} reconnect attempts; last error: {message}"
            self._finish(State.FAILED, give_up, message)
            return
        self._set(attempt=attempt + 1)
        self._count("reconnects")
        if self.state is not State.RECONNECTING:
            self._enter(State.RECONNECTING, reason, message)
        delay = self.backoff(attempt + 1)
        self._log("reconnect_scheduled", attempt=attempt + 1, delay=round(delay, 3), reason=reason.value)
        self._relaunch_at = now + delay
        self.phase = Phase.BACKOFF

    def _after_recycle(self, recycle: ev.Recycle) -> None:
        """Enter ``reconnecting`` after a recycle and relaunch at once.

        A recycle is not a crash and costs no reconnect attempt, unless it comes
        less than ``reconnect_reset_after`` after the previous one: then it counts as
        a reconnect (with its backoff), so a browser that is over the limit right
        after every launch ends ``failed`` (``max_reconnects``) instead of looping."""
        cfg, now = self.config, self._now
        self._count("session_recycles", recycle.reason.value)
        self._log("session_recycled", "warning", reason=recycle.reason.value, message=recycle.message)
        previous, self._last_recycle_at = self._last_recycle_at, now
        if previous is not None and now - previous < cfg.reconnect_reset_after:
            self._reconnect(recycle.reason, recycle.message)
            return
        if self._connected_since is not None and now - self._connected_since >= cfg.reconnect_reset_after:
            self._set(attempt=0)
        self._connected_since = None
        self._enter(State.RECONNECTING, recycle.reason, recycle.message)
        self.phase = Phase.LAUNCHING

    # ------------------------------------------------------------------ page events

    def _page_event(self, event: Any) -> None:
        if self.phase is not Phase.DRIVING:
            return  # no browser is followed: a late event of one being closed
        self._flush_qr_if_due()
        stale, self._stale_events = self._stale_events > 0, max(0, self._stale_events - 1)
        _PAGE_HANDLERS[type(event)](self, event, stale)

    def _on_page_info(self, info: page.PageInfo, stale: bool) -> None:
        if info.version != self.view.web_version and info.version is not None:
            self._log("web_version", web_version=info.version)
        if info.unknown and info.web_state != self.view.web_state and info.web_state is not None:
            # Never a reason to fail: WhatsApp adds states; we show it and carry on.
            self._count("web_unknown_states", info.web_state)
            self._log("web_state_unknown", "warning", web_state=info.web_state)
        if info.missing != self.page_missing:
            if info.missing:
                self._log("page_contract_missing", "warning", missing=list(info.missing))
            self.page_missing = info.missing
        self._set(web_version=info.version or self.view.web_version, web_state=info.web_state)

    def _on_login_required(self, event: page.LoginRequired, stale: bool) -> None:
        if self.state is State.CONNECTED or (
            self.view.linked and self.state in (State.STARTING, State.RECONNECTING, State.AUTHENTICATING)
        ):
            # A linked page never asks for a login: the login is gone, whatever the URL
            # says. Also on the relaunch of a linked profile: the phone unlinked it while
            # no browser ran (between a crash and its reconnect, or while stopped).
            message = "the page asks for a new login: this device is no longer linked; auth wiped"
            self._end(_Terminal(State.LOGGED_OUT, Reason.LOGGED_OUT_BY_PHONE, message, wipe_auth=True))
        elif self.settings.links_by_code and (self.view.pairing_code is None or (event.idle and not stale)):
            self._want_code()  # none shown yet, or the page's code ran out before our renewal timer

    def _on_qr_shown(self, event: page.QrShown, stale: bool) -> None:
        if self.settings.links_by_code:
            return  # the page rotates QRs under the code; nobody scans them
        cfg, now = self.config, self._now
        self._count("qr_generated")
        if self.state is State.WAITING_QR:
            # A refresh: the same phase goes on, no transition.
            self._qr_refreshes += 1
            limit = cfg.qr_max_refreshes
            if limit is not None and self._qr_refreshes > limit:
                self._end(_Terminal(State.FAILED, Reason.QR_TIMEOUT, f"no scan after {limit} QR refreshes"))
                return
        elif not takes(self._event, self.state, State.WAITING_QR):
            # Drivers announce a login with LoginRequired first, which ends a linked
            # session; a QR alone where no login phase can begin changes nothing.
            self._log("qr_ignored", "warning", state=self.state.value)
            return
        else:
            self._qr_refreshes = 0
            self._qr_seq = 0
        self._qr_seq += 1
        wall = self._clock()
        qr = QrCode(session=self.id, data=event.ref, generated_at=wall, expires_at=wall + timedelta(seconds=event.ttl),
                    seq=self._qr_seq)
        self._set(qr=qr)
        if self.state is not State.WAITING_QR:
            # Set before the transition so its state event already carries the QR.
            self._enter(State.WAITING_QR, Reason.QR_SHOWN)
            self._qr_deadline = now + cfg.qr_timeout
        self._qr_pending = qr
        if self._qr_flush_at is None:
            # Trailing edge: the window opens now and delivers whatever QR is latest when it closes.
            self._qr_flush_at = now + cfg.qr_debounce

    def _on_qr_expired(self, event: page.QrExpired, stale: bool) -> None:
        if self.settings.links_by_code:
            return  # LoginRequired(idle) asks for the next code
        if self.state is State.WAITING_QR and self._qr_budget_left():
            self._log("qr_reload", refreshes=self._qr_refreshes)
            self._emit(ev.ReloadQr())
        else:
            self._end(_Terminal(State.FAILED, Reason.QR_TIMEOUT, "the QR codes ran out without a scan"))

    def _on_loading(self, event: page.Loading, stale: bool) -> None:
        why = {State.WAITING_QR: Reason.QR_SCANNED, State.WAITING_CODE: Reason.CODE_ENTERED}
        if takes(self._event, self.state, State.AUTHENTICATING):
            self._enter(State.AUTHENTICATING, why.get(self.state, Reason.AUTH_RESTORED))

    def _on_app_shown(self, event: page.AppShown, stale: bool) -> None:
        if self.state is not State.CONNECTED:
            self._enter(State.CONNECTED, Reason.APP_LOADED)
            self._connected_since = self._now
            self._set_linked(True)

    def _on_logged_out(self, event: page.LoggedOut, stale: bool) -> None:
        whatsapps = f" (WhatsApp's reason: {event.reason})" if event.reason else ""
        message = f"the device was logged out{whatsapps}; auth wiped"
        self._end(_Terminal(State.LOGGED_OUT, Reason.LOGGED_OUT_BY_PHONE, message, wipe_auth=True))

    def _on_conflict(self, event: page.Conflict, stale: bool) -> None:
        if self.settings.takeover_on_conflict:
            self._log("conflict_takeover")
            self._emit(ev.TakeOver())
        else:
            self._end(_Terminal(State.FAILED, Reason.CONFLICT, "WhatsApp is open in another window"))

    def _on_refused(self, event: page.Refused, stale: bool) -> None:
        if event.kind == "deprecated":
            version = self.view.web_version or "unknown"
            message = f"WhatsApp refuses this web version ({version}): state {event.state}"
            self._end(_Terminal(State.FAILED, Reason.WEB_VERSION_DEPRECATED, message))
        else:
            self._end(_Terminal(State.FAILED, Reason.BLOCKED, f"WhatsApp blocks this device: state {event.state}"))

    def _on_phone_offline(self, event: page.PhoneOffline, stale: bool) -> None:
        offline = event.offline and self.state is State.CONNECTED
        self._set(phone_offline=offline)
        # The page usually recovers by itself; only a long outage is worth a relaunch.
        self._offline_since = self._now if offline else None
        self._log("phone_offline" if event.offline else "phone_online")

    def _on_browser_gone(self, event: page.BrowserGone, stale: bool) -> None:
        self._end(_Gone(event.kind, event.message))

    # ------------------------------------------------------------------ pairing code

    def _want_code(self) -> None:
        """Ask the page for a (new) pairing code, within the phase's refresh cap."""
        limit = self.config.pairing_code_max_refreshes
        if self.state is State.WAITING_CODE:
            self._code_refreshes += 1
            if self._code_refreshes > limit:
                message = f"no pairing code entered after {limit} new codes"
                self._end(_Terminal(State.FAILED, Reason.CODE_TIMEOUT, message))
                return
        self._code_requested = True
        self._emit(ev.RequestPairingCode(self.settings.phone_number))

    def _code_given(self, event: ev.CodeGiven) -> None:
        if not self._code_requested or self.phase is not Phase.DRIVING:
            return
        cfg, now, code = self.config, self._now, event.code
        self._code_requested = False
        first = self.state is not State.WAITING_CODE
        if first:
            self._code_refreshes = 0
            self._code_seq = 0
        self._code_seq += 1
        wall = self._clock()
        shown = PairingCode(session=self.id, code=f"{code[:4]}-{code[4:]}", generated_at=wall,
                            expires_at=wall + timedelta(seconds=cfg.pairing_code_interval), seq=self._code_seq)
        self._set(pairing_code=shown)
        self._stale_events = event.queued
        self._code_renew_at = now + cfg.pairing_code_interval
        self._count("pairing_codes")
        if first:
            # Set before the transition so its state event already carries the code.
            self._enter(State.WAITING_CODE, Reason.CODE_SHOWN)
            self._code_deadline = now + cfg.pairing_code_timeout
        # A code is a login credential: the log gets a fingerprint, never the code.
        self._log("pairing_code_published", seq=self._code_seq, code_fingerprint=qr_fingerprint(code),
                  expires_at=shown.expires_at.isoformat())
        self._emit(ev.Publish(PairingCodeUpdated(shown)))

    def _code_failed(self, event: ev.CodeFailed) -> None:
        if self._code_requested and self.phase is Phase.DRIVING:
            self._code_requested = False
            self._end(_Gone("pairing_failed", event.message))

    # ------------------------------------------------------------------ QR

    def _qr_budget_left(self) -> bool:
        if self._qr_deadline is not None and self._now >= self._qr_deadline:
            return False
        limit = self.config.qr_max_refreshes
        return limit is None or self._qr_refreshes < limit

    def _flush_qr_if_due(self) -> None:
        if self._qr_flush_at is None or self._now < self._qr_flush_at:
            return
        pending, self._qr_pending, self._qr_flush_at = self._qr_pending, None, None
        if pending is not None and self.state is State.WAITING_QR:
            self._count("qr_events")
            # A QR is a login credential: the log gets a fingerprint to correlate, never the payload.
            self._log("qr_published", seq=pending.seq, qr_fingerprint=qr_fingerprint(pending.data),
                      expires_at=pending.expires_at.isoformat())
            self._emit(ev.Publish(QrUpdated(pending)))

    # ------------------------------------------------------------------ helpers

    def _enter(self, to: State, reason: Reason, message: str = "") -> None:
        """The one way to change state: along an edge of the tables for the event being handled."""
        src = self.state
        if not takes(self._event, src, to):
            raise IllegalTransition(self._event, src, to)
        why = reason.value or (Reason.INTERNAL_ERROR.value if to in NEEDS_REASON else "")
        changes: dict[str, Any] = {}
        if to is not State.WAITING_QR:
            changes["qr"] = None
            self._qr_pending = self._qr_flush_at = self._qr_deadline = None
        if to is not State.WAITING_CODE:
            changes["pairing_code"] = None
            self._code_deadline = self._code_renew_at = None
        if to is not State.CONNECTED:
            changes["phone_offline"] = False
            self._offline_since = None
        record = Transition(
            at=self._clock(), from_state=src, to_state=to, reason=why, attempt=self.view.attempt, message=message
        )
        self._set(state=to, since=record.at, reason=why, message=message or None, **changes)
        self.state_changed_at = self._now
        self.history.append(record)
        self._emit(ev.Transitioned(record, self.view))

    def _finish(self, to: State, reason: Reason, message: str) -> None:
        """The attempt ends in ``to``: the runner has nothing left to do."""
        self._enter(to, reason, message)
        self.phase = Phase.DONE

    def _end(self, outcome: _Terminal | _Gone) -> None:
        """Stop following the browser; ``outcome`` is taken once it is closed."""
        self._outcome = outcome
        self.phase = Phase.CLOSING
        self._emit(ev.CloseBrowser())

    def _set(self, **changes: Any) -> None:
        view = self.view
        if any(getattr(view, name) != value for name, value in changes.items()):
            self.view = replace(view, **changes)

    def _set_linked(self, linked: bool) -> None:
        if self.view.linked != linked:
            self._set(linked=linked)
            self._emit(ev.SaveLinked())

    def _error(self, code: Reason, message: str) -> None:
        self._set(last_error=message)
        self._emit(ev.Publish(SessionError(self.id, code.value, message)))

    def _emit(self, effect: ev.Effect) -> None:
        self._out.append(effect)

    def _log(self, event: str, level: ev.Level = "info", **fields: object) -> None:
        self._out.append(ev.Log(event, level, fields))

    def _count(self, counter: ev.Counter, *labels: str) -> None:
        self._out.append(ev.Count(counter, labels))


_PAGE_HANDLERS: dict[type, Callable[[Machine, Any, bool], None]] = {
    page.PageInfo: Machine._on_page_info,
    page.LoginRequired: Machine._on_login_required,
    page.QrShown: Machine._on_qr_shown,
    page.QrExpired: Machine._on_qr_expired,
    page.Loading: Machine._on_loading,
    page.AppShown: Machine._on_app_shown,
    page.LoggedOut: Machine._on_logged_out,
    page.Conflict: Machine._on_conflict,
    page.Refused: Machine._on_refused,
    page.PhoneOffline: Machine._on_phone_offline,
    page.BrowserGone: Machine._on_browser_gone,
}

_HANDLERS: dict[type, Callable[[Machine, Any], None]] = {
    ev.Begin: Machine._begin,
    ev.Disconnect: Machine._stop,
    ev.IdleTimeout: Machine._stop,
    ev.Inactive: Machine._inactive,
    ev.Shutdown: Machine._shutdown,
    ev.Fenced: Machine._fenced,
    ev.LogoutStarted: Machine._logout_started,
    ev.LogoutDone: Machine._logout_done,
    ev.Recycle: Machine._recycle_requested,
    ev.Launched: Machine._launched,
    ev.LaunchFailed: Machine._launch_failed,
    ev.BrowserClosed: Machine._browser_closed,
    ev.AuthWiped: Machine._auth_wiped,
    ev.CodeGiven: Machine._code_given,
    ev.CodeFailed: Machine._code_failed,
    ev.Tick: Machine._tick,
    ev.RunnerCrashed: Machine._runner_crashed,
    ev.RunnerEnded: Machine._runner_ended,
    **{page_event: Machine._page_event for page_event in _PAGE_HANDLERS},
}
