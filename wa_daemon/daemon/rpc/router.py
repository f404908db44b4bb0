"""Mutations for sessions another host owns: sent to the owner, its answer returned
(docs/cluster.md, "Routing"). Only with ``redis_url``.

The caller's side (:meth:`Router.run`): a session whose lease this host holds runs
here without asking Redis. Otherwise one script says who holds the lease and how
old that host's heartbeat is: this host runs it, or the command goes to the
owner's stream and the answer is awaited for at most ``route_timeout``; a
``connect`` of a session the fleet does not know goes to the least-loaded host
with room. An owner without a fresh heartbeat, or without an answer in time,
is ``unavailable``; an answer that comes later is never read (it expires).

The owner's side (:meth:`Router.serve`): it tails its own stream and runs each
command as its own handler would for a local caller with the same uid, gid and
admin flag, unless the command's deadline (on Redis's clock) has passed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram

from ...errors import InternalError, InvalidArgument, Unavailable, WaDaemonError
from ...protocol import METHODS, SessionStatus
from ..cluster.channel import CommandChannel
from ..cluster.commands import (
    ROUTED,
    Command,
    CommandRefused,
    Entry,
    decode_answer,
    decode_entry,
    encode_answer,
    error_answer,
)
from ..cluster.least_loaded import choose
from ..cluster.node import ClusterNode
from ..cluster.store import ClusterDataError, ClusterError
from ..ops.config import Config
from ..ops.log import get_logger
from . import faults
from .access import Caller, PeerCredentials
from .handlers import HANDLERS, Operation, Services

log = get_logger("cluster")

__all__ = ["ROUTED", "Router", "RouterMetrics", "open_router"]

MAX_HOPS: Final = 2  # a connect placed on a host that lost the lease race follows the winner once


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.routed = Counter(
            "wa_cluster_routed", "mutations this host sent to the session's owner, by outcome "
            "(ok, error: the owner's typed error, dead: the owner has no fresh heartbeat, "
            "timeout: no answer within route_timeout, redis: Redis could not be asked)",
            ["method", "outcome"], registry=r,
        )
        self.route_seconds = Histogram(
            "wa_cluster_route_seconds", "time from sending a routed mutation to its owner's answer",
            ["method"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30), registry=r,
        )
        self.commands = Counter(
            "wa_cluster_commands", "routed commands this host received as owner, by outcome "
            "(done, expired: deadline passed before it ran, refused: not a valid command)",
            ["outcome"], registry=r,
        )
        self.placed = Counter("wa_cluster_placed", "new sessions placed, by where (here, other)", ["where"], registry=r)
        for method in sorted(ROUTED):
            for outcome in ("ok", "error", "dead", "timeout", "redis"):
                self.routed.labels(method, outcome)
        for outcome in ("done", "expired", "refused"):
            self.commands.labels(outcome)
        for where in ("here", "other"):
            self.placed.labels(where)


class _RemotePeer:
    """The caller of a routed command, as the owner's handlers see it."""

    def __init__(self, command: Command) -> None:
        self._caller = command.caller
        self._credentials = command.credentials

    @property
    def caller(self) -> Caller:
        return self._caller

    @property
    def credentials(self) -> PeerCredentials | None:
        return self._credentials


