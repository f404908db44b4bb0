"""Sanity checks before a host joins the fleet (docs/cluster.md, "Joining").

- ``host_id`` must be unique: commands, heartbeats and leases name hosts by it. A
  heartbeat under this id from another process (each daemon draws a random
  ``instance`` id) may be the last one of a daemon that died (it lives up to
  ``lease_ttl``) or a live daemon's. Watching it for longer than a live host's
  heartbeat period tells them apart: renewed meanwhile means live, and this daemon
  refuses to start.
- ``lease_ttl`` must be the fleet's: after a Redis restart, a host with a shorter one
  would end its quarantine and take sessions while the others' browsers still run
  under their longer leases.

Refusing raises :class:`JoinRefused`; the daemon exits with EX_CONFIG (78), which
systemd does not restart in a loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from ..ops.log import get_logger

if TYPE_CHECKING:
    from .lease import LeaseTiming
    from .store import HostBeat, RedisStore

__all__ = ["JoinRefused", "check_join", "ttl_disagreement"]

log = get_logger("cluster")


class JoinRefused(Exception):
    """This daemon must not join the fleet with its configuration."""


def ttl_disagreement(host: str, ttl: float, beats: Sequence[HostBeat]) -> str | None:
    """Why ``ttl`` cannot join the live hosts ``beats``; None when it agrees."""
    others = [b for b in beats if b.host != host and abs(b.lease_ttl - ttl) > 1e-6]
    if not others:
        return None
    listed = ", ".join(f"{b.host}: {b.lease_ttl:g} s" for b in others[:5])
    return (
        f"lease_ttl {ttl:g} s differs from the live hosts' ({listed}); every host of a fleet must use "
        "the same lease_ttl (change it on all hosts together, with the fleet stopped)"
    )


async def check_join(store: RedisStore, host: str, instance: str, timing: LeaseTiming) -> None:
    """Raise :class:`JoinRefused` if this daemon may not join; ClusterError if Redis cannot tell."""
    beats, _ = await store.hosts()
    problem = ttl_disagreement(host, timing.ttl, beats)
    if problem is not None:
        raise JoinRefused(problem)
    seen = next((b for b in beats if b.host == host), None)
    if seen is None or seen.instance == instance:
        return
    wait = timing.pause_gap  # two heartbeat periods of a live host
    log.info("cluster_join_waiting", host=host, pid=seen.pid, seconds=wait)
    await trio.sleep(wait)
    again = await store.beat(host)
    if again is not None and again.instance != instance and again.at_us != seen.at_us:
        raise JoinRefused(
            f"host_id {host!r} is in use by another live daemon (pid {again.pid} on that host, version "
            f"{again.version}): its heartbeat was renewed while this one waited; give every daemon its own host_id"
        )
