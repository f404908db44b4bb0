"""The fleet's Redis, through coredis: leases, fenced writes, heartbeats, reads.

Every method is one round trip (a script or a single command). Whatever goes
wrong below (the connection, a refused script, data of the wrong shape) comes
out as :class:`ClusterError`, with a message that names no secret.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import coredis
import coredis.exceptions
import msgspec
import trio

from ..ops.config import Config
from ..sessions.registry import SessionRecord
from . import scripts

__all__ = ["Acquire", "ClusterDataError", "ClusterError", "HostBeat", "RedisStore", "open_store"]

PREFIX = "wa:"


class ClusterError(Exception):
    """Redis could not be reached, or refused a command."""


class ClusterDataError(ClusterError):
    """Redis holds data this daemon does not accept (a wrong type, a bad field).
    ``key`` names the Redis key, so an operator can look at it and fix or delete it."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key or _key_in(message)

    @property
    def kind(self) -> str:
        """The key's family (``lease``, ``session``, ``host``, ``epoch``...): a bounded metric label."""
        return self.key.split(":")[1] if self.key.startswith(PREFIX) else "unknown"


def _key_in(message: str) -> str:
    for word in message.split():
        if word.startswith(PREFIX):
            return word.strip("'\",:")
    return ""


@dataclass(frozen=True)
class Acquire:
    outcome: Literal["ok", "held", "quarantine"]
    value: str | None = None  # ok: our lease value; held: the holder's
    wait: float = 0.0  # quarantine: seconds until leases are granted again


