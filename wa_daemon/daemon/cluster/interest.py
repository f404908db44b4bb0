"""Interest in a session from other hosts, so its owner's inactive sweep counts it.

A session is stopped when nobody has touched it for ``inactive_after`` (or its idle
timeout when connected); a `status` poll or a `watch` of that session is a touch. On
a host of its own both reach the session; with several hosts a client may poll or
watch through a host that does not own it. Such a host notes the sessions it read
or has watchers of (:meth:`Interest.note`), and once per renewal period writes, in
one script, ``wa:touch:{session}`` = Redis's time in ms (kept a day). Before it
stops a session, the owner asks how long ago that was (:meth:`Interest.elapsed`).
"""

from __future__ import annotations

from collections.abc import Iterable

from .store import PREFIX, ClusterError, RedisStore, _text

__all__ = ["KEEP_MS", "Interest"]

KEEP_MS = 24 * 3600 * 1000  # longer than any sensible inactive_after or idle timeout

# KEYS: the sessions' touch keys. ARGV: how long to keep them (ms).
TOUCH = """
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
for _, key in ipairs(KEYS) do redis.call('SET', key, now, 'PX', ARGV[1]) end
return #KEYS
"""

# KEYS: one touch key. {milliseconds since it was written} | {} (never, or not a time)
ELAPSED = """
local at = tonumber(redis.call('GET', KEYS[1]) or '')
if not at then return {} end
local t = redis.call('TIME')
return {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - at}
"""


def touch_key(session: str) -> str:
    return f"{PREFIX}touch:{session}"


class Interest:
    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.pending: set[str] = set()
        self._touch = store.client.register_script(TOUCH)
        self._elapsed = store.client.register_script(ELAPSED)

    def note(self, sessions: Iterable[str]) -> None:
        self.pending.update(sessions)

    async def flush(self) -> int:
        """Write what was noted since the last flush; given back on a Redis error."""
        sessions, self.pending = self.pending, set()
        if not sessions:
            return 0
        try:
            await self.store._call(
                "touch", self._touch(keys=[touch_key(s) for s in sorted(sessions)], args=[KEEP_MS])
            )
        except ClusterError:
            self.pending |= sessions
            raise
        return len(sessions)

    async def elapsed(self, session: str) -> float | None:
        """Seconds since another host last noted ``session``; None: never (or unreadable)."""
        reply = await self.store._call("touch", self._elapsed(keys=[touch_key(session)], args=[]))
        if not reply:
            return None
        try:
            return max(0.0, int(_text(reply[0])) / 1000)
        except ValueError:
            return None
