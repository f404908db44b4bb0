"""All sessions: admission, per-session locks, rate limits, the launch queue, cleanup.

Operations that change a session (connect, disconnect, logout, delete, recycle)
take its lock, so two of them never interleave. Reads (status, list, qr,
history, watch) never take it: they answer from the session's last known state.
The sessions are the manager's own: the layers above get operations and reads
(``peek``, ``session_ids``, ``states``, ``browser_groups``), never a Session.
"""

from __future__ import annotations

import builtins
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, KeysView
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import msgspec
import trio

from ...errors import Busy, InvalidArgument, LimitExceeded, NotFound, PermissionDenied, RateLimited, Unavailable
from ...protocol import (
    HealthCheck,
    PairingCode,
    QrCode,
    Reason,
    SessionStatus,
    State,
    Transition,
    to_raw,
    validate_session_id,
)
from ..browser.base import Driver, MessageEvent, Simulator
from ..ops.config import Config
from ..ops.log import get_logger
from ..ops.metrics import DaemonMetrics
from .adoption import Adoption
from .caller import ADMIN, Caller
from .events import Disconnect, IdleTimeout, Inactive
from .hub import Hub, Subscriber
from .listing import Listing
from .options import resolve
from .placement import LocalPlacement, Placement
from .registry import MemoryRegistry, Registry, RegistryError, SessionOptions, SessionRecord
from .remote_reads import RemoteReads, merged
from .session import Session, SessionContext
from .states import ACTIVE, RESTARTABLE

log = get_logger("manager")