class HostBeat(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """A host's heartbeat as stored (``wa:host:{id}``)."""

    host: str
    version: str
    capacity: int
    sessions: int
    running: int
    lease_ttl: float
    pid: int
    at_us: int = 0  # Redis's clock when written (set by the script)
    draining: bool = False  # handing its sessions over (cluster/drain.py): place nothing here
    instance: str = ""  # random per daemon process: two live processes under one host_id differ here


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RedisStore:
    def __init__(self, client: coredis.Redis[bytes]) -> None:
        self.client = client
        self._acquire = client.register_script(scripts.ACQUIRE)
        self._renew = client.register_script(scripts.RENEW)
        self._write = client.register_script(scripts.FENCED_WRITE)
        self._delete = client.register_script(scripts.FENCED_DELETE)
        self._release = client.register_script(scripts.RELEASE)
        self._orphans = client.register_script(scripts.ORPHANS)
        self._next_expiry = client.register_script(scripts.NEXT_EXPIRY)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._now = client.register_script(scripts.NOW)
        self._epoch_age = client.register_script(scripts.EPOCH_AGE)
        self.commands = 0  # round trips made, for the benchmark and the metrics
        # Told about data refused while the rest of a read goes on (one bad heartbeat
        # must not hide the other hosts): the node logs and counts it.
        self.on_refused: Callable[[ClusterDataError], None] = lambda exc: None

    @staticmethod
    def lease_key(session: str) -> str:
        return f"{PREFIX}lease:{session}"

    @staticmethod
    def session_key(session: str) -> str:
        return f"{PREFIX}session:{session}"

    async def _call(self, what: str, request: Any) -> Any:
        self.commands += 1
        try:
            return await request
        except coredis.exceptions.ResponseError as exc:
            message = str(exc)
            if "wa: " in message:
                raise ClusterDataError(f"{what}: {message[message.index('wa: ') + 4:][:200]}") from None
            if isinstance(exc, coredis.exceptions.WrongTypeError) or message.startswith("WRONGTYPE"):
                raise ClusterDataError(f"{what}: a key it uses holds another type: {message[:120]}") from None
            raise ClusterError(f"{what}: Redis refused: {message[:200]}") from None
        except (coredis.exceptions.RedisError, OSError) as exc:
            if isinstance(exc, TimeoutError):
                self._drop_connections()
            raise ClusterError(f"{what}: {type(exc).__name__}: {str(exc)[:200]}") from None
        except trio.Cancelled:
            self._drop_connections()  # e.g. a renewal past its timeout
            raise

    def _drop_connections(self) -> None:
        """A request that got no answer leaves its connection waiting for a reply that
        may never come (a black hole loses what it swallowed), and coredis answers a
        connection's requests in order: every later call on it would time out too.
        So no connection that timed out is used again; the next call opens a new one."""
        self.client.connection_pool.disconnect()

    # ------------------------------------------------------------------ leases

    async def acquire(self, session: str, host: str, ttl: float, min_token: int) -> Acquire:
        keys = [f"{PREFIX}epoch", f"{PREFIX}token", self.lease_key(session), f"{PREFIX}expiry"]
        reply = await self._typed(
            "acquire",
            self._acquire(keys=keys, args=[session, host, math.ceil(ttl * 1000), min_token]),
            dict(zip(keys, ("hash", "string", "string", "zset"), strict=True)),
        )
        kind, value = _text(reply[0]), _text(reply[1])
        if kind == "ok":
            return Acquire("ok", value)
        if kind == "held":
            if not _is_lease_value(value):
                raise ClusterDataError(
                    f"acquire: {self.lease_key(session)} holds {value[:40]!r}, not a lease value", self.lease_key(session)
                )
            return Acquire("held", value)
        if kind == "quarantine":
            return Acquire("quarantine", wait=int(value) / 1000)
        raise ClusterDataError(f"acquire: unexpected reply {kind[:40]!r}")

    async def renew(self, ttl: float, leases: Sequence[tuple[str, str]]) -> dict[str, bool]:
        if not leases:
            return {}
        reply = await self._call(
            "renew",
            self._renew(
                keys=[f"{PREFIX}epoch", f"{PREFIX}expiry", *(self.lease_key(s) for s, _ in leases)],
                args=[math.ceil(ttl * 1000), *(x for pair in leases for x in pair)],
            ),
        )
        return {s: bool(ok) for (s, _), ok in zip(leases, reply, strict=True)}

    async def release(self, session: str, value: str) -> bool:
        return bool(await self._call("release", self._release(keys=[self.lease_key(session)], args=[value])))

    async def orphans(self, limit: int) -> list[str]:
        """Sessions of the fleet whose lease has expired, oldest first."""
        reply = await self._call(
            "orphans",
            self._orphans(keys=[f"{PREFIX}expiry", f"{PREFIX}sessions"], args=[f"{PREFIX}lease:", limit]),
        )
        return [_text(s) for s in reply]

    async def next_expiry(self, horizon: float) -> float | None:
        """Seconds until the first lease that expires within ``horizon`` s does, or None."""
        reply = await self._call("orphans", self._next_expiry(keys=[f"{PREFIX}expiry"], args=[round(horizon * 1000)]))
        return None if int(reply) < 0 else int(reply) / 1000

    async def holder(self, session: str) -> str | None:
        key = self.lease_key(session)
        value = await self._typed("holder", self.client.get(key), {key: "string"})
        if value is None:
            return None
        if not _is_lease_value(_text(value)):
            raise ClusterDataError(f"holder: {key} holds {_text(value)[:40]!r}, not a lease value", key)
        return _text(value)

    async def _typed(self, what: str, request: Any, types: Mapping[str, str]) -> Any:
        """``_call``, naming the key when one of ``types`` (key -> Redis type) holds another type."""
        try:
            return await self._call(what, request)
        except ClusterDataError as exc:
            if "another type" not in str(exc):
                raise
            for key, want in types.items():
                kind = _text(await self._call(what, self.client.type(key)))
                if kind not in (want, "none"):
                    raise ClusterDataError(f"{what}: {key} is a {kind}, not a {want}", key) from None
            raise

    # ------------------------------------------------------------------ fenced writes

    async def write(self, session: str, value: str, fields: Mapping[str, bytes]) -> bool:
        """Set ``fields`` of the session's row if ``value`` still holds its lease."""
        args: list[str | bytes] = [value, session]
        for name, data in fields.items():
            args += [name, data]
        keys = [self.lease_key(session), self.session_key(session), f"{PREFIX}sessions"]
        return bool(
            await self._typed(
                "write", self._write(keys=keys, args=args), {keys[1]: "hash", keys[2]: "set"}
            )
        )

    async def delete(self, session: str, value: str) -> bool:
        keys = [self.lease_key(session), self.session_key(session), f"{PREFIX}sessions", f"{PREFIX}expiry"]
        return bool(await self._call("delete", self._delete(keys=keys, args=[value, session])))

    # ------------------------------------------------------------------ reads

    async def record(self, session: str) -> SessionRecord | None:
        key = self.session_key(session)
        data = await self._typed("read", self.client.hget(key, "record"), {key: "hash"})
        return None if data is None else decode_record(session, data)

    async def epoch_age(self) -> float | None:
        """Seconds since Redis's current run began (the EPOCH prelude's record); None
        when no script has noticed this run yet (it just restarted)."""
        now, since = await self._call("epoch", self._epoch_age(keys=[f"{PREFIX}epoch"], args=[]))
        since = _text(since)
        if not since:
            return None
        if not since.isdigit():
            raise ClusterDataError(f"epoch: {PREFIX}epoch has since_us {since[:20]!r}, not a number", f"{PREFIX}epoch")
        return (int(_text(now)) - int(since)) / 1e6

    async def session_ids(self) -> list[str]:
        return sorted(_text(s) for s in await self._call("list", self.client.smembers(f"{PREFIX}sessions")))

    # ------------------------------------------------------------------ hosts

    async def heartbeat(self, beat: HostBeat, ttl: float) -> str:
        """Publish ``beat``; returns the ``instance`` of the heartbeat it replaced ("" if none)."""
        fields = msgspec.to_builtins(beat)
        fields.pop("at_us")
        args: list[str] = [beat.host, str(math.ceil(ttl * 1000))]
        for name, value in fields.items():
            args += [name, str(value)]
        previous = await self._call(
            "heartbeat", self._heartbeat(keys=[f"{PREFIX}host:{beat.host}", f"{PREFIX}hosts"], args=args)
        )
        return _text(previous) if previous else ""

    async def hosts(self) -> tuple[list[HostBeat], int]:
        """The live hosts' heartbeats, and Redis's clock (µs) to age them by."""
        names = sorted(_text(h) for h in await self._call("hosts", self.client.smembers(f"{PREFIX}hosts")))
        # Not client.time(): its datetime drops most of the microseconds.
        seconds, micros = await self._call("time", self._now(keys=[], args=[]))
        now = int(seconds) * 1_000_000 + int(micros)
        beats = []
        for name in names:
            try:
                if (beat := await self.beat(name)) is not None:
                    beats.append(beat)
            except ClusterDataError as exc:
                self.on_refused(exc)  # that host is left out; the others are still listed
        return beats, now

    async def beat(self, host: str) -> HostBeat | None:
        """One host's heartbeat; None once it expired (the host is gone)."""
        key = f"{PREFIX}host:{host}"
        raw = await self._typed("hosts", self.client.hgetall(key), {key: "hash"})
        return decode_beat(host, {_text(k): _text(v) for k, v in raw.items()}) if raw else None


_RECORD_FIELDS = frozenset(SessionRecord.__struct_fields__)


def decode_record(session: str, data: bytes) -> SessionRecord:
    key = f"{PREFIX}session:{session}"
    try:
        raw = msgspec.json.decode(data)
        if isinstance(raw, dict) and (unknown := sorted(set(raw) - _RECORD_FIELDS)):
            # Written by a newer version: a host that rewrote it would drop what it
            # does not know, so it does not take the session at all.
            raise ClusterDataError(
                f"the registry row of {session!r} ({key} field record) has unknown fields {unknown[:5]}", key
            )
        record = msgspec.json.decode(data, type=SessionRecord)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ClusterDataError(f"the registry row of {session!r} ({key} field record) is not valid: {exc}", key) from None
    if record.session != session:
        raise ClusterDataError(f"the registry row of {session!r} ({key} field record) names another session", key)
    return record


def decode_beat(name: str, fields: dict[str, str]) -> HostBeat:
    # Unknown fields are fine here: newer versions publish more (draining, ...).
    key = f"{PREFIX}host:{name}"
    try:
        return msgspec.convert(fields, HostBeat, strict=False)
    except msgspec.ValidationError as exc:
        raise ClusterDataError(f"the heartbeat of host {name!r} ({key}) is not valid: {exc}", key) from None


def _is_lease_value(value: str) -> bool:
    token, _, host = value.partition(" ")
    return token.isdigit() and bool(host)


def redis_password(config: Config) -> str | None:
    if config.redis_password_file is None:
        return None
    try:
        return Path(config.redis_password_file).read_text().rstrip("\n")
    except OSError as exc:
        raise ClusterError(f"cannot read redis_password_file: {exc.strerror}") from None


@asynccontextmanager
async def open_store(config: Config) -> AsyncIterator[RedisStore]:
    """The store for ``config.redis_url``, its connections closed on exit."""
    assert config.redis_url is not None
    password = redis_password(config)
    extra: dict[str, Any] = {"password": password} if password is not None else {}
    timeout = config.lease_ttl / 5
    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        config.redis_url, stream_timeout=timeout, connect_timeout=timeout, **extra
    )
    async with client:
        yield RedisStore(client)
