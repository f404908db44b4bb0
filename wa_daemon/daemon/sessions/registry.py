"""Where the daemon records each session's desired state.

The manager talks to the :class:`Registry` interface only: SQLite in the state
directory (restore after a restart), memory (tests, scripted runs without a
state directory), and later Redis (several hosts sharing sessions under
leases) behind the same four methods.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import msgspec

from .options import SessionOptions

__all__ = ["MemoryRegistry", "Registry", "RegistryError", "SessionOptions", "SessionRecord", "SqliteRegistry"]


class RegistryError(Exception):
    """A write did not reach the registry (read-only or full file system, I/O error)."""


class SessionRecord(msgspec.Struct, frozen=True):
    session: str
    owner_uid: int | None
    created_at: datetime
    should_run: bool
    options: SessionOptions = SessionOptions()
    linked: bool = False  # the profile holds a login (reached connected, not logged out since)


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


class SqliteRegistry:
    """Desired state in ``<state>/registry.sqlite3``.

    Every write is one statement in its own transaction, so a crash leaves either
    the old row or the new one, never a torn file. WAL with synchronous=NORMAL:
    no fsync per commit (writes happen on the event loop); a power loss can drop
    the last few commits but never corrupts the database.
    """

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS sessions (
            session    TEXT PRIMARY KEY,
            owner_uid  INTEGER,
            created_at TEXT NOT NULL,
            should_run INTEGER NOT NULL,
            options    TEXT NOT NULL DEFAULT '{}',
            updated_at TEXT NOT NULL,
            linked     INTEGER NOT NULL DEFAULT 0
        )
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        # Options hold proxy passwords: the file is the daemon's only, made so before
        # SQLite creates its -wal and -shm files (which take the database's mode).
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if each.exists():
                os.chmod(each, 0o600)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(self.SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
        if "linked" not in columns:  # a registry written before sessions remembered their link
            self._db.execute("ALTER TABLE sessions ADD COLUMN linked INTEGER NOT NULL DEFAULT 0")

    def load(self) -> list[SessionRecord]:
        rows = self._db.execute(
            "SELECT session, owner_uid, created_at, should_run, options, linked FROM sessions"
            " ORDER BY created_at, session"
        ).fetchall()
        return [
            SessionRecord(
                sid,
                uid,
                datetime.fromisoformat(created),
                bool(run),
                msgspec.json.decode(opts, type=SessionOptions),
                bool(linked),
            )
            for sid, uid, created, run, opts, linked in rows
        ]

    def put(self, record: SessionRecord) -> None:
        self._write(
            "INSERT INTO sessions (session, owner_uid, created_at, should_run, options, updated_at, linked)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(session) DO UPDATE SET should_run = excluded.should_run,"
            " options = excluded.options, updated_at = excluded.updated_at, linked = excluded.linked",
            (
                record.session,
                record.owner_uid,
                record.created_at.isoformat(),
                int(record.should_run),
                msgspec.json.encode(record.options).decode(),
                datetime.now(timezone.utc).isoformat(),
                int(record.linked),
            ),
        )

    def remove(self, session: str) -> None:
        self._write("DELETE FROM sessions WHERE session = ?", (session,))

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        # One statement, autocommit: on error SQLite has rolled it back and the file
        # holds the previous row; the connection stays usable once the disk is back.
        try:
            self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise RegistryError(f"cannot write {self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()
