"""One session's I/O: its runner task, its browser, and the effects of its machine.

The decisions are the machine's (``machine.py``); a session feeds it events
and applies the effects it returns: it launches and closes the browser, waits
on the browser's events until the machine's next deadline, calls the browser,
wipes the saved auth, and publishes, logs, counts and saves what the machine
says. It is the only caller of its browser and of the driver on its behalf.

The machine's view is the session's last known state: status, qr and history
read it without waiting, whatever the runner task or an operation is doing.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import msgspec
import trio

from ...protocol import Reason, SessionStatus, State, StateChanged, Transition, to_raw
from ..browser.base import (
    Browser,
    BrowserGone,
    Driver,
    LaunchError,
    LaunchOptions,
    MessageEvent,
    PairingError,
    SendError,
    SentText,
)
from ..ops.config import Config
from ..ops.log import get_logger
from ..ops.metrics import DaemonMetrics
from . import events as ev
from .events import Phase
from .hub import Hub
from .machine import Machine, utcnow
from .options import SessionOptions
from .states import IllegalTransition

__all__ = ["Session", "SessionContext", "utcnow"]

log = get_logger("session")


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
    # Told when a field of some session's status changed (the manager's list cache).
    on_status_changed: Callable[[], None] = lambda: None
    # Told of every message and ack a session's page reports (the inbox, daemon/messages/).
    on_message: Callable[[Session, MessageEvent], None] = lambda session, event: None
    host: str | None = None  # this host's id in a fleet (status.host); None on a host of its own


StopEvent = ev.Disconnect | ev.IdleTimeout | ev.Inactive


class Session:
    def __init__(
        self,
        session_id: str,
        ctx: SessionContext,
        owner_uid: int | None = None,
        *,
        created_at: datetime | None = None,
        options: SessionOptions | None = None,
        linked: bool = False,
    ) -> None:
        self.id = session_id
        self.ctx = ctx
        self.owner_uid = owner_uid
        self.created_at = created_at or utcnow()
        self.log = log.bind(session=session_id)
        now = trio.current_time()
        self.machine = Machine(session_id, ctx.config, now, options=options, linked=linked, rng=ctx.rng)
        self.last_touch = now  # trio time of the last RPC that named it
        self.last_attempt_at: float | None = None  # for connect's rate limit (the manager keeps it)
        self.should_run = False  # as last recorded in the registry (the manager keeps it)
        self.lock = trio.Lock()  # held by connect/disconnect/logout/delete/recycle, never by reads
        self.deleted = False
        self._status_cache: tuple[ev.View, SessionStatus, msgspec.Raw] | None = None
        self._browser: Browser | None = None
        self._drive_scope: trio.CancelScope | None = None  # the runner following a live browser
        self._runner: trio.CancelScope | None = None
        self._runner_done = trio.Event()
        self._runner_done.set()
        self._changed = trio.Event()  # set (and replaced) at every change of the view

    # ------------------------------------------------------------------ reads

    @property
    def state(self) -> State:
        return self.machine.view.state

    @property
    def view(self) -> ev.View:
        return self.machine.view

    @property
    def history(self) -> deque[Transition]:
        return self.machine.history

    @property
    def options(self) -> SessionOptions:
        return self.machine.options

    @options.setter
    def options(self, options: SessionOptions) -> None:
        self.machine.options = options  # read at the machine's next decision

    @property
    def process_group(self) -> int | None:
        """The live browser's process group, if it has processes."""
        return self._browser.process_group if self._browser is not None else None

    def status(self) -> SessionStatus:
        return self._cached_status()[1]

    def status_raw(self) -> msgspec.Raw:
        """The status, msgpack-encoded: ``list`` of many sessions reuses these bytes."""
        return self._cached_status()[2]

    def _cached_status(self) -> tuple[ev.View, SessionStatus, msgspec.Raw]:
        # Status is read far more often than it changes (status polls, list of
        # thousands); build it once per view. ``busy`` is not in the view: check it.
        cached, view = self._status_cache, self.machine.view
        if cached is None or cached[0] is not view or cached[1].busy != self.lock.locked():
            status = self._build_status(view)
            cached = self._status_cache = (view, status, to_raw(status))
        return cached

    def _build_status(self, view: ev.View) -> SessionStatus:
        proxy = self.machine.settings.proxy
        return SessionStatus(
            session=self.id,
            state=view.state,
            since=view.since,
            attempt=view.attempt,
            reason=view.reason,
            message=view.message,
            last_error=view.last_error,
            qr=view.qr,
            phone_offline=view.phone_offline,
            owner_uid=self.owner_uid,
            created_at=self.created_at,
            busy=self.lock.locked(),
            pairing_code=view.pairing_code,
            web_version=view.web_version,
            web_state=view.web_state,
            linked=view.linked,
            proxy=proxy.masked if proxy is not None else None,  # never the password
            host=self.ctx.host,
        )

    def touch(self) -> None:
        self.last_touch = trio.current_time()

    # ------------------------------------------------------------------ the machine's effects

    def _handle(self, event: ev.Event) -> list[ev.Effect]:
        """Feed the machine ``event`` and apply its effects, except the browser calls
        (the caller awaits those: ``_follow``). Returns every effect."""
        before = self.machine.view
        try:
            effects = self.machine.handle(event, trio.current_time())
        except IllegalTransition as exc:
            self.ctx.metrics.invalid_transitions.labels(exc.from_state.value, exc.to_state.value).inc()
            self.log.error("invalid_transition", from_state=exc.from_state.value, to_state=exc.to_state.value,
                           trigger=exc.event)
            raise
        if self.machine.view is not before:
            self.ctx.on_status_changed()
            self._changed.set()
            self._changed = trio.Event()
        for effect in effects:
            self._apply(effect)
        return effects

    def _apply(self, effect: ev.Effect) -> None:
        ctx = self.ctx
        if isinstance(effect, ev.Transitioned):
            record = effect.record
            ctx.metrics.transitions.labels(record.from_state.value, record.to_state.value).inc()
            self.log.info("state_changed", from_state=record.from_state.value, to_state=record.to_state.value,
                          reason=record.reason, attempt=record.attempt, message=record.message or None)
            status = self.status() if effect.view is self.machine.view else self._build_status(effect.view)
            ctx.hub.publish(StateChanged(record, status))
        elif isinstance(effect, ev.Publish):
            ctx.hub.publish(effect.event)
        elif isinstance(effect, ev.Log):
            getattr(self.log, effect.level)(effect.event, **effect.fields)
        elif isinstance(effect, ev.Count):
            counter = getattr(ctx.metrics, effect.counter)
            (counter.labels(*effect.labels) if effect.labels else counter).inc()
        elif isinstance(effect, ev.SaveLinked):
            ctx.on_linked(self)
        elif isinstance(effect, ev.Settled):
            ctx.on_settled(self)
        elif isinstance(effect, ev.StartRunner):
            scope, done = trio.CancelScope(), trio.Event()
            self._runner, self._runner_done = scope, done
            ctx.nursery.start_soon(self._run, scope, done)
        elif isinstance(effect, ev.CloseBrowser):
            if self._drive_scope is not None:
                self._drive_scope.cancel()
        # Browser calls (ReloadQr, TakeOver, RequestPairingCode, LogOutPage) are awaited by their caller.

    async def _follow(self, browser: Browser, effects: list[ev.Effect]) -> None:
        """Await the browser calls among ``effects``, feeding their results back."""
        for effect in effects:
            if isinstance(effect, ev.ReloadQr):
                await browser.reload_qr()
            elif isinstance(effect, ev.TakeOver):
                await browser.take_over()
            elif isinstance(effect, ev.RequestPairingCode):
                try:
                    code = await browser.request_pairing_code(effect.phone_number)
                except PairingError as exc:
                    await self._follow(browser, self._handle(ev.CodeFailed(str(exc))))
                else:
                    queued = browser.events.statistics().current_buffer_used
                    await self._follow(browser, self._handle(ev.CodeGiven(code, queued)))

    # ------------------------------------------------------------------ messages

    async def wait_changed(self) -> None:
        """Return at the next change of the session's state (or of anything in its view)."""
        await self._changed.wait()

    def _sending_browser(self) -> Browser:
        browser = self._browser
        if browser is None or self.state != State.CONNECTED:
            raise SendError(f"the session is {self.state.value}, not connected")
        return browser

    async def new_message_id(self) -> str:
        return await self._sending_browser().new_message_id()

    async def send_text(self, to: str, text: str, message_id: str) -> SentText:
        """Send through the live page; SendError when there is none or it cannot."""
        return await self._sending_browser().send_text(to, text, message_id)

    # ------------------------------------------------------------------ operations (caller holds self.lock)

    def begin(self, reason: Reason = Reason.CONNECT_REQUESTED) -> None:
        """Start a new attempt from a restartable state: STARTING, then the runner takes over."""
        self.last_attempt_at = trio.current_time()
        self._handle(ev.Begin(reason))

    def recycle(self, reason: Reason, message: str) -> bool:
        """Close the browser of a ``connected`` session and relaunch it on its saved
        auth (``reconnecting`` with ``reason``, then back to ``connected`` without a
        QR). Not a crash. False if the session is not connected with a live browser."""
        return any(isinstance(e, ev.CloseBrowser) for e in self._handle(ev.Recycle(reason, message)))

    async def stop_runner(self) -> None:
        """Cancel the runner and wait until its browser is closed."""
        if self._runner is not None:
            self._runner.cancel()
        await self._runner_done.wait()

    # Shielded: once begun, a stop runs to its end even if the client that asked
    # vanishes, or the session would be left in a live state with no browser.
    # Each step is bounded by browser_stop_timeout.

    async def stop(self, event: StopEvent) -> None:
        with trio.CancelScope(shield=True):
            await self.stop_runner()
            self._handle(event)

    async def delete(self) -> None:
        """Stop and wipe the saved auth; the manager forgets the session."""
        await self.stop(ev.Disconnect("session deleted"))
        await self.ctx.driver.wipe_auth(self.id)
        self.deleted = True

    async def shutdown(self) -> None:
        """Close the browser for a daemon shutdown (not shielded: shutdown has its own timeout)."""
        await self.stop_runner()
        self._handle(ev.Shutdown())

    async def fence(self, message: str) -> None:
        """Close the browser because this host lost the session's lease (its process
        group was killed already): the last status says ``fenced``, not ``shutdown``."""
        await self.stop_runner()
        self._handle(ev.Fenced(message))

    async def logout(self) -> None:
        with trio.CancelScope(shield=True):
            browser = self._browser
            if any(isinstance(e, ev.LogOutPage) for e in self._handle(ev.LogoutStarted(browser is not None))):
                assert browser is not None
                with trio.move_on_after(self.ctx.config.browser_stop_timeout):
                    await browser.logout()
            await self.stop_runner()
            await self.ctx.driver.wipe_auth(self.id)
            self._handle(ev.LogoutDone())

    # ------------------------------------------------------------------ the runner

    async def _run(self, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                await self._lifecycle()
        except Exception as exc:  # a bug in a session must not take the daemon down
            self.log.exception("session_runner_crashed")
            self._handle(ev.RunnerCrashed(f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            self._runner = None
            self._handle(ev.RunnerEnded())
            done.set()

    async def _lifecycle(self) -> None:
        """Do what the machine's phase says until it has nothing left to do."""
        while True:
            phase = self.machine.phase
            if phase is Phase.LAUNCHING:
                await self._launch()
            elif phase is Phase.BACKOFF:
                await trio.sleep_until(self.machine.next_deadline())
                self._handle(ev.Tick())
            elif phase is Phase.WIPING:
                await self.ctx.driver.wipe_auth(self.id)
                self._handle(ev.AuthWiped())
            else:
                return

    async def _launch(self) -> None:
        try:
            async with self._open_browser() as browser:
                self._handle(ev.Launched())
                await self._drive(browser)
        except LaunchError as exc:
            self.ctx.metrics.launches.labels("error").inc()
            self._handle(ev.LaunchFailed(str(exc), exc.reason))
            return
        if self.machine.recycling:
            await trio.lowlevel.checkpoint_if_cancelled()  # a stop came meanwhile: no reconnecting
        self._handle(ev.BrowserClosed())

    async def _drive(self, browser: Browser) -> None:
        """Follow the page until the machine closes the browser (or a recycle cancels this)."""
        with trio.CancelScope() as scope:
            self._drive_scope = scope
            try:
                while self.machine.phase is Phase.DRIVING:
                    event: ev.Event = ev.Tick()
                    with trio.move_on_at(self.machine.next_deadline()):
                        try:
                            event = await browser.events.receive()
                        except (trio.EndOfChannel, trio.ClosedResourceError):
                            event = BrowserGone("exited", "the browser's event stream ended")
                    await self._follow(browser, self._handle(event))
            finally:
                self._drive_scope = None

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
                    settings = self.machine.settings
                    launch = LaunchOptions(
                        self.id,
                        settings.whatsapp_url,
                        settings.proxy,
                        on_message=lambda event: self.ctx.on_message(self, event),
                    )
                    browser = await stack.enter_async_context(self.ctx.driver.open(launch))
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
