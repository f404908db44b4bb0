"""Limits that hold across the fleet, decided atomically in Redis (docs/cluster.md).

- The connect rate limit: ``wa:rate:{session}`` (``SET NX PX connect_min_interval``)
  is set by every attempt on any host, and outlives a ``delete`` and a takeover.
- Admission of a new session (``ADMIT``, run by the host that just acquired its
  lease): the uid ownership of an existing row, the fleet's session limit (the sum
  of the live hosts' ``max_sessions``), and ``max_sessions_per_uid`` (the set
  ``wa:uid:{uid}``). One script, so two hosts admitting at once never both pass.

Counts never leak: a session counts while its row is in ``wa:sessions`` (a dead
host's sessions still exist, so they still count) or while the lease of its
admission lasts (``wa:admitting``, until the row is written). The script prunes
what no longer qualifies (a deleted row, an admission whose host died before
writing it) before it counts. Hosts must share uid numbering: a uid means the
same user on every host.

What the replies mean (which error, with which details) is decided here without
I/O: :func:`refusal` and :func:`rate_limited`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from ...errors import LimitExceeded, PermissionDenied, RateLimited, Unavailable, WaDaemonError
from ..ops.log import get_logger
from ..sessions.caller import Caller
from .store import PREFIX, ClusterDataError, ClusterError, RedisStore, _text

__all__ = ["ADMIT", "RATE", "Admit", "LimitMetrics", "SharedLimits", "rate_limited", "refusal"]

log = get_logger("cluster")

# KEYS: lease, session row, sessions set, admitting hash, hosts set, uid set ('' key when no uid).
# ARGV: lease value, session, owner uid ('' none), per-uid limit (-1 none), this host, its capacity,
# key prefix, '1' if the caller is an admin.
# {'ok'} | {'stale'} | {'denied', owner} | {'full', count, capacity} | {'uid', count}
ADMIT = """
if redis.pcall('GET', KEYS[1]) ~= ARGV[1] then return {'stale'} end
local prefix = ARGV[7]
local function owner_of(session)
  local ok, rec = pcall(redis.call, 'HGET', prefix .. 'session:' .. session, 'record')
  if not ok or not rec then return nil end
  local fine, row = pcall(cjson.decode, rec)
  if not fine or type(row) ~= 'table' or type(row.owner_uid) ~= 'number' then return 'none' end
  return string.format('%d', row.owner_uid)
end
local uid = ARGV[3]
local existing = owner_of(ARGV[2])
if existing then
  -- the session exists (its row is written): only its owner (or an admin) may take it
  if ARGV[8] ~= '1' and existing ~= uid then
    -- given back here, as an orphan due now: a caller who may not take it cannot delay
    -- the takeover of a dead host's session by pushing its expiry forward
    redis.call('DEL', KEYS[1])
    redis.call('ZADD', prefix .. 'expiry', 0, ARGV[2])
    return {'denied', existing}
  end
  return {'ok'}
end
if redis.call('TYPE', KEYS[4]).ok ~= 'hash' and redis.call('EXISTS', KEYS[4]) == 1 then
  return redis.error_reply('wa: ' .. KEYS[4] .. ' is not a hash')
end
-- admissions whose row is written, or whose host died before writing it, count no more
local admitting = redis.call('HGETALL', KEYS[4])
for i = 1, #admitting, 2 do
  local s = admitting[i]
  if s ~= ARGV[2] and (redis.call('SISMEMBER', KEYS[3], s) == 1 or redis.call('EXISTS', prefix .. 'lease:' .. s) == 0) then
    redis.call('HDEL', KEYS[4], s)
  end
end
local count = redis.call('SCARD', KEYS[3]) + redis.call('HLEN', KEYS[4]) - redis.call('HEXISTS', KEYS[4], ARGV[2])
local capacity = tonumber(ARGV[6])
for _, h in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  if h ~= ARGV[5] then
    local ok, cap = pcall(redis.call, 'HGET', prefix .. 'host:' .. h, 'capacity')
    if ok and cap then capacity = capacity + (tonumber(cap) or 0) end
  end
end
if count >= capacity then return {'full', count, capacity} end
if uid ~= '' then
  if redis.call('TYPE', KEYS[6]).ok ~= 'set' and redis.call('EXISTS', KEYS[6]) == 1 then
    return redis.error_reply('wa: ' .. KEYS[6] .. ' is not a set')
  end
  local limit = tonumber(ARGV[4])
  if limit >= 0 then
    for _, s in ipairs(redis.call('SMEMBERS', KEYS[6])) do
      if s ~= ARGV[2] and redis.call('HGET', KEYS[4], s) ~= uid and owner_of(s) ~= uid then
        redis.call('SREM', KEYS[6], s)  -- deleted, or re-created by another uid
      end
    end
    local owned = redis.call('SCARD', KEYS[6]) - redis.call('SISMEMBER', KEYS[6], ARGV[2])
    if owned >= limit then return {'uid', owned} end
  end
  redis.call('SADD', KEYS[6], ARGV[2])