class SessionManager(Adoption, RemoteReads):
    def __init__(
        self,
        config: Config,
        driver: Driver,
        nursery: trio.Nursery,
        *,
        metrics: DaemonMetrics | None = None,
        registry: Registry | None = None,
        placement: Placement | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.driver = driver
        self.metrics = metrics or DaemonMetrics()
        self.registry: Registry = registry or MemoryRegistry()
        self.placement: Placement = placement or LocalPlacement()
        self.hub = Hub(on_count=self.metrics.watch_subscribers.set)
        self._sessions: dict[str, Session] = {}
        # Bumped when a field of any session's status changes or a session is created:
        # a reply built from all statuses stays good while it stays put (see list_raw).
        self._status_generation = 0
        self._listing = Listing(self._sessions)
        self._deleted_attempts: dict[str, float] = {}  # last attempt of deleted sessions, for the rate limit
        self.closing = False
        self._ctx = SessionContext(
            config=config,
            driver=driver,
            hub=self.hub,
            metrics=self.metrics,
            # trio's Semaphore wakes waiters in FIFO order: launches queue in arrival order.
            launch_slots=trio.Semaphore(config.max_concurrent_launches),
            nursery=nursery,
            rng=rng or random.Random(),
            on_settled=self._settled,
            on_linked=self._linked_changed,
            on_status_changed=self._status_changed,
            host=self.placement.host,
        )
        self.metrics.track_sessions(self.counts_by_state)
        self.metrics.track_pages(self._pages)
        self.metrics.track_proxies(self._proxy_kinds)
        self.metrics.limit_refusals.labels("sessions_per_uid")  # exposed at 0 from the start

    def on_message(self, sink: Callable[[str, MessageEvent], None]) -> None:
        """Where every session's page messages and acks go (the inbox, daemon/messages/)."""
        self._ctx.on_message = lambda session, event: sink(session.id, event)

    def reconfigure(self, config: Config) -> None:
        """Use ``config`` from now on (a reload). Sessions read it at each decision."""
        self.config = config
        self._ctx.config = config
        for session in self._sessions.values():
            session.machine.config = config

    # ------------------------------------------------------------------ lookups
    #
    # ``caller`` (caller.py): an admin sees every session, anybody else only the
    # sessions its uid owns. Another's session is `permission_denied` for a
    # method that names it, and absent from `list`, from a watch of all
    # sessions and from per-session metrics.

    def get(self, session_id: str, caller: Caller = ADMIN) -> Session:
        validate_session_id(session_id)
        self.placement.guard()
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFound(f"no session {session_id!r}", {"session": session_id})
        if not caller.may_use(session.owner_uid):
            raise PermissionDenied(f"session {session_id!r} belongs to another user", {"session": session_id})
        return session

    def visible_to(self, caller: Caller) -> Callable[[str], bool] | None:
        """A test of session ids for what ``caller`` may see; None: everything."""
        if caller.admin:
            return None
        sessions = self._sessions

        def visible(session_id: str) -> bool:
            session = sessions.get(session_id)
            if session is None:
                return self._remote_visible(session_id, caller)  # another host's session
            return caller.may_use(session.owner_uid)

        return visible

    def counts_by_state(self) -> dict[State, int]:
        return dict(Counter(s.state for s in self._sessions.values()))

    def session_ids(self) -> KeysView[str]:
        """The ids of every session (a live, read-only view)."""
        return self._sessions.keys()

    def peek(self, session_id: str) -> SessionStatus | None:
        """A session's status, for the daemon itself: no access check, and it does not
        count as a touch (the inactive sweep ignores it). None: no such session."""
        session = self._sessions.get(session_id)
        return session.status() if session is not None else None

    def states(self) -> Iterator[tuple[State, str | None, datetime]]:
        """(state, reason, since) of every session, for health and metrics."""
        for session in self._sessions.values():
            view = session.view
            yield view.state, view.reason, view.since

    def browser_groups(self) -> dict[str, int]:
        """{session id: process group} of every live browser that has processes."""
        return {sid: g for sid, s in self._sessions.items() if (g := s.process_group) is not None}

    def recycle(self, session_id: str, reason: Reason, message: str, *, group: int | None) -> bool:
        """Close a connected session's browser and relaunch it on its saved auth (a
        memory limit), under the session's lock. ``group``: the process group the
        caller measured; False (nothing done) if the session now has another browser,
        is gone, is not connected with a live browser, or an operation holds its lock
        (it is changing the session: the caller decides again at its next sample)."""
        session = self._sessions.get(session_id)
        if session is None or session.process_group != group or session.lock.locked():
            return False
        session.lock.acquire_nowait()  # free, and nothing runs between the check and this
        try:
            return not session.deleted and session.recycle(reason, message)
        finally:
            session.lock.release()

    def _status_changed(self) -> None:
        self._status_generation += 1

    def status(self, session_id: str, caller: Caller = ADMIN) -> SessionStatus:
        if (remote := self._remote(session_id, caller)) is not None:
            return remote
        session = self.get(session_id, caller)
        session.touch()
        return session.status()

    def status_raw(self, session_id: str, caller: Caller = ADMIN) -> msgspec.Raw:
        """:meth:`status`, encoded (a SessionStatus on the wire): the bytes the
        session keeps for ``list``, so a ``status`` poll encodes nothing."""
        if (remote := self._remote(session_id, caller)) is not None:
            return to_raw(remote)
        session = self.get(session_id, caller)
        session.touch()
        return session.status_raw()

    def list(self, states: Iterable[State] | None = None, caller: Caller = ADMIN) -> builtins.list[SessionStatus]:
        self.placement.guard()
        local = [s.status() for s in self._listing.listed(states, caller)]
        return merged(((s.session, s) for s in local), ((s.session, s) for s in self._remote_listed(states, caller)))

    def list_raw(self, states: Iterable[State] | None = None, caller: Caller = ADMIN) -> msgspec.Raw:
        """The ``list`` result, encoded (a SessionList on the wire); whole replies
        are kept between calls while the status generation stays put (listing.py)."""
        self.placement.guard()
        if remote := self._remote_listed(states, caller):  # several hosts: this one's and the others'
            local = ((s.id, s.status_raw()) for s in self._listing.listed(states, caller))
            return to_raw({"sessions": merged(local, ((s.session, to_raw(s)) for s in remote))})
        return self._listing.raw(states, caller, self._status_generation)

    def qr(self, session_id: str, caller: Caller = ADMIN) -> QrCode:
        qr: QrCode = self._login_credential(session_id, caller, "qr", "QR code")
        return qr

    def pairing_code(self, session_id: str, caller: Caller = ADMIN) -> PairingCode:
        code: PairingCode = self._login_credential(session_id, caller, "pairing_code", "pairing code")
        return code

    def _login_credential(self, session_id: str, caller: Caller, field: str, what: str) -> Any:
        """The session's current QR or pairing code; ``not_found`` outside its phase."""
        if (remote := self._remote(session_id, caller)) is not None:
            return self._remote_credential(remote, field, what)
        session = self.get(session_id, caller)
        session.touch()
        value = getattr(session.view, field)
        if value is None:
            raise NotFound(
                f"session {session_id!r} has no {what} (state {session.state.value})",
                {"session": session_id, "state": session.state.value},
            )
        return value

    def _pages(self) -> Iterator[tuple[str, str | None, dict[str, str]]]:
        """Per live browser: its web version and the contract items its page lacks."""
        needed = set(self._needed_items())
        for session in self._sessions.values():
            view = session.view
            if view.state in ACTIVE and view.state != State.RECONNECTING and view.web_state is not None:
                lacking = {m: ("required" if m in needed else "optional") for m in session.machine.page_missing}
                yield session.id, view.web_version, lacking

    def _proxy_kinds(self) -> Iterator[str]:
        for session in self._sessions.values():
            if session.state in ACTIVE:
                proxy = session.machine.settings.proxy
                yield proxy.scheme if proxy is not None else "direct"

    def _needed_items(self) -> builtins.list[str]:
        from ..browser.adapter import needed_modules
        from ..browser.contract import load_contract

        if self._needed is None or self._needed[0] != self.config.page_contract:
            try:
                contract = load_contract(self.config.page_contract)
            except ValueError:
                contract = load_contract(None)
            items = needed_modules(contract, pairing=False) + needed_modules(contract, pairing=True)
            self._needed = (self.config.page_contract, items)
        return self._needed[1]

    _needed: tuple[str | None, builtins.list[str]] | None = None

    def history(self, session_id: str, limit: int = 100, caller: Caller = ADMIN) -> builtins.list[Transition]:
        if (remote := self._remote(session_id, caller)) is not None:
            return self._remote_history(remote, limit)
        session = self.get(session_id, caller)
        session.touch()
        return list(session.history)[-limit:]

    # ------------------------------------------------------------------ operations

    @asynccontextmanager
    async def _locked(self, session: Session) -> AsyncIterator[Session]:
        with trio.move_on_after(self.config.operation_timeout) as cs:
            await session.lock.acquire()
        if cs.cancelled_caught:
            raise Busy(
                f"session {session.id!r} is busy with another operation",
                {"session": session.id, "waited": self.config.operation_timeout},
            )
        try:
            if session.deleted:
                raise NotFound(f"no session {session.id!r}", {"session": session.id})
            yield session
        finally:
            session.lock.release()

    def _check_open(self) -> None:
        if self.closing:
            raise Unavailable("the daemon is shutting down")

    async def connect(
        self,
        session_id: str,
        owner_uid: int | None = None,
        options: SessionOptions | None = None,
        caller: Caller = ADMIN,
    ) -> SessionStatus:
        """Start the session unless it is already on its way; idempotent.

        ``options`` (fields left None keep their current value) take effect from
        the next attempt, and are remembered for reconnects and restarts."""
        self._check_open()
        validate_session_id(session_id)
        self.placement.guard()
        session = self._sessions.get(session_id)
        if session is not None and not caller.may_use(session.owner_uid):
            raise PermissionDenied(f"session {session_id!r} belongs to another user", {"session": session_id})
        if session is None:
            if not caller.known:
                raise PermissionDenied("the daemon could not read this connection's credentials", {})
            if len(self._sessions) >= self.config.max_sessions:
                self.metrics.connect_attempts.labels("limit_exceeded").inc()
                self.metrics.limit_refusals.labels("sessions").inc()
                log.warning("limit_refused", limit="sessions", max=self.config.max_sessions, session=session_id)
                raise LimitExceeded(
                    f"the daemon holds its maximum of {self.config.max_sessions} sessions",
                    {"limit": self.config.max_sessions},
                )
            self._check_uid_limit(caller)
            record = await self.placement.claim(session_id, owner_uid, caller)  # several hosts: its lease, the fleet's limits
            if session_id in self._sessions or (record is not None and self.adopt(record)):
                # another connect created it meanwhile, or the fleet's session, now ours as it was
                return await self.connect(session_id, owner_uid, options, caller)
            session = self._sessions[session_id] = Session(session_id, self._ctx, owner_uid)
            self._status_changed()
            # Deleting and re-creating a session must not reset its rate limit.
            session.last_attempt_at = self._deleted_attempts.pop(session_id, None)
            try:
                self._save(session, should_run=False)
            except Unavailable:
                del self._sessions[session_id]  # not recorded: not created
                await self.placement.abandon(session_id)  # nor held: its lease goes back
                raise
        session.touch()
        if session.state in ACTIVE:
            self.metrics.connect_attempts.labels("already_active").inc()
            return session.status()
        async with self._locked(session):
            self._check_open()
            if session.state in ACTIVE:  # another caller started it while we waited
                self.metrics.connect_attempts.labels("already_active").inc()
                return session.status()
            assert session.state in RESTARTABLE
            if session.last_attempt_at is not None:
                wait = session.last_attempt_at + self.config.connect_min_interval - trio.current_time()
                if wait > 0:
                    self.metrics.connect_attempts.labels("rate_limited").inc()
                    self.metrics.rate_limited.inc()
                    raise RateLimited(
                        f"session {session_id!r} started an attempt less than "
                        f"{self.config.connect_min_interval:g} s ago; retry in {wait:.1f} s",
                        {"retry_after": round(wait, 3), "session": session_id},
                    )
            await self.placement.attempt(session_id)  # several hosts: the rate limit across the fleet
            self.metrics.connect_attempts.labels("started").inc()
            if options is not None:
                session.options = session.options.merged(options)
            self._save(session, should_run=True)
            session.begin()
        return session.status()  # after the lock: `busy` describes others' operations, not ours

    def _check_uid_limit(self, caller: Caller) -> None:
        """Refuse a new session to a non-admin that owns ``max_sessions_per_uid``."""
        limit = self.config.max_sessions_per_uid
        if limit is None or caller.admin:
            return  # admins are exempt: only max_sessions bounds them
        uid = caller.uid
        owned = sum(1 for s in self._sessions.values() if s.owner_uid == uid)
        if owned < limit:
            return
        self.metrics.connect_attempts.labels("limit_exceeded").inc()
        self.metrics.limit_refusals.labels("sessions_per_uid").inc()
        log.warning("limit_refused", limit="sessions_per_uid", uid=uid, value=limit)
        raise LimitExceeded(f"uid {uid} already owns its maximum of {limit} sessions", {"limit": limit, "uid": uid})

    async def disconnect(self, session_id: str, caller: Caller = ADMIN) -> SessionStatus:
        session = self.get(session_id, caller)
        session.touch()
        async with self._locked(session):
            self._save(session, should_run=False)  # first: if it fails, nothing changed
            await session.stop(Disconnect("disconnected on request"))
        return session.status()

    async def logout(self, session_id: str, caller: Caller = ADMIN) -> SessionStatus:
        session = self.get(session_id, caller)
        session.touch()
        async with self._locked(session):
            self._save(session, should_run=False)
            await session.logout()
        return session.status()

    async def delete(self, session_id: str, caller: Caller = ADMIN) -> None:
        session = self.get(session_id, caller)
        async with self._locked(session):
            self._unsave(session_id)
            await session.delete()
            del self._sessions[session_id]
            if session.last_attempt_at is not None:
                self._deleted_attempts[session_id] = session.last_attempt_at
        self.hub.finish_session(session_id, "deleted", session.status())
        log.info("session_deleted", session=session_id)

    async def simulate(self, session_id: str, action: str, caller: Caller = ADMIN) -> SessionStatus:
        """Play the phone's (or fate's) part on a scripted session."""
        session = self.get(session_id, caller)
        driver = self.driver
        if not isinstance(driver, Simulator):
            raise Unavailable(f"the {driver.name} driver cannot simulate; use --driver scripted")
        if not driver.simulate(session_id, action):
            raise InvalidArgument(
                f"session {session_id!r} has no running browser to act on (state {session.state.value})",
                {"session": session_id, "state": session.state.value},
            )
        await trio.lowlevel.checkpoint()
        return session.status()

    # ------------------------------------------------------------------ watch

    def subscribe(
        self, session_id: str | None, until: Iterable[State], caller: Caller = ADMIN, *, messages: bool = False
    ) -> tuple[Subscriber, builtins.list[SessionStatus]]:
        """Register a watcher; returns it with the snapshot(s) to send first.

        A non-admin ``caller``'s watch of all sessions sees only its own;
        ``messages``: it also gets the inbox's events."""
        self._check_open()
        until = frozenset(until)
        if until and session_id is None:
            raise InvalidArgument("`until` needs a session: a watch of all sessions has no single final state")
        if session_id is not None and (remote := self._remote(session_id, caller)) is not None:
            snapshots = [remote]
        elif session_id is not None:
            session = self.get(session_id, caller)
            session.touch()
            snapshots = [session.status()]
        else:
            snapshots = self.list(caller=caller)
        sub = Subscriber(
            session_id,
            until,
            self.config.watch_queue_size,
            self.config.watch_qr_interval,
            on_drop=self.metrics.watch_dropped.inc,
            visible=self.visible_to(caller) if session_id is None else None,
            messages=messages,
        )
        self.hub.add(sub)
        if session_id is not None and snapshots[0].state in sub.until:
            sub.finish("until", snapshots[0])
        return sub, snapshots

    def unsubscribe(self, sub: Subscriber) -> None:
        self.hub.remove(sub)
        if sub.session is not None and sub.session in self._sessions:
            self._sessions[sub.session].touch()

    # ------------------------------------------------------------------ for the server
    #
    # What the RPC server needs beyond the operations above, so that it never
    # reaches into the sessions or the driver.

    def driver_health_checks(self) -> builtins.list[HealthCheck]:
        """The browser driver's own entries in the health report."""
        return self.driver.health_checks()

    @property
    def driver_name(self) -> str:
        """The browser driver's name (``version`` reports it)."""
        return self.driver.name

    def final_status(self, session_id: str, caller: Caller = ADMIN) -> SessionStatus | None:
        """The status a watch of ``session_id`` ends with when its end carried none:
        the session's current one; None if it is gone or ``caller`` may not see it."""
        session = self._sessions.get(session_id)
        if session is None:
            remote = self.placement.remote.status(session_id)
            return remote if remote is not None and caller.may_use(remote.owner_uid) else None
        if not caller.may_use(session.owner_uid):
            return None
        return session.status()

    # ------------------------------------------------------------------ upkeep

    async def cleanup_loop(self) -> None:
        while True:
            await trio.sleep(self.config.cleanup_interval)
            await self.sweep_inactive()

    async def sweep_inactive(self) -> int:
        """Stop sessions nobody has touched for ``inactive_after``. Returns how many."""
        cfg = self.config
        now = trio.current_time()
        stopped = 0
        for sid, at in list(self._deleted_attempts.items()):
            if now - at >= cfg.connect_min_interval:
                del self._deleted_attempts[sid]
        for session in list(self._sessions.values()):
            if session.lock.locked() or self.hub.watchers_of(session.id):
                continue  # somebody is acting on it or watching it right now
            idle = now - max(session.last_touch, session.machine.state_changed_at)
            stop: IdleTimeout | Inactive
            if session.state == State.CONNECTED:
                limit = resolve(session.options, cfg).idle_timeout
                if limit is None or idle < limit:
                    continue
                stop = IdleTimeout(f"connected with no RPC for {idle:.0f} s")
            elif session.state in ACTIVE:
                if idle < (limit := cfg.inactive_after):
                    continue
                stop = Inactive(f"no RPC and no state change for {idle:.0f} s")
            else:
                continue
            elsewhere = await self.placement.touched_elsewhere(session.id)  # read or watched through another host
            if elsewhere is not None and elsewhere < limit:
                continue
            async with self._locked(session):
                try:
                    self._save(session, should_run=False)
                except Unavailable:
                    continue  # logged and counted; tried again at the next sweep
                await session.stop(stop)
            self.metrics.cleanups.inc()
            stopped += 1
            log.info("session_cleaned_up", session=session.id, idle=round(idle), to_state=session.state.value)
        return stopped

    async def shutdown(self) -> None:
        """Close every browser and end every stream; sessions keep their desired state."""
        self.closing = True
        async with trio.open_nursery() as nursery:
            for session in list(self._sessions.values()):
                nursery.start_soon(self._shutdown_one, session)
        self.hub.finish_all("shutdown", lambda sid: self._sessions[sid].status() if sid in self._sessions else None)

    async def _shutdown_one(self, session: Session) -> None:
        await session.shutdown()

    def _save(self, session: Session, should_run: bool) -> None:
        """Record the desired state; a registry that cannot be written is ``unavailable``."""
        try:
            self.registry.put(self._record(session, should_run))
        except RegistryError as exc:
            self._registry_failed(session.id, exc)
        session.should_run = should_run

    def _unsave(self, session_id: str) -> None:
        try:
            self.registry.remove(session_id)
        except RegistryError as exc:
            self._registry_failed(session_id, exc)

    def _registry_failed(self, session_id: str, exc: RegistryError) -> None:
        self.metrics.registry_errors.inc()
        log.error("registry_write_failed", session=session_id, error=str(exc))
        raise Unavailable(
            f"the session's desired state cannot be saved, so nothing was changed: {exc}",
            {"session": session_id},
        ) from None

    def _linked_changed(self, session: Session) -> None:
        """The profile started or stopped holding a login: remember it across restarts."""
        if session.deleted:
            return
        try:
            self._save(session, should_run=session.should_run)
        except Unavailable:
            pass  # logged and counted; the next save carries it

    def _settled(self, session: Session) -> None:
        """The runner ended in failed or logged_out: stop restarting it after a restart."""
        try:
            self._save(session, should_run=False)
        except Unavailable:
            pass  # logged and counted; a restart will try the session once more

    def _record(self, session: Session, should_run: bool) -> SessionRecord:
        return SessionRecord(
            session.id, session.owner_uid, session.created_at, should_run, session.options, session.view.linked
        )

