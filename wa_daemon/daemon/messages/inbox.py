"""The durable inbox: every session's messages, and the sends made with an idempotency key.

SQLite in the state directory (``inbox.sqlite3``, mode 0600), or in memory for a
daemon without one. A message is written before anyone hears of it, with the
next number of its session's sequence; the sequence is kept apart from the rows,
so a number is never given twice, also after retention removed the rows that
held it. WhatsApp's message id is unique per session: a message the page reports
again (a reload, a sync after an outage) is recognised and not stored twice.

Writes are single transactions on the event loop (WAL, synchronous=NORMAL as the
registry): a crash keeps every committed message, a power loss may lose the last
few commits but never corrupts the file.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import msgspec

from ...message_types import Media, Message, MessagePage, SentMessage
from ..browser.base import PageMessage

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS messages (
        session TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, chat TEXT NOT NULL,
        sender TEXT NOT NULL, from_me INTEGER NOT NULL, type TEXT NOT NULL, text TEXT NOT NULL,
        at INTEGER NOT NULL, ack INTEGER NOT NULL, media TEXT, stored_at REAL NOT NULL,
        PRIMARY KEY (session, seq), UNIQUE (session, id))""",
    "CREATE TABLE IF NOT EXISTS sequences (session TEXT PRIMARY KEY, last INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS sends (
        session TEXT NOT NULL, key TEXT NOT NULL, digest TEXT NOT NULL, message_id TEXT NOT NULL,
        result TEXT, created REAL NOT NULL, PRIMARY KEY (session, key))""",
    "CREATE INDEX IF NOT EXISTS messages_age ON messages (session, stored_at)",
)
_COLUMNS = "seq, id, chat, sender, from_me, type, text, at, ack, media"


class InboxError(Exception):
    """The inbox could not be written or read (full or read-only disk, I/O error)."""


class Send(msgspec.Struct, frozen=True):
    """A send made with an idempotency key: begun (``result`` None) or done."""

    digest: str  # of the recipient and text: the same key for another message is refused
    message_id: str  # WhatsApp's id the message is sent under, chosen before sending
    result: SentMessage | None


class Inbox:
    def __init__(self, path: Path | None) -> None:
        """``path`` None: in memory, for a daemon that keeps nothing on disk."""
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # never readable by others, not even at first
            os.close(fd)
        self._db = sqlite3.connect(":memory:" if path is None else path, isolation_level=None, check_same_thread=False)
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        for statement in _SCHEMA:
            self._db.execute(statement)

    def close(self) -> None:
        self._db.close()

    # -- messages ------------------------------------------------------------------

    def add(self, session: str, msg: PageMessage, now: float) -> Message | None:
        """Store ``msg`` with the session's next seq; None when its id is there already."""
        media = None
        if msg.type != "chat" and (msg.mimetype or msg.size is not None or msg.filename):
            media = Media(msg.mimetype, msg.size, msg.filename)
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                if self._db.execute(
                    "SELECT 1 FROM messages WHERE session = ? AND id = ?", (session, msg.id)
                ).fetchone():
                    return None
                row = self._db.execute("SELECT last FROM sequences WHERE session = ?", (session,)).fetchone()
                seq = (row[0] if row else 0) + 1
                self._db.execute(
                    "INSERT INTO sequences (session, last) VALUES (?, ?)"
                    " ON CONFLICT(session) DO UPDATE SET last = excluded.last",
                    (session, seq),
                )
                self._db.execute(
                    f"INSERT INTO messages ({_COLUMNS}, session, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, msg.id, msg.chat, msg.sender, int(msg.from_me), msg.type, msg.text, msg.at, msg.ack,
                     None if media is None else msgspec.json.encode(media).decode(), session, now),
                )
        except sqlite3.Error as exc:
            raise InboxError(f"cannot write the inbox: {exc}") from None
        return Message(seq, msg.id, msg.chat, msg.sender, msg.from_me, msg.type, msg.text, utc_from_epoch(msg.at), msg.ack, media)

    def set_ack(self, session: str, message_id: str, ack: int) -> Message | None:
        """Record a new ack; None when the message is unknown or the ack is not news
        (acks only move forward; -1, an error, replaces only a pending or server ack)."""
        try:
            with self._db:
                cur = self._db.execute(
                    "UPDATE messages SET ack = ? WHERE session = ? AND id = ? AND (ack < ? OR (? = -1 AND ack BETWEEN 0 AND 1))",
                    (ack, session, message_id, ack, ack),
                )
                if cur.rowcount == 0:
                    return None
                row = self._db.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE session = ? AND id = ?", (session, message_id)
                ).fetchone()
        except sqlite3.Error as exc:
            raise InboxError(f"cannot write the inbox: {exc}") from None
        return _message(row) if row else None

    def page(self, session: str, after: int, limit: int) -> MessagePage:
        try:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE session = ? AND seq > ? ORDER BY seq LIMIT ?",
                (session, after, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise InboxError(f"cannot read the inbox: {exc}") from None
        messages = [_message(r) for r in rows]
        return MessagePage(messages, messages[-1].seq if messages else after)

    def count(self, session: str) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM messages WHERE session = ?", (session,)).fetchone()[0])

    # -- idempotent sends --------------------------------------------------------------

    def send(self, session: str, key: str) -> Send | None:
        row = self._db.execute(
            "SELECT digest, message_id, result FROM sends WHERE session = ? AND key = ?", (session, key)
        ).fetchone()
        if row is None:
            return None
        result = msgspec.json.decode(row[2], type=SentMessage) if row[2] else None
        return Send(row[0], row[1], result)

    def begin_send(self, session: str, key: str, digest: str, message_id: str, now: float) -> None:
        """Written before the page is asked to send: a retry after a crash sends under the same id."""
        self._write(
            "INSERT OR IGNORE INTO sends (session, key, digest, message_id, result, created) VALUES (?, ?, ?, ?, NULL, ?)",
            (session, key, digest, message_id, now),
        )

    def finish_send(self, session: str, key: str, result: SentMessage) -> None:
        self._write(
            "UPDATE sends SET result = ? WHERE session = ? AND key = ?",
            (msgspec.json.encode(result).decode(), session, key),
        )

    # -- upkeep ------------------------------------------------------------------------

    def forget(self, session: str) -> None:
        """Everything of a deleted session: its messages, its sequence, its sends."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for table in ("messages", "sequences", "sends"):
                    self._db.execute(f"DELETE FROM {table} WHERE session = ?", (session,))
        except sqlite3.Error as exc:
            raise InboxError(f"cannot write the inbox: {exc}") from None

    def prune(self, *, older_than: float | None, keep: int | None) -> int:
        """Remove messages stored before ``older_than`` (wall clock) and all but the
        newest ``keep`` of each session; idempotency records go with the age rule."""
        removed = 0
        try:
            with self._db:
                if older_than is not None:
                    removed += self._db.execute("DELETE FROM messages WHERE stored_at < ?", (older_than,)).rowcount
                    self._db.execute("DELETE FROM sends WHERE created < ?", (older_than,))
                if keep is not None:
                    removed += self._db.execute(
                        "DELETE FROM messages WHERE seq <= (SELECT s.last FROM sequences s"
                        " WHERE s.session = messages.session) - ?",
                        (keep,),
                    ).rowcount
        except sqlite3.Error as exc:
            raise InboxError(f"cannot prune the inbox: {exc}") from None
        return removed

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        try:
            self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise InboxError(f"cannot write the inbox: {exc}") from None


def utc_from_epoch(at: int) -> datetime:
    """WhatsApp's timestamp (seconds) as a time; the epoch for one that is not a time."""
    try:
        return datetime.fromtimestamp(at, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return datetime.fromtimestamp(0, timezone.utc)


def _message(row: tuple[object, ...]) -> Message:
    seq, mid, chat, sender, from_me, kind, text, at, ack, media = row
    return Message(
        seq=int(seq),  # type: ignore[call-overload]
        id=str(mid),
        chat=str(chat),
        sender=str(sender),
        from_me=bool(from_me),
        type=str(kind),
        text=str(text),
        at=utc_from_epoch(int(at)),  # type: ignore[call-overload]
        ack=int(ack),  # type: ignore[call-overload]
        media=msgspec.json.decode(media, type=Media) if isinstance(media, str) else None,
    )
