"""Where a new session goes: the least-loaded live host with room (sans I/O).

Read from the heartbeats ``wa:host:*`` as Redis holds them (strings). A host is
a candidate when its heartbeat is fresh (younger than ``stale_after``), it is
not draining (the field ``draining``; missing means not draining) and it has
room (``capacity - sessions > 0``). The most room wins; a tie prefers the host
that received the call (no hop), then the lowest host id (every host picks the
same one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Load", "choose", "parse_load"]

_TRUE = frozenset({"1", "true", "True", "yes"})


@dataclass(frozen=True, slots=True)
class Load:
    host: str
    capacity: int
    sessions: int
    at_us: int  # Redis's clock when the heartbeat was written
    draining: bool = False

    @property
    def room(self) -> int:
        return self.capacity - self.sessions


def parse_load(host: str, fields: Mapping[str, str]) -> Load | None:
    """A heartbeat's load; None when a field it needs is missing or of the wrong
    type (such a host is not chosen; the caller logs it)."""
    try:
        return Load(
            host,
            int(fields["capacity"]),
            int(fields["sessions"]),
            int(fields["at_us"]),
            fields.get("draining", "0") in _TRUE,
        )
    except (KeyError, ValueError):
        return None


def choose(loads: Iterable[Load], now_us: int, here: str, stale_after: float) -> str | None:
    """The host to place a new session on, or None when no live host has room."""
    candidates = [
        load for load in loads
        if not load.draining and load.room > 0 and (now_us - load.at_us) / 1e6 <= stale_after
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda load: (-load.room, load.host != here, load.host)).host