class Router:
    def __init__(self, node: ClusterNode, channel: CommandChannel, metrics: CollectorRegistry) -> None:
        self.node = node
        self.channel = channel
        self.host = node.host
        self.metrics = RouterMetrics(metrics)
        self.services: Services | None = None
        self._after = "$"
        self._table: dict[str, tuple[Callable[[bytes], Any], Operation[Any]]] = {
            h.method: (msgspec.msgpack.Decoder(METHODS[h.method].params).decode, h)
            for h in HANDLERS
            if h.method in ROUTED and isinstance(h, Operation)
        }

    @property
    def timeout(self) -> float:
        return self.node.config.route_timeout

    @property
    def stale_after(self) -> float:
        """A heartbeat older than this says its host is dead (two missed heartbeats and some)."""
        return self.node.timing.ttl / 2

    async def prepare(self) -> None:
        """Read commands appended from now on (called before this host takes any lease)."""
        try:
            self._after = f"{await self.channel.now_ms() - 1}"
        except ClusterError as exc:  # Redis down at start: from whatever comes next
            self.node._redis_failed("commands", exc)

    # ------------------------------------------------------------------ caller's side

    async def run(
        self, method: str, session: str, params: bytes, peer: Any, local: Callable[[], Awaitable[Any]]
    ) -> Any:
        """Run ``local`` when this host owns ``session`` (or nobody does and it should);
        else the owner's answer: its result as msgpack (``msgspec.Raw``) or its error."""
        if method not in ROUTED or session in self.node.leases.held:
            return await local()  # a read, or ours: no Redis on the way
        try:
            where = await self.channel.where(session)
        except ClusterDataError as exc:  # Redis answered, with something no host can use
            self.metrics.routed.labels(method, "redis").inc()
            self.node._redis_failed("route", exc)
            raise Unavailable(
                f"the fleet's data for this session is refused: {exc}", {"session": session, "key": exc.key}
            ) from None
        except ClusterError as exc:
            self.metrics.routed.labels(method, "redis").inc()
            self.node._redis_failed("route", exc)
            raise Unavailable(f"the fleet's Redis cannot be asked: {exc}", {"session": session}) from None
        target = where.holder
        if target is None and method != "connect" and where.known:
            self.metrics.routed.labels(method, "dead").inc()
            raise Unavailable(
                f"session {session!r} has no owner at the moment (its host's lease expired); "
                "a host with room takes it over within lease_ttl",
                {"session": session, "retry_after": self.node.timing.ttl},
            )
        if target is None and method == "connect" and not where.known:
            target = await self._place(session)
        elif target is not None and target != self.host:
            self._check_alive(method, session, target, where.age)
        if target is None or target == self.host:
            try:
                return await local()
            except Unavailable as exc:
                winner = exc.details.get("host")
                if method != "connect" or not isinstance(winner, str) or winner in ("", self.host):
                    raise
                target = winner  # another host took the lease first: ask it
                log.info("cluster_connect_race_lost", session=session, host=winner)
        return await self.forward(target, method, session, params, peer)

    def _check_alive(self, method: str, session: str, host: str, age: float | None) -> None:
        if age is not None and age <= self.stale_after:
            return
        self.metrics.routed.labels(method, "dead").inc()
        seen = "no heartbeat" if age is None else f"a heartbeat {age:.1f} s old"
        log.warning("cluster_route_owner_dead", method=method, session=session, host=host, heartbeat_age=age)
        raise Unavailable(
            f"session {session!r} runs on host {host!r}, which has {seen}; "
            "its lease expires and another host takes the session over within lease_ttl",
            {"session": session, "host": host, "retry_after": self.node.timing.ttl},
        )

    async def _place(self, session: str) -> str:
        try:
            loads, bad, now = await self.channel.loads()
        except ClusterError as exc:
            self.node._redis_failed("place", exc)
            raise Unavailable(f"the fleet's Redis cannot be asked: {exc}", {"session": session}) from None
        for host in bad:
            log.warning("cluster_heartbeat_invalid", host=host)
        chosen = choose(loads, now, self.host, self.stale_after)
        if chosen is None:
            # No host with room: this one answers (its own max_sessions says why).
            chosen = self.host
        self.metrics.placed.labels("here" if chosen == self.host else "other").inc()
        log.info("cluster_session_placed", session=session, host=chosen)
        return chosen

    async def forward(self, host: str, method: str, session: str, params: bytes, peer: Any) -> Any:
        for _hop in range(MAX_HOPS):
            answer = await self._forward_once(host, method, session, params, peer)
            if isinstance(answer, Unavailable) and method == "connect":
                winner = answer.details.get("host")
                if isinstance(winner, str) and winner and winner != host:
                    host = winner  # the host we placed it on lost the lease race to this one
                    if host == self.host:
                        break
                    continue
            if isinstance(answer, WaDaemonError):
                raise answer
            self._saw(method, session, answer)
            return answer
        raise Unavailable(
            f"session {session!r} moved between hosts while being routed; retry",
            {"session": session, "host": host},
        )

    def _saw(self, method: str, session: str, answer: msgspec.Raw) -> None:
        """Read your writes: the owner's answer reaches this host's cache of remote
        sessions now, not when the event stream brings it (a `status` right after a
        routed `connect` of a new session would say `not_found`)."""
        if method == "delete":
            self.node.remote.forget(session)
        elif method in ("connect", "disconnect", "logout"):
            try:
                status = msgspec.msgpack.decode(answer, type=SessionStatus)
            except msgspec.DecodeError:
                return  # the client gets it as it is; the stream brings the status
            self.node.remote.note(status)

    async def _forward_once(
        self, host: str, method: str, session: str, params: bytes, peer: Any
    ) -> msgspec.Raw | WaDaemonError:
        timeout = self.timeout
        credentials: PeerCredentials | None = peer.credentials
        caller: Caller = peer.caller
        command = Command(
            id=uuid.uuid4().hex, method=method, params=params,
            uid=credentials.uid if credentials is not None else None,
            gid=credentials.gid if credentials is not None else None,
            admin=caller.admin, budget_ms=max(1, round(timeout * 1000)), origin=self.host,
        )
        started = time.perf_counter()
        deadline = trio.current_time() + timeout
        try:
            await self.channel.send(host, command)
            while (left := deadline - trio.current_time()) > 0:
                data = await self.channel.wait_answer(command.id, left)
                if data is not None:
                    break
            else:
                data = None
        except ClusterError as exc:
            self.metrics.routed.labels(method, "redis").inc()
            self.node._redis_failed("route", exc)
            raise Unavailable(f"the fleet's Redis cannot be asked: {exc}", {"session": session, "host": host}) from None
        if data is None:
            self.metrics.routed.labels(method, "timeout").inc()
            log.warning("cluster_route_timeout", method=method, session=session, host=host, timeout=timeout)
            raise Unavailable(
                f"host {host!r}, which owns session {session!r}, did not answer within route_timeout ({timeout:g} s)",
                {"session": session, "host": host, "route_timeout": timeout},
            )
        took = time.perf_counter() - started
        self.metrics.route_seconds.labels(method).observe(took)
        answer = decode_answer(data)
        self.metrics.routed.labels(method, "error" if isinstance(answer, WaDaemonError) else "ok").inc()
        log.info(
            "cluster_routed", method=method, session=session, host=host, ms=round(took * 1e3, 3),
            result=answer.code if isinstance(answer, WaDaemonError) else "ok",
        )
        return answer

    # ------------------------------------------------------------------ owner's side

    async def serve(self) -> None:
        """Tail this host's stream and run its commands, each in a task of its own."""
        # Not before the join checks passed: a second daemon under a live host's id would
        # read (and delete) that host's commands and answer them in its place.
        while not self.node.joined:
            if self.node.join_refused is not None:
                return
            await trio.sleep(self.channel.block)
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    entries = await self.channel.read(self.host, self._after)
                    if not entries:
                        continue
                    self._after = entries[-1][0].decode()
                    now_ms = await self.channel.now_ms()  # the deadlines are on Redis's clock
                except ClusterError as exc:
                    self.node._redis_failed("commands", exc)
                    await trio.sleep(self.channel.block)
                    continue
                fetched = trio.current_time()
                nursery.start_soon(self._forget, [ident for ident, _ in entries])
                for ident, fields in entries:
                    entry = self._decode(ident, fields, nursery)
                    if entry is None:
                        continue
                    # After a pause between the read and here, the time it lasted counts too.
                    left = (entry.deadline_ms - now_ms) / 1000 - (trio.current_time() - fetched)
                    if left <= 0:
                        self.metrics.commands.labels("expired").inc()
                        log.warning(
                            "cluster_command_expired", id=entry.command.id, method=entry.command.method,
                            origin=entry.command.origin, late_ms=round(-left * 1000),
                        )
                        continue
                    nursery.start_soon(self._execute, entry, left)

    def _decode(self, ident: bytes, fields: Any, nursery: trio.Nursery) -> Entry | None:
        try:
            return decode_entry(ident, fields)
        except CommandRefused as exc:
            self.metrics.commands.labels("refused").inc()
            log.warning("cluster_command_refused", entry=ident.decode("ascii", "replace")[:44], error=exc.message)
            if exc.request_id is not None:  # its sender waits: tell it now
                refusal = InvalidArgument(f"the owner refused the routed command: {exc.message}")
                nursery.start_soon(self._answer, exc.request_id, error_answer(refusal))
            return None

    async def _execute(self, entry: Entry, left: float) -> None:
        command = entry.command
        decode, handler = self._table[command.method]
        services = self.services
        with trio.move_on_after(left) as scope:
            try:
                if services is None:
                    raise Unavailable("the daemon is starting")
                try:
                    params = decode(command.params)
                except faults.PARAMS_ERRORS as exc:
                    raise faults.invalid_params(command.method, exc) from None
                data = encode_answer(await handler.fn(services, params, _RemotePeer(command)))
            except WaDaemonError as exc:
                data = error_answer(exc)
            except Exception:
                log.exception("cluster_command_failed", id=command.id, method=command.method)
                data = error_answer(InternalError(faults.INTERNAL_MESSAGE))
        if scope.cancelled_caught:
            # Its caller has stopped waiting: an answer now would never be read.
            self.metrics.commands.labels("expired").inc()
            log.warning("cluster_command_expired", id=command.id, method=command.method, origin=command.origin)
            return
        self.metrics.commands.labels("done").inc()
        log.info("cluster_command", id=command.id, method=command.method, origin=command.origin)
        await self._answer(command.id, data)

    async def _forget(self, ids: list[bytes]) -> None:
        try:
            await self.channel.forget(self.host, ids)
        except ClusterError as exc:
            self.node._redis_failed("commands", exc)

    async def _answer(self, request_id: str, data: bytes) -> None:
        try:
            await self.channel.answer(request_id, data)
        except ClusterError as exc:
            self.node._redis_failed("answer", exc)


async def open_router(node: ClusterNode, config: Config, metrics: CollectorRegistry) -> Router:
    """The router of this host, reading its stream from now on."""
    # The same bound as every command of the store's client (store.open_store).
    router = Router(node, CommandChannel(node.store, config.lease_ttl / 5), metrics)
    await router.prepare()
    return router
