"""How fast a survivor takes orphaned sessions over (sans I/O; docs/cluster.md, "Failover").

A survivor takes orphans as fast as its launch queue frees, up to its room: each
round acquires at most the launch slots not taken by its sessions still
``starting``, and the next round runs as soon as a slot frees (the node looks
every :data:`CHASE_EVERY` seconds while orphans may be left), not a renewal
period later. Capping each round at the free slots keeps one survivor from
grabbing a dead host's whole list: every survivor's rounds run back to back,
each at the pace of its own launches, so they share the work by launch speed.
And they start together: an upkeep that finds a lease expiring before its next
one (``NEXT_EXPIRY``, on Redis's clock) scans right when it expires, so a survivor
whose upkeep comes first gets no head start of up to a renewal period.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CHASE_EVERY", "TakeoverPace", "takeover_quota"]

CHASE_EVERY = 0.05  # seconds between local looks at the launch queue while orphans may be left
EXPIRY_SLACK = 0.05  # after a lease's expiry time, before scanning for it (clocks, Redis's expiry)


def takeover_quota(room: int, launch_slots: int, starting: int) -> int:
    """How many orphans to acquire now: the free launch slots, at most the room."""
    return max(0, min(room, launch_slots - starting))


@dataclass
class TakeoverPace:
    """Whether orphans may be left after the last takeover round (then the node scans
    again as soon as a launch slot frees, instead of at its next upkeep)."""

    more: bool = False
    wake_at: float | None = None  # when a lease the last upkeep saw expiring will have expired

    def expiring(self, now: float, after: float | None) -> None:
        """The upkeep found no orphans left but a lease expiring ``after`` s from now
        (None: none within the next renewal period): scan right then, so every
        survivor starts at once instead of at its own upkeep's phase."""
        self.wake_at = None if after is None else now + after + EXPIRY_SLACK

    def asked(self, quota: int, found: int) -> None:
        """A round asked ``ORPHANS`` for ``quota`` and found ``found`` it may take:
        a full answer may mean more are waiting; a short one means none are left."""
        self.more = quota > 0 and found >= quota

    def due(self, now: float, room: int, launch_slots: int, starting: int) -> bool:
        """Scan again now: orphans may be left, and a launch slot and room are free."""
        if self.wake_at is not None and now >= self.wake_at:
            self.wake_at = None
            self.more = True
        if room <= 0:
            self.more = False  # full: the next upkeep looks again if room comes
        return self.more and takeover_quota(room, launch_slots, starting) > 0