end
redis.call('HSET', KEYS[4], ARGV[2], uid)
return {'ok'}
"""

# KEYS: the session's rate key. ARGV: interval ms, '1' to check (NX) or '0' to just note.
# 0: noted, the attempt may start; n > 0: ms until it may.
RATE = """
if ARGV[2] == '1' then
  if redis.call('SET', KEYS[1], '1', 'PX', ARGV[1], 'NX') then return 0 end
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 then return left end
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  return 0
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 0
"""


@dataclass(frozen=True)
class Admit:
    """What ``ADMIT`` answered, decoded."""

    outcome: str  # ok, stale, denied, full, uid
    count: int = 0
    capacity: int = 0
    owner: str = ""


def decode_admit(reply: list[object]) -> Admit:
    kind = _text(reply[0]) if reply else ""
    try:
        if kind in ("ok", "stale"):
            return Admit(kind)
        if kind == "denied":
            return Admit(kind, owner=_text(reply[1]))
        if kind == "full":
            return Admit(kind, count=int(_text(reply[1])), capacity=int(_text(reply[2])))
        if kind == "uid":
            return Admit(kind, count=int(_text(reply[1])))
    except (IndexError, ValueError):
        pass
    raise ClusterDataError(f"admit: unexpected reply {kind[:40]!r}")


def refusal(got: Admit, session: str, uid: int | None, per_uid: int | None) -> tuple[str, WaDaemonError] | None:
    """(the limit's metric label, the error for the client), or None when admitted.
    The errors are the ones a host on its own gives, with the same codes and details."""
    if got.outcome == "ok":
        return None
    if got.outcome == "denied":
        return "owner", PermissionDenied(f"session {session!r} belongs to another user", {"session": session})
    if got.outcome == "full":
        return "fleet_sessions", LimitExceeded(
            f"the fleet holds its maximum of {got.capacity} sessions (the sum of its live hosts' max_sessions)",
            {"limit": got.capacity, "scope": "fleet"},
        )
    if got.outcome == "uid":
        assert per_uid is not None
        return "sessions_per_uid", LimitExceeded(
            f"uid {uid} already owns its maximum of {per_uid} sessions", {"limit": per_uid, "uid": uid}
        )
    return "stale", Unavailable(
        f"this host lost the lease of session {session!r} while admitting it; retry", {"session": session}
    )


def rate_limited(session: str, interval: float, left_ms: int) -> RateLimited:
    """The error of a host on its own (manager.connect), for an attempt made on any host."""
    wait = left_ms / 1000
    return RateLimited(
        f"session {session!r} started an attempt less than {interval:g} s ago; retry in {wait:.1f} s",
        {"retry_after": round(wait, 3), "session": session},
    )


class LimitMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.refusals = Counter(
            "wa_cluster_limit_refusals",
            "new sessions and attempts the fleet-wide limits refused, by limit",
            ["limit"], registry=registry,
        )
        for limit in ("rate", "fleet_sessions", "sessions_per_uid", "owner"):
            self.refusals.labels(limit)


class SharedLimits:
    """The fleet-wide limits, on the store's Redis connection."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self._admit = store.client.register_script(ADMIT)
        self._rate = store.client.register_script(RATE)
        self.metrics = LimitMetrics(CollectorRegistry())

    async def attempt(self, session: str, interval: float, *, check: bool = True) -> None:
        """Note an attempt of ``session``; with ``check``, refuse it (RateLimited) if one
        started on any host less than ``interval`` ago. ``unavailable`` without Redis."""
        try:
            left = int(
                await self.store._call(
                    "rate", self._rate(keys=[f"{PREFIX}rate:{session}"], args=[max(1, round(interval * 1000)), int(check)])
                )
            )
        except ClusterError as exc:
            raise Unavailable(
                f"the fleet's Redis cannot be asked for the connect rate limit: {exc}", {"session": session}
            ) from None
        if left > 0:
            self.metrics.refusals.labels("rate").inc()
            log.warning("limit_refused", limit="rate", scope="fleet", session=session)
            raise rate_limited(session, interval, left)

    async def admit(
        self, session: str, value: str, owner_uid: int | None, caller: Caller, host: str, capacity: int,
        per_uid: int | None,
    ) -> None:
        """Admit the session this host just acquired (lease ``value``), or raise the
        refusal; ClusterError when Redis cannot be asked."""
        # Admins are exempt from max_sessions_per_uid and may take any session, as on one host.
        limit = -1 if per_uid is None or caller.admin else per_uid
        keys = [
            self.store.lease_key(session), self.store.session_key(session), f"{PREFIX}sessions",
            f"{PREFIX}admitting", f"{PREFIX}hosts", f"{PREFIX}uid:{'' if owner_uid is None else owner_uid}",
        ]
        args = [value, session, "" if owner_uid is None else owner_uid, limit, host, capacity, PREFIX, int(caller.admin)]
        reply = await self.store._call("admit", self._admit(keys=keys, args=args))
        got = decode_admit(list(reply))
        refused = refusal(got, session, owner_uid, per_uid)
        if refused is None:
            return
        label, error = refused
        self.metrics.refusals.labels(label).inc()
        log.warning("limit_refused", limit=label, scope="fleet", session=session, uid=owner_uid)
        raise error
