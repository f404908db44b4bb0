"""Where the daemon records each session's desired state.

The manager talks to the :class:`Registry` interface only. This issue ships
the in-memory implementation; the SQLite one (restore after a restart) and a
Redis one (several hosts sharing sessions under leases) plug in behind the
same four methods.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import msgspec


class SessionRecord(msgspec.Struct, frozen=True):
    session: str
    owner_uid: int | None
    created_at: datetime
    should_run: bool


class Registry(Protocol):
    def load(self) -> list[SessionRecord]: ...

    def put(self, record: SessionRecord) -> None: ...

    def remove(self, session: str) -> None: ...

    def close(self) -> None: ...


class MemoryRegistry:
    """Lives as long as the daemon process; nothing survives a restart."""

    def __init__(self) -> None:
        self._records: dict[str, SessionRecord] = {}

    def load(self) -> list[SessionRecord]:
        return list(self._records.values())

    def put(self, record: SessionRecord) -> None:
        self._records[record.session] = record

    def remove(self, session: str) -> None:
        self._records.pop(session, None)

    def close(self) -> None:
        pass
