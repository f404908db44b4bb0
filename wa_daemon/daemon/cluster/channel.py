"""The Redis side of routed commands (cluster/commands.py holds their shape).

Blocking commands under coredis: a ``BLPOP`` or ``XREAD`` holds a pooled
connection of its own until it answers (coredis releases the shared one only
for non-blocking commands) and is bounded by the client's ``stream_timeout``
like any command; a cancelled one invalidates its connection. So every block
here is cut into waits shorter than that timeout (:attr:`block`), and a caller
that gives up simply stops waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from .commands import FIELD, Command, encode_command, reply_key, stream_key
from .least_loaded import Load, parse_load
from .store import PREFIX, ClusterDataError, RedisStore, _text

__all__ = ["CommandChannel", "Where"]

STREAM_MAXLEN: Final = 1000  # entries kept per host stream (approximately): far more than in flight
REPLY_TTL_MS: Final = 30_000  # an answer nobody took expires
STREAM_TTL_MS: Final = 600_000  # a host's stream nobody sent to for this long expires

# Append a command; the stream expires when nobody sends for a while, so the
# params of commands to a host that died do not stay in Redis.
SEND = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'c', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return id
"""

# LPUSH and its TTL in one step: an answer never outlives its TTL.
ANSWER = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Who holds a session, and how old that host's heartbeat is, in one round trip.
WHERE = """
local lease = redis.call('GET', KEYS[1])
local t = redis.call('TIME')
local known = redis.call('SISMEMBER', KEYS[2], ARGV[1])
local at = false
if lease then
  local host = string.match(lease, '^%d+ (.+)$')
  if host then at = redis.call('HGET', ARGV[2] .. host, 'at_us') end
end
return {lease or false, t[1], t[2], known, at or false}
"""


@dataclass(frozen=True, slots=True)
class Where:
    holder: str | None  # the host holding the lease; None: nobody
    age: float | None  # seconds since the holder's heartbeat; None: it has none (dead)
    known: bool  # the fleet has a row for the session


class CommandChannel:
    def __init__(self, store: RedisStore, stream_timeout: float) -> None:
        self.store = store
        self.client = store.client
        self.block = max(0.05, stream_timeout / 2)  # one blocking wait, below coredis's timeout
        self._answer = self.client.register_script(ANSWER)
        self._where = self.client.register_script(WHERE)
        self._send = self.client.register_script(SEND)

    async def send(self, host: str, command: Command) -> None:
        data = encode_command(command)[FIELD]
        await self.store._call(
            "route", self._send(keys=[stream_key(host)], args=[STREAM_MAXLEN, data, STREAM_TTL_MS])
        )

    async def forget(self, host: str, ids: list[bytes]) -> None:
        """Delete entries the owner has read: their params (a message body, a proxy
        URL with its password) stay in Redis no longer than needed."""
        await self.store._call("commands", self.client.xdel(stream_key(host), ids))

    async def wait_answer(self, request_id: str, seconds: float) -> bytes | None:
        """One wait of at most ``seconds`` (shorter than :attr:`block`) for the answer."""
        timeout = max(0.01, min(seconds, self.block))
        got = await self.store._call("route", self.client.blpop([reply_key(request_id)], timeout))
        if not got:
            return None
        data = got[1]
        return data if isinstance(data, bytes) else str(data).encode()

    async def read(self, host: str, after: str) -> list[tuple[bytes, Any]]:
        """Entries of this host's stream after ``after``, waiting at most :attr:`block`."""
        reply = await self.store._call(
            "commands", self.client.xread({stream_key(host): after}, count=64, block=int(self.block * 1000))
        )
        if not reply:
            return []
        entries = []
        for _stream, items in reply.items():
            for item in items:
                ident = item.identifier
                entries.append((ident if isinstance(ident, bytes) else str(ident).encode(), item.field_values))
        return entries

    async def answer(self, request_id: str, data: bytes) -> None:
        await self.store._call(
            "answer", self._answer(keys=[reply_key(request_id)], args=[data, REPLY_TTL_MS])
        )

    async def now_ms(self) -> int:
        seconds, micros = await self.store._call("time", self.store._now(keys=[], args=[]))
        return int(seconds) * 1000 + int(micros) // 1000

    async def where(self, session: str) -> Where:
        """Who holds the session's lease and how old its heartbeat is, in one round trip."""
        reply = await self.store._call(
            "route",
            self._where(keys=[self.store.lease_key(session), f"{PREFIX}sessions"], args=[session, f"{PREFIX}host:"]),
        )
        lease, seconds, micros, known, at_us = reply
        if lease is None:
            return Where(None, None, bool(known))
        token, _, host = _text(lease).partition(" ")
        if not token.isdigit() or not host:
            key = self.store.lease_key(session)
            raise ClusterDataError(f"route: {key} holds {_text(lease)[:40]!r}, not a lease value", key)
        now = int(seconds) * 1_000_000 + int(micros)
        age = None
        if at_us is not None:
            try:
                age = max(0.0, (now - int(at_us)) / 1e6)
            except ValueError:
                raise ClusterDataError(f"the heartbeat of host {host!r} has a bad at_us") from None
        return Where(host, age, bool(known))

    async def loads(self) -> tuple[list[Load], list[str], int]:
        """Every live host's load, the hosts whose heartbeat is unreadable, and
        Redis's clock (µs)."""
        names = sorted(_text(h) for h in await self.store._call("hosts", self.client.smembers(f"{PREFIX}hosts")))
        seconds, micros = await self.store._call("time", self.store._now(keys=[], args=[]))
        now = int(seconds) * 1_000_000 + int(micros)
        loads, bad = [], []
        for name in names:
            raw = await self.store._call("hosts", self.client.hgetall(f"{PREFIX}host:{name}"))
            if not raw:
                continue
            load = parse_load(name, {_text(k): _text(v) for k, v in raw.items()})
            if load is None:
                bad.append(name)
            else:
                loads.append(load)
        return loads, bad, now
