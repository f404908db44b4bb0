"""The decisions of a send, sans I/O: whether a session can send now, must be waited
for, or is unavailable; how long to hold a send back for the session's pace; and
what makes two sends under one idempotency key the same message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum

from ...protocol import State


class Gate(Enum):
    GO = "go"
    WAIT = "wait"  # on its way to connected by itself: wait, bounded by send_wait
    REFUSE = "refuse"  # stopped, failed, logged out, or waiting for a human to link it


# States a session leaves for connected without anybody's help.
_ON_ITS_WAY = frozenset({State.STARTING, State.AUTHENTICATING, State.RECONNECTING})


def gate(state: State) -> Gate:
    if state == State.CONNECTED:
        return Gate.GO
    return Gate.WAIT if state in _ON_ITS_WAY else Gate.REFUSE


def digest(chat: str, text: str) -> str:
    """What identifies a message under an idempotency key, without keeping its text."""
    return hashlib.sha256(chat.encode() + b"\0" + text.encode()).hexdigest()


@dataclass
class Pacer:
    """At most one send per ``interval`` seconds per session (0: no pacing).

    WhatsApp's spam detection looks at how fast an account sends; a steady, human
    pace keeps a linked account out of its way (docs/messages.md)."""

    interval: float
    _last: dict[str, float] = field(default_factory=dict)

    def delay(self, session: str, now: float) -> float:
        """How long a send of ``session`` must wait from ``now``."""
        last = self._last.get(session)
        return 0.0 if last is None else max(0.0, last + self.interval - now)

    def sent(self, session: str, now: float) -> None:
        self._last[session] = now

    def forget(self, session: str) -> None:
        self._last.pop(session, None)
