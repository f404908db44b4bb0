"""The leases this host holds, and when to renew or self-fence them (sans I/O).

No clock, no Redis: the caller passes ``now`` (trio's monotonic clock) and tells
the table what it sent and what came back; the table answers with decisions.

A lease is good until ``sent + ttl``, ``sent`` being when the request that
acquired or last renewed it was *sent*: Redis started its TTL after that, so
this host's idea of the expiry is never later than Redis's. The fence point is
``margin`` before that: a lease not renewed by then has its session's browser
stopped at once, so the browser is dead before anybody else can acquire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

__all__ = ["FenceReason", "Lease", "LeaseTable", "LeaseTiming", "RenewBatch"]


@dataclass(frozen=True)
class LeaseTiming:
    """Every interval derives from the lease's life: the hosts of a fleet share it."""

    ttl: float

    @property
    def renew_every(self) -> float:
        return self.ttl / 5

    @property
    def margin(self) -> float:
        # Stopping a browser by SIGKILL to its process group takes milliseconds;
        # a fifth of the TTL (3 s at 15 s) also covers a slow loop and clock-rate drift.
        return self.ttl / 5

    @property
    def renew_timeout(self) -> float:
        return self.ttl / 5

    @property
    def pause_gap(self) -> float:
        """Ticks further apart than this mean the host was paused (SIGSTOP, a frozen VM)."""
        return 2 * self.renew_every


class FenceReason(str, Enum):
    EXPIRING = "expiring"  # not renewed in time (Redis unreachable or slow)
    LOST = "lost"  # Redis says another value (or none) holds the lease
    PAUSE = "pause"  # the host was paused past the fence point


@dataclass
class Lease:
    session: str
    value: str  # "{token} {host}": what the scripts compare
    token: int
    sent: float  # when the request behind the last confirmation was sent
    verified: bool = True  # false after a pause, until a renewal sent after it confirms
    paused_at: float = 0.0


@dataclass(frozen=True)
class RenewBatch:
    sent: float
    leases: tuple[tuple[str, str], ...]  # (session, value)


@dataclass
class LeaseTable:
    host_id: str
    timing: LeaseTiming
    held: dict[str, Lease] = field(default_factory=dict)
    highest_token: int = 0  # ACQUIRE is asked for more than this: tokens only grow
    _last_tick: float | None = None
    _next_renew: float = 0.0
    _inflight: RenewBatch | None = None  # the renewal sent and not answered yet

    # ------------------------------------------------------------------ facts

    def fence_at(self, session: str) -> float | None:
        lease = self.held.get(session)
        return None if lease is None else lease.sent + self.timing.ttl - self.timing.margin

    def may_write(self, session: str, now: float) -> bool:
        """Whether a write under this lease may be sent now (the script checks again)."""
        lease = self.held.get(session)
        return (
            lease is not None
            and lease.verified
            and now < lease.sent + self.timing.ttl - self.timing.margin
        )

    def value(self, session: str) -> str | None:
        lease = self.held.get(session)
        return None if lease is None else lease.value

    # ------------------------------------------------------------------ what happened

    def acquired(self, session: str, value: str, sent: float) -> Lease:
        token = parse_token(value)
        self.highest_token = max(self.highest_token, token)
        lease = self.held[session] = Lease(session, value, token, sent)
        return lease

    def released(self, session: str) -> None:
        self.held.pop(session, None)

    def saw_token(self, token: int) -> None:
        self.highest_token = max(self.highest_token, token)

    # ------------------------------------------------------------------ decisions

    def tick(self, now: float) -> tuple[list[tuple[str, FenceReason]], bool]:
        """(leases to fence now, whether a renewal is due). The fenced ones are
        forgotten here: the caller stops their browsers and writes nothing for them."""
        paused = self._last_tick is not None and now - self._last_tick > self.timing.pause_gap
        self._last_tick = now
        if paused:
            for lease in self.held.values():
                lease.verified = False
                lease.paused_at = now
            self._inflight = None  # what was in flight before the pause proves nothing now
            self._next_renew = now
        fence: list[tuple[str, FenceReason]] = []
        limit = self.timing.ttl - self.timing.margin
        for session, lease in list(self.held.items()):
            if now >= lease.sent + limit:
                fence.append((session, FenceReason.PAUSE if paused else FenceReason.EXPIRING))
                del self.held[session]
        due = bool(self.held) and self._inflight is None and now >= self._next_renew
        return fence, due

    def renew_batch(self, now: float) -> RenewBatch:
        """The renewal to send now (the caller sends it at once)."""
        self._next_renew = now + self.timing.renew_every
        batch = self._inflight = RenewBatch(now, tuple((s, lease.value) for s, lease in self.held.items()))
        return batch

    def renewed(self, batch: RenewBatch, results: dict[str, bool]) -> list[tuple[str, FenceReason]]:
        """Redis answered ``batch``: confirm the kept leases, return the lost ones to fence."""
        if self._inflight is batch:
            self._inflight = None
        lost: list[tuple[str, FenceReason]] = []
        for session, value in batch.leases:
            lease = self.held.get(session)
            if lease is None or lease.value != value:
                continue  # fenced or released meanwhile, or acquired anew: not this batch's
            if not results.get(session, False):
                lost.append((session, FenceReason.LOST))
                del self.held[session]
            elif batch.sent > lease.sent:
                lease.sent = batch.sent
                if not lease.verified and batch.sent >= lease.paused_at:
                    lease.verified = True
        return lost

    def renew_failed(self, batch: RenewBatch) -> None:
        """The renewal got no answer (Redis down, a timeout): the fence points stand."""
        if self._inflight is batch:
            self._inflight = None


def parse_token(value: str) -> int:
    token, _, host = value.partition(" ")
    if not token.isdigit() or not host:
        raise ValueError(f"not a lease value: {value[:80]!r}")
    return int(token)
