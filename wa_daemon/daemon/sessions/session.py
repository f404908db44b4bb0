"""One session: its state, its QR cache and debounce, and the task that drives its browser.

The session's fields are its last known state: status, qr and history read
them without waiting, whatever the runner task or an operation is doing.
State changes happen only through :meth:`Session.transition`, which checks the
table in ``states``; page events that do not change state (a QR refresh, the
phone going offline) never call it.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import msgspec
import structlog
import trio

from ...protocol import (
    PairingCode,
    PairingCodeUpdated,
    QrCode,
    QrUpdated,
    Reason,
    SessionError,
    SessionStatus,
    State,
    StateChanged,
    Transition,
    to_raw,
)
from ..browser.base import (
    AppShown,
    Browser,
    BrowserGone,
    Conflict,
    Driver,
    LaunchError,
    LaunchOptions,
    Loading,
    LoggedOut,
    LoginRequired,
    PageEvent,
    PageInfo,
    PairingError,
    PhoneOffline,
    QrExpired,
    QrShown,
    Refused,
)
from ..ops.config import Config
from ..ops.metrics import DaemonMetrics
from .hub import Hub
from .registry import SessionOptions
from .states import NEEDS_REASON, is_allowed

log = structlog.get_logger("wa_daemon.session")


def qr_fingerprint(data: str) -> str:
    """12 hex digits of the payload's SHA-256: enough to tell QRs apart in logs, useless to log in with."""
    return hashlib.sha256(data.encode()).hexdigest()[:12]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class SessionContext:
    """What every session shares with the manager."""

    config: Config
    driver: Driver
    hub: Hub
    metrics: DaemonMetrics
    launch_slots: trio.Semaphore
    nursery: trio.Nursery
    rng: random.Random
    # Told when the runner ends in failed or logged_out, so the registry stops
    # restarting a session nobody can use until someone connects it again.
    on_settled: Callable[[Session], None] = lambda session: None
    # Told when the session's profile starts or stops holding a login, so the
    # registry remembers it across restarts.
    on_linked: Callable[[Session], None] = lambda session: None


@dataclass(frozen=True)
class _Terminal:
    state: State
    reason: Reason
    message: str
    wipe_auth: bool = False


@dataclass(frozen=True)
class _Gone:
    kind: str
    message: str


@dataclass(frozen=True)
class _Recycle:
    """The daemon closes a healthy browser on purpose, to relaunch it (e.g. a memory limit)."""

    reason: Reason
    message: str


# Fields that SessionStatus shows: setting any of them drops the cached status.
_STATUS_FIELDS = frozenset(
    {
        "state", "since", "attempt", "reason", "message", "last_error", "qr", "phone_offline", "owner_uid",
        "pairing_code", "web_version", "web_state", "linked",
    }
)

# Counts status changes of every session, the creation of one included (its
# __init__ sets status fields): a reply built from all statuses stays good while
# this number stays put, except for ``busy``, which comes from the lock.
_status_generation = 0


def status_generation() -> int:
    return _status_generation


