"""The fleet's Redis, through coredis: leases, fenced writes, heartbeats, reads.

Every method is one round trip (a script or a single command). Whatever goes
wrong below (the connection, a refused script, data of the wrong shape) comes
out as :class:`ClusterError`, with a message that names no secret.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import coredis
import coredis.exceptions
import msgspec

from ..ops.config import Config
from ..sessions.registry import SessionRecord
from . import scripts

__all__ = ["Acquire", "ClusterDataError", "ClusterError", "HostBeat", "RedisStore", "open_store"]

PREFIX = "wa:"


class ClusterError(Exception):
    """Redis could not be reached, or refused a command."""


class ClusterDataError(ClusterError):
    """Redis holds data this daemon does not accept (a wrong type, a bad field)."""


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
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._now = client.register_script(scripts.NOW)
        self.commands = 0  # round trips made, for the benchmark and the metrics

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
            raise ClusterError(f"{what}: Redis refused: {message[:200]}") from None
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise ClusterError(f"{what}: {type(exc).__name__}: {str(exc)[:200]}") from None

    # ------------------------------------------------------------------ leases

    async def acquire(self, session: str, host: str, ttl: float, min_token: int) -> Acquire:
        reply = await self._call(
            "acquire",
            self._acquire(
                keys=[f"{PREFIX}epoch", f"{PREFIX}token", self.lease_key(session), f"{PREFIX}expiry"],
                args=[session, host, math.ceil(ttl * 1000), min_token],
            ),
        )
        kind, value = _text(reply[0]), _text(reply[1])
        if kind == "ok":
            return Acquire("ok", value)
        if kind == "held":
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

    async def holder(self, session: str) -> str | None:
        value = await self._call("holder", self.client.get(self.lease_key(session)))
        return None if value is None else _text(value)

    # ------------------------------------------------------------------ fenced writes

    async def write(self, session: str, value: str, fields: Mapping[str, bytes]) -> bool:
        """Set ``fields`` of the session's row if ``value`` still holds its lease."""
        args: list[str | bytes] = [value, session]
        for name, data in fields.items():
            args += [name, data]
        return bool(
            await self._call(
                "write",
                self._write(
                    keys=[self.lease_key(session), self.session_key(session), f"{PREFIX}sessions"], args=args
                ),
            )
        )

    async def delete(self, session: str, value: str) -> bool:
        keys = [self.lease_key(session), self.session_key(session), f"{PREFIX}sessions", f"{PREFIX}expiry"]
        return bool(await self._call("delete", self._delete(keys=keys, args=[value, session])))

    # ------------------------------------------------------------------ reads

    async def record(self, session: str) -> SessionRecord | None:
        data = await self._call("read", self.client.hget(self.session_key(session), "record"))
        return None if data is None else decode_record(session, data)

    async def session_ids(self) -> list[str]:
        return sorted(_text(s) for s in await self._call("list", self.client.smembers(f"{PREFIX}sessions")))

    # ------------------------------------------------------------------ hosts

    async def heartbeat(self, beat: HostBeat, ttl: float) -> None:
        fields = msgspec.to_builtins(beat)
        fields.pop("at_us")
        args: list[str] = [beat.host, str(math.ceil(ttl * 1000))]
        for name, value in fields.items():
            args += [name, str(value)]
        await self._call(
            "heartbeat", self._heartbeat(keys=[f"{PREFIX}host:{beat.host}", f"{PREFIX}hosts"], args=args)
        )

    async def hosts(self) -> tuple[list[HostBeat], int]:
        """The live hosts' heartbeats, and Redis's clock (µs) to age them by."""
        names = sorted(_text(h) for h in await self._call("hosts", self.client.smembers(f"{PREFIX}hosts")))
        # Not client.time(): its datetime drops most of the microseconds.
        seconds, micros = await self._call("time", self._now(keys=[], args=[]))
        now = int(seconds) * 1_000_000 + int(micros)
        beats = []
        for name in names:
            raw = await self._call("hosts", self.client.hgetall(f"{PREFIX}host:{name}"))
            if not raw:
                continue  # its heartbeat expired: the host is gone
            beats.append(decode_beat(name, {_text(k): _text(v) for k, v in raw.items()}))
        return beats, now


def decode_record(session: str, data: bytes) -> SessionRecord:
    try:
        record = msgspec.json.decode(data, type=SessionRecord)
    except msgspec.DecodeError as exc:
        raise ClusterDataError(f"the registry row of {session!r} is not valid: {exc}") from None
    if record.session != session:
        raise ClusterDataError(f"the registry row of {session!r} names another session")
    return record


def decode_beat(name: str, fields: dict[str, str]) -> HostBeat:
    try:
        return msgspec.convert(fields, HostBeat, strict=False)
    except msgspec.ValidationError as exc:
        raise ClusterDataError(f"the heartbeat of host {name!r} is not valid: {exc}") from None


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