class Session:
    _status_cache: tuple[SessionStatus, msgspec.Raw] | None = None

    def __setattr__(self, name: str, value: object) -> None:
        if name in _STATUS_FIELDS:
            global _status_generation
            _status_generation += 1
            object.__setattr__(self, "_status_cache", None)
        object.__setattr__(self, name, value)

    def __init__(self, session_id: str, ctx: SessionContext, owner_uid: int | None = None) -> None:
        self.id = session_id
        self.ctx = ctx
        self.owner_uid = owner_uid
        self.options = SessionOptions()
        self.created_at = utcnow()
        self.log = log.bind(session=session_id)

        self.state = State.STOPPED
        self.since = self.created_at
        self.reason: str | None = None
        self.message: str | None = None
        self.last_error: str | None = None
        self.attempt = 0  # reconnect attempts in the current incident
        self.phone_offline = False
        self.history: deque[Transition] = deque(maxlen=ctx.config.history_size)

        self.qr: QrCode | None = None
        self.pairing_code: PairingCode | None = None
        self._code_seq = 0
        self._code_refreshes = 0
        self._code_deadline: float | None = None  # the code phase ends: code_timeout
        self._code_renew_at: float | None = None  # the shown code runs out: ask for the next
        self._code_wanted = False  # the page asks for a login and no code is on it
        # Page events already queued when the current code was given: an "idle" among
        # them is about the code it replaced (both ran out at once), not the new one.
        self._stale_events = 0
        self.web_version: str | None = None
        self.web_state: str | None = None
        self.page_missing: tuple[str, ...] = ()  # contract items the live page lacks
        self._qr_seq = 0
        self._qr_refreshes = 0
        self._qr_deadline: float | None = None
        self._qr_pending: QrCode | None = None
        self._qr_flush_at: float | None = None

        # trio clock times
        now = trio.current_time()
        self.last_touch = now
        self.state_changed_at = now
        self.last_attempt_at: float | None = None
        self._connected_since: float | None = None
        # The profile holds a login: this session reached `connected` and was not logged
        # out since. Kept in the registry: after a restart a linked session whose page
        # asks for a login was unlinked meanwhile, not a new one.
        self.linked = False
        self._offline_since: float | None = None

        self.should_run = False  # as last recorded in the registry (the manager keeps it)
        self.lock = trio.Lock()  # held by connect/disconnect/logout/delete, never by reads
        self.deleted = False
        self._stop_requested = False  # the browser is going away on purpose: not a crash
        self._drive_scope: trio.CancelScope | None = None  # the runner following a live browser
        self._recycle: _Recycle | None = None  # a recycle asked for and not yet done
        self._last_recycle_at: float | None = None
        self._browser: Browser | None = None
        self._runner: trio.CancelScope | None = None
        self._runner_done = trio.Event()
        self._runner_done.set()

    # ------------------------------------------------------------------ reads

    @property
    def process_group(self) -> int | None:
        """The live browser's process group, if it has processes."""
        return self._browser.process_group if self._browser is not None else None

    def status(self) -> SessionStatus:
        return self._cached_status()[0]

    def status_raw(self) -> msgspec.Raw:
        """The status, msgpack-encoded: ``list`` of many sessions reuses these bytes."""
        return self._cached_status()[1]

    def _cached_status(self) -> tuple[SessionStatus, msgspec.Raw]:
        # Status is read far more often than it changes (status polls, list of
        # thousands); build it once per change. ``busy`` is not a field: check it.
        cached = self._status_cache
        if cached is None or cached[0].busy != self.lock.locked():
            status = self._build_status()
            cached = (status, to_raw(status))
            object.__setattr__(self, "_status_cache", cached)
        return cached

    def _build_status(self) -> SessionStatus:
        return SessionStatus(
            session=self.id,
            state=self.state,
            since=self.since,
            attempt=self.attempt,
            reason=self.reason,
            message=self.message,
            last_error=self.last_error,
            qr=self.qr,
            phone_offline=self.phone_offline,
            owner_uid=self.owner_uid,
            created_at=self.created_at,
            busy=self.lock.locked(),
            pairing_code=self.pairing_code,
            web_version=self.web_version,
            web_state=self.web_state,
            linked=self.linked,
        )

    def touch(self) -> None:
        self.last_touch = trio.current_time()

    @property
    def links_by_code(self) -> bool:
        return bool(self.options.phone_number)

    def _set_linked(self, linked: bool) -> None:
        if self.linked != linked:
            self.linked = linked
            self.ctx.on_linked(self)

    # ------------------------------------------------------------------ transitions

    def transition(self, to: State, reason: Reason | str, message: str = "") -> bool:
        """Move to ``to`` if the table allows it. A forbidden move is a bug: logged, counted, ignored."""
        src = self.state
        reason = Reason(reason).value if isinstance(reason, Reason) else reason
        if not is_allowed(src, to):
            self.ctx.metrics.invalid_transitions.labels(src.value, to.value).inc()
            self.log.error("invalid_transition", from_state=src.value, to_state=to.value, reason=reason)
            return False
        if to in NEEDS_REASON and not reason:
            reason = Reason.INTERNAL_ERROR.value
        if to != State.WAITING_QR:
            self.qr = None
            self._qr_pending = None
            self._qr_flush_at = None
            self._qr_deadline = None
        if to != State.WAITING_CODE:
            self.pairing_code = None
            self._code_deadline = None
            self._code_renew_at = None
            self._code_wanted = False
        if to != State.CONNECTED:
            self.phone_offline = False
            self._offline_since = None
        record = Transition(
            at=utcnow(), from_state=src, to_state=to, reason=reason, attempt=self.attempt, message=message
        )
        self.state = to
        self.since = record.at
        self.reason = reason
        self.message = message or None
        self.state_changed_at = trio.current_time()
        self.history.append(record)
        self.ctx.metrics.transitions.labels(src.value, to.value).inc()
        self.log.info(
            "state_changed",
            from_state=src.value,
            to_state=to.value,
            reason=reason,
            attempt=self.attempt,
            message=message or None,
        )
        self.ctx.hub.publish(StateChanged(record, self.status()))
        return True

    def _error(self, code: str, message: str) -> None:
        self.last_error = message
        self.ctx.hub.publish(SessionError(self.id, code, message))

    # ------------------------------------------------------------------ operations (caller holds self.lock)

    def begin(self, reason: Reason = Reason.CONNECT_REQUESTED) -> None:
        """Start a new attempt from a restartable state: STARTING, then the runner takes over."""
        self.attempt = 0
        self._connected_since = None
        self._stop_requested = False
        self.last_attempt_at = trio.current_time()
        if not self.transition(State.STARTING, reason):
            return
        scope = trio.CancelScope()
        done = trio.Event()
        self._runner = scope
        self._runner_done = done
        self.ctx.nursery.start_soon(self._run, scope, done)

    def recycle(self, reason: Reason, message: str) -> bool:
        """Close the browser of a ``connected`` session and relaunch it on its saved
        auth (``reconnecting`` with ``reason``, then back to ``connected`` without a
        QR). Not a crash. False if the session is not connected with a live browser."""
        if self.state != State.CONNECTED or self._drive_scope is None or self._recycle is not None:
            return False
        self._recycle = _Recycle(reason, message)
        self._drive_scope.cancel()
        return True

    async def stop_runner(self) -> None:
        """Cancel the runner and wait until its browser is closed."""
        if self._runner is not None:
            self._runner.cancel()
        await self._runner_done.wait()

    # Shielded: once begun, a stop runs to its end even if the client that asked
    # vanishes, or the session would be left in a live state with no browser.
    # Each step is bounded by browser_stop_timeout.

    async def stop(self, to: State, reason: Reason, message: str = "") -> None:
        with trio.CancelScope(shield=True):
            await self.stop_runner()
            if self.state != to:
                self.transition(to, reason, message)

    async def logout(self) -> None:
        with trio.CancelScope(shield=True):
            browser = self._browser
            if browser is not None and self.state in (State.CONNECTED, State.AUTHENTICATING):
                # The page logout ends the browser's event stream; the runner must
                # not mistake that for a crash and start reconnecting.
                self._stop_requested = True
                with trio.move_on_after(self.ctx.config.browser_stop_timeout):
                    await browser.logout()
            await self.stop_runner()
            await self.ctx.driver.wipe_auth(self.id)
            self._set_linked(False)
            if self.state != State.LOGGED_OUT:
                self.transition(State.LOGGED_OUT, Reason.LOGOUT_REQUESTED, "logged out on request; auth wiped")

    # ------------------------------------------------------------------ the runner

    async def _run(self, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                await self._lifecycle()
        except Exception as exc:  # a bug in a session must not take the daemon down
            self.log.exception("session_runner_crashed")
            self.last_error = f"internal error: {type(exc).__name__}: {exc}"
            self.transition(State.FAILED, Reason.INTERNAL_ERROR, self.last_error)
        finally:
            self._runner = None
            if self.state in NEEDS_REASON:
                self.ctx.on_settled(self)
            done.set()

    async def _lifecycle(self) -> None:
        relaunching = False
        while True:
            outcome: _Terminal | _Gone | None = None
            recycle: _Recycle | None = None
            try:
                async with self._open_browser() as browser:
                    try:
                        with trio.CancelScope() as drive_scope:
                            self._drive_scope = drive_scope
                            outcome = await self._drive(browser)
                    finally:
                        self._drive_scope = None
                        recycle, self._recycle = self._recycle, None
            except LaunchError as exc:
                self.ctx.metrics.launches.labels("error").inc()
                self._error(Reason.LAUNCH_ERROR.value, f"launch failed: {exc}")
                if not relaunching:
                    self.transition(State.FAILED, Reason.LAUNCH_ERROR, str(exc))
                    return
                if not await self._reconnect_after(Reason.LAUNCH_ERROR, str(exc)):
                    return
                continue
            if self._stop_requested:
                return  # the operation that asked for the stop (logout) sets the state
            if outcome is None:  # the drive was cancelled by recycle()
                assert recycle is not None
                await trio.lowlevel.checkpoint_if_cancelled()  # a stop came meanwhile: no reconnecting
                if not await self._after_recycle(recycle):
                    return
                relaunching = True
                continue
            if isinstance(outcome, _Terminal):
                if outcome.wipe_auth:
                    await self.ctx.driver.wipe_auth(self.id)
                    self._set_linked(False)
                self.transition(outcome.state, outcome.reason, outcome.message)
                return
            self.ctx.metrics.browser_crashes.labels(outcome.kind).inc()
            self._error(Reason.BROWSER_CRASHED.value, f"{outcome.kind}: {outcome.message}")
            reason = Reason.CONNECTION_LOST if outcome.kind == "connection_lost" else Reason.BROWSER_CRASHED
            if not await self._reconnect_after(reason, f"{outcome.kind}: {outcome.message}"):
                return
            relaunching = True

    @asynccontextmanager
    async def _open_browser(self) -> AsyncIterator[Browser]:
        """The session's browser for the block. A launch slot is held only while it
        starts; when the block ends the driver closes it (shielded, bounded)."""
        metrics = self.ctx.metrics
        async with AsyncExitStack() as stack:
            metrics.launch_queue.inc()
            queued = True
            try:
                async with self.ctx.launch_slots:
                    metrics.launch_queue.dec()
                    queued = False
                    browser = await stack.enter_async_context(
                        self.ctx.driver.open(LaunchOptions(self.id, self.options.whatsapp_url))
                    )
            finally:
                if queued:
                    metrics.launch_queue.dec()
            metrics.launches.labels("ok").inc()
            self._browser = browser
            try:
                yield browser
            finally:
                # Closed here, bounded and logged, before the driver's own exit (which
                # then finds it closed), so a stop never waits longer than configured.
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(self.ctx.config.browser_stop_timeout) as cs:
                        await browser.close()
                    if cs.cancelled_caught:
                        self.log.error("browser_close_timeout", timeout=self.ctx.config.browser_stop_timeout)
                self._browser = None

    async def _reconnect_after(self, reason: Reason, message: str) -> bool:
        """Count a reconnect attempt and sleep its backoff; False (and FAILED) once the cap is hit."""
        cfg = self.ctx.config
        now = trio.current_time()
        if self._connected_since is not None and now - self._connected_since >= cfg.reconnect_reset_after:
            self.attempt = 0  # the previous incident is over: the session held for long enough
        self._connected_since = None
        if self.attempt >= cfg.reconnect_max_attempts:
            self.transition(
                State.FAILED,
                Reason.MAX_RECONNECTS,
                f"gave up after {self.attempt} reconnect attempts; last error: {message}",
            )
            return False
        self.attempt += 1
        self.ctx.metrics.reconnects.inc()
        if self.state != State.RECONNECTING:
            self.transition(State.RECONNECTING, reason, message)
        delay = self._backoff(self.attempt)
        self.log.info("reconnect_scheduled", attempt=self.attempt, delay=round(delay, 3), reason=reason.value)
        await trio.sleep(delay)
        return True

    async def _after_recycle(self, recycle: _Recycle) -> bool:
        """Enter ``reconnecting`` after a recycle; False (and FAILED) once reconnects run out.

        A recycle is not a crash and costs no reconnect attempt, unless it comes
        less than ``reconnect_reset_after`` after the previous one: then it counts as
        a reconnect (with its backoff), so a browser that is over the limit right
        after every launch ends ``failed`` (``max_reconnects``) instead of looping."""
        cfg = self.ctx.config
        now = trio.current_time()
        self.ctx.metrics.session_recycles.labels(recycle.reason.value).inc()
        self.log.warning("session_recycled", reason=recycle.reason.value, message=recycle.message)
        previous, self._last_recycle_at = self._last_recycle_at, now
        if previous is not None and now - previous < cfg.reconnect_reset_after:
            return await self._reconnect_after(recycle.reason, recycle.message)
        if self._connected_since is not None and now - self._connected_since >= cfg.reconnect_reset_after:
            self.attempt = 0
        self._connected_since = None
        self.transition(State.RECONNECTING, recycle.reason, recycle.message)
        return True

    def _backoff(self, attempt: int) -> float:
        cfg = self.ctx.config
        return cfg.reconnect_delay(attempt, self.ctx.rng.uniform(1 - cfg.reconnect_jitter, 1 + cfg.reconnect_jitter))

    async def _drive(self, browser: Browser) -> _Terminal | _Gone:
        """Follow the page until the browser is gone or the session reaches an end."""
        cfg = self.ctx.config
        while True:
            if self._code_wanted:
                outcome = await self._next_code(browser)
                if outcome is not None:
                    return outcome
            wake = math.inf
            if self.state == State.WAITING_QR and self._qr_deadline is not None:
                wake = self._qr_deadline
            if self._qr_flush_at is not None:
                wake = min(wake, self._qr_flush_at)
            if self._offline_since is not None:
                wake = min(wake, self._offline_since + cfg.phone_offline_grace)
            for at in (self._code_deadline, self._code_renew_at):
                if at is not None:
                    wake = min(wake, at)
            event: PageEvent | None = None
            with trio.move_on_at(wake):
                try:
                    event = await browser.events.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return _Gone("exited", "the browser's event stream ended")
            now = trio.current_time()
            if self._qr_flush_at is not None and now >= self._qr_flush_at:
                self._flush_qr()
            if event is None:
                grace = cfg.phone_offline_grace
                if self._offline_since is not None and now >= self._offline_since + grace:
                    self._offline_since = None
                    return _Gone("connection_lost", f"the connection to WhatsApp was down for {grace:g} s")
                if self._qr_deadline is not None and now >= self._qr_deadline:
                    return _Terminal(State.FAILED, Reason.QR_TIMEOUT, f"no scan within {cfg.qr_timeout:g} s")
                if self._code_deadline is not None and now >= self._code_deadline:
                    return _Terminal(
                        State.FAILED,
                        Reason.CODE_TIMEOUT,
                        f"no pairing code entered within {cfg.pairing_code_timeout:g} s",
                    )
                if self._code_renew_at is not None and now >= self._code_renew_at:
                    self._code_renew_at = None
                    self._code_wanted = True
                continue
            stale, self._stale_events = self._stale_events > 0, max(0, self._stale_events - 1)
            outcome = await self._on_page_event(browser, event, stale)
            if outcome is not None:
                return outcome

    async def _on_page_event(
        self, browser: Browser, event: PageEvent, stale: bool = False
    ) -> _Terminal | _Gone | None:
        cfg = self.ctx.config
        if isinstance(event, PageInfo):
            self._on_page_info(event)
            return None
        if isinstance(event, LoginRequired):
            return self._on_login_required(event, stale)
        if isinstance(event, QrShown):
            if self.links_by_code:
                return None  # the page rotates QRs under the code; nobody scans them
            return self._on_qr(event)
        if isinstance(event, QrExpired):
            if self.links_by_code:
                return None  # LoginRequired(idle) asks for the next code
            if self.state == State.WAITING_QR and self._qr_budget_left():
                self.log.info("qr_reload", refreshes=self._qr_refreshes)
                await browser.reload_qr()
                return None
            return _Terminal(State.FAILED, Reason.QR_TIMEOUT, "the QR codes ran out without a scan")
        if isinstance(event, Loading):
            if self.state in (State.STARTING, State.WAITING_QR, State.WAITING_CODE, State.RECONNECTING):
                why = {
                    State.WAITING_QR: Reason.QR_SCANNED,
                    State.WAITING_CODE: Reason.CODE_ENTERED,
                }.get(self.state, Reason.AUTH_RESTORED)
                self.transition(State.AUTHENTICATING, why)
            return None
        if isinstance(event, AppShown):
            if self.state != State.CONNECTED and self.transition(State.CONNECTED, Reason.APP_LOADED):
                self._connected_since = trio.current_time()
                self._set_linked(True)
            return None
        if isinstance(event, LoggedOut):
            whatsapps = f" (WhatsApp's reason: {event.reason})" if event.reason else ""
            return _Terminal(
                State.LOGGED_OUT,
                Reason.LOGGED_OUT_BY_PHONE,
                f"the device was logged out{whatsapps}; auth wiped",
                wipe_auth=True,
            )
        if isinstance(event, Conflict):
            takeover = self.options.takeover_on_conflict
            if cfg.takeover_on_conflict if takeover is None else takeover:
                self.log.info("conflict_takeover")
                await browser.take_over()
                return None
            return _Terminal(State.FAILED, Reason.CONFLICT, "WhatsApp is open in another window")
        if isinstance(event, Refused):
            if event.kind == "deprecated":
                return _Terminal(
                    State.FAILED,
                    Reason.WEB_VERSION_DEPRECATED,
                    f"WhatsApp refuses this web version ({self.web_version or 'unknown'}): state {event.state}",
                )
            return _Terminal(State.FAILED, Reason.BLOCKED, f"WhatsApp blocks this device: state {event.state}")
        if isinstance(event, PhoneOffline):
            self.phone_offline = event.offline and self.state == State.CONNECTED
            # The page usually recovers by itself; only a long outage is worth a relaunch.
            self._offline_since = trio.current_time() if self.phone_offline else None
            self.log.info("phone_offline" if event.offline else "phone_online")
            return None
        if isinstance(event, BrowserGone):
            return _Gone(event.kind, event.message)
        raise AssertionError(f"unknown page event {event!r}")

    def _on_page_info(self, info: PageInfo) -> None:
        if info.version != self.web_version and info.version is not None:
            self.log.info("web_version", web_version=info.version)
        if info.unknown and info.web_state != self.web_state and info.web_state is not None:
            # Never a reason to fail: WhatsApp adds states; we show it and carry on.
            self.ctx.metrics.web_unknown_states.labels(info.web_state).inc()
            self.log.warning("web_state_unknown", web_state=info.web_state)
        if info.missing != self.page_missing:
            if info.missing:
                self.log.warning("page_contract_missing", missing=list(info.missing))
            self.page_missing = info.missing
        self.web_version = info.version or self.web_version
        self.web_state = info.web_state

    def _on_login_required(self, event: LoginRequired, stale: bool) -> _Terminal | None:
        if self.state == State.CONNECTED or (
            self.linked and self.state in (State.STARTING, State.RECONNECTING, State.AUTHENTICATING)
        ):
            # A linked page never asks for a login: the login is gone, whatever the URL
            # says. Also on the relaunch of a linked profile: the phone unlinked it while
            # no browser ran (between a crash and its reconnect, or while stopped).
            return _Terminal(
                State.LOGGED_OUT,
                Reason.LOGGED_OUT_BY_PHONE,
                "the page asks for a new login: this device is no longer linked; auth wiped",
                wipe_auth=True,
            )
        if self.links_by_code:
            if self.pairing_code is None:
                self._code_wanted = True
            elif event.idle and not stale:
                self._code_wanted = True  # the page's code ran out before our renewal timer
        return None

    # ------------------------------------------------------------------ pairing code

    async def _next_code(self, browser: Browser) -> _Terminal | _Gone | None:
        """Ask the page for a (new) pairing code, within the phase's refresh cap."""
        cfg = self.ctx.config
        self._code_wanted = False
        first = self.state != State.WAITING_CODE
        if not first:
            self._code_refreshes += 1
            if self._code_refreshes > cfg.pairing_code_max_refreshes:
                return _Terminal(
                    State.FAILED,
                    Reason.CODE_TIMEOUT,
                    f"no pairing code entered after {cfg.pairing_code_max_refreshes} new codes",
                )
        try:
            code = await browser.request_pairing_code(self.options.phone_number or "")
        except PairingError as exc:
            return _Gone("pairing_failed", str(exc))
        if first:
            self._code_refreshes = 0
            self._code_seq = 0
        self._code_seq += 1
        now = utcnow()
        self.pairing_code = PairingCode(
            session=self.id,
            code=f"{code[:4]}-{code[4:]}",
            generated_at=now,
            expires_at=now + timedelta(seconds=cfg.pairing_code_interval),
            seq=self._code_seq,
        )
        self._stale_events = browser.events.statistics().current_buffer_used
        self._code_renew_at = trio.current_time() + cfg.pairing_code_interval
        self.ctx.metrics.pairing_codes.inc()
        if first:
            # Set before the transition so its state event already carries the code.
            self.transition(State.WAITING_CODE, Reason.CODE_SHOWN)
            self._code_deadline = trio.current_time() + cfg.pairing_code_timeout
        # A code is a login credential: the log gets a fingerprint, never the code.
        self.log.info(
            "pairing_code_published", seq=self._code_seq, code_fingerprint=qr_fingerprint(code),
            expires_at=self.pairing_code.expires_at.isoformat(),
        )
        self.ctx.hub.publish(PairingCodeUpdated(self.pairing_code))
        return None

    # ------------------------------------------------------------------ QR

    def _qr_budget_left(self) -> bool:
        cfg = self.ctx.config
        if self._qr_deadline is not None and trio.current_time() >= self._qr_deadline:
            return False
        return cfg.qr_max_refreshes is None or self._qr_refreshes < cfg.qr_max_refreshes

    def _on_qr(self, event: QrShown) -> _Terminal | None:
        cfg = self.ctx.config
        self.ctx.metrics.qr_generated.inc()
        if self.state == State.WAITING_QR:
            # A refresh: the same phase goes on, no transition.
            self._qr_refreshes += 1
            if cfg.qr_max_refreshes is not None and self._qr_refreshes > cfg.qr_max_refreshes:
                return _Terminal(
                    State.FAILED, Reason.QR_TIMEOUT, f"no scan after {cfg.qr_max_refreshes} QR refreshes"
                )
        else:
            if not is_allowed(self.state, State.WAITING_QR):
                # Drivers announce a login with LoginRequired first, which ends a linked
                # session; a QR alone where no login phase can begin changes nothing.
                self.log.warning("qr_ignored", state=self.state.value)
                return None
            self._qr_refreshes = 0
            self._qr_seq = 0
        self._qr_seq += 1
        now = utcnow()
        qr = QrCode(
            session=self.id,
            data=event.ref,
            generated_at=now,
            expires_at=now + timedelta(seconds=event.ttl),
            seq=self._qr_seq,
        )
        self.qr = qr
        if self.state != State.WAITING_QR:
            # Set before the transition so its state event already carries the QR.
            self.transition(State.WAITING_QR, Reason.QR_SHOWN)
            self._qr_deadline = trio.current_time() + cfg.qr_timeout
        self._qr_pending = qr
        if self._qr_flush_at is None:
            # Trailing edge: the window opens now and delivers whatever QR is latest when it closes.
            self._qr_flush_at = trio.current_time() + cfg.qr_debounce
        return None

    def _flush_qr(self) -> None:
        pending, self._qr_pending, self._qr_flush_at = self._qr_pending, None, None
        if pending is not None and self.state == State.WAITING_QR:
            self.ctx.metrics.qr_events.inc()
            # A QR is a login credential: the log gets a fingerprint to correlate, never the payload.
            self.log.info("qr_published", seq=pending.seq, qr_fingerprint=qr_fingerprint(pending.data),
                          expires_at=pending.expires_at.isoformat())
            self.ctx.hub.publish(QrUpdated(pending))
