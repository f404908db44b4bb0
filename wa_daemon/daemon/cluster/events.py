"""The fleet's event stream ``wa:events``: what one entry holds, encoded and decoded (sans I/O).

Every host XADDs its own sessions' watch events to one capped stream; every host
reads it. An entry is a flat map of byte strings (a Redis stream entry):

- ``v``: the format, ``1``; anything else is refused (a newer host's format).
- ``host``: the owner that published it; ``src``: that daemon process's run (the
  host id plus a random nonce), ``seq``: 1, 2, 3… per ``src``. A reader that
  sees a ``seq`` jump for the same ``src`` missed entries (the stream was trimmed
  past it): it resyncs (:class:`GapTracker`).
- ``kind``: ``event`` (a watch event: a state change with the status, a QR, a
  pairing code, a session error), ``status`` (the session's status changed
  without an event: busy, phone_offline, web_state…) or ``end`` (the session was
  deleted: watchers of it end with ``deleted``).
- ``session``, ``uid`` (the session's owner uid; empty when none): what a reader
  needs to filter by permission before it decodes anything else.
- ``data``: the event or status, JSON (msgspec), at most :data:`MAX_DATA` bytes.

Redis is trusted storage (a password, TLS): QR payloads and pairing codes travel
in ``data``. Nothing here logs; errors name fields, never their values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec

from ...errors import InvalidArgument
from ...protocol import (
    PairingCodeUpdated,
    QrUpdated,
    SessionError,
    SessionStatus,
    StateChanged,
    validate_session_id,
)
from ..sessions.hub import session_of

__all__ = [
    "FORMAT",
    "MAX_DATA",
    "STREAM",
    "STREAM_MAXLEN",
    "Entry",
    "EventFormatError",
    "FleetEvent",
    "GapTracker",
    "decode_entry",
    "encode_entry",
]

STREAM = "wa:events"
# The stream keeps about this many entries (XADD MAXLEN ~). An entry is a few hundred
# bytes (a status, a QR of ~250 characters): at most a few MB in Redis. A reader that
# is more than this many entries behind (a fleet of 10,000 sessions changing state at
# once, or a reader cut off from Redis for a while) misses entries: it notices the gap
# and resyncs from the sessions' rows, so the cap bounds memory, not correctness.
STREAM_MAXLEN = 10_000
FORMAT = b"1"
MAX_DATA = 16 * 1024  # a status with its QR is ~1 KB; anything near this is not ours
MAX_HOST = 200  # host_id and src
_FIELDS = frozenset({b"v", b"host", b"src", b"seq", b"kind", b"session", b"uid", b"data"})

Kind = Literal["event", "status", "end"]
FleetEvent = StateChanged | QrUpdated | PairingCodeUpdated | SessionError
_EVENT_DECODER = msgspec.json.Decoder(FleetEvent)
_STATUS_DECODER = msgspec.json.Decoder(SessionStatus)


class EventFormatError(ValueError):
    """A stream entry this daemon does not accept; the message names the field, never a value."""


@dataclass(frozen=True)
class Entry:
    host: str
    src: str
    seq: int
    kind: Kind
    session: str
    uid: int | None
    event: FleetEvent | None = None  # kind "event"
    status: SessionStatus | None = None  # kind "status" and "end" (the status when deleted)


def encode_entry(entry: Entry) -> dict[str, bytes]:
    """The fields of one XADD."""
    payload = entry.event if entry.kind == "event" else entry.status
    data = msgspec.json.encode(payload) if payload is not None else b""
    if len(data) > MAX_DATA:
        raise EventFormatError(f"{entry.kind} of {len(data)} bytes is over the cap of {MAX_DATA}")
    return {
        "v": FORMAT,
        "host": entry.host.encode(),
        "src": entry.src.encode(),
        "seq": str(entry.seq).encode(),
        "kind": entry.kind.encode(),
        "session": entry.session.encode(),
        "uid": b"" if entry.uid is None else str(entry.uid).encode(),
        "data": data,
    }


def _text(fields: Mapping[bytes, bytes], name: bytes, limit: int) -> str:
    value = fields.get(name)
    if not isinstance(value, bytes):
        raise EventFormatError(f"field {name.decode()!r} is missing")
    if len(value) > limit:
        raise EventFormatError(f"field {name.decode()!r} is longer than {limit} bytes")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise EventFormatError(f"field {name.decode()!r} is not UTF-8") from None


def _int(text: str, name: str, *, low: int) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) < low:
        raise EventFormatError(f"field {name!r} is not an integer >= {low}")
    return int(text)


def decode_entry(raw: Mapping[bytes | str, bytes | str]) -> Entry:
    """One stream entry, checked field by field; :class:`EventFormatError` for anything else."""
    if not isinstance(raw, Mapping) or not all(isinstance(x, bytes | str) for kv in raw.items() for x in kv):
        raise EventFormatError("the entry is not a map of strings")
    fields = {(k.encode() if isinstance(k, str) else k): (v.encode() if isinstance(v, str) else v)
              for k, v in raw.items()}
    unknown = set(fields) - _FIELDS
    if unknown:
        names = sorted(k.decode("utf-8", "replace")[:40] for k in unknown)[:5]
        raise EventFormatError(f"unknown fields {names}")
    if fields.get(b"v") != FORMAT:
        raise EventFormatError(f"format 'v' is not {FORMAT.decode()} (a newer daemon's, or not ours)")
    host = _text(fields, b"host", MAX_HOST)
    src = _text(fields, b"src", MAX_HOST)
    if not host or not src.startswith(host):
        raise EventFormatError("field 'src' does not name the entry's host")
    seq = _int(_text(fields, b"seq", 20), "seq", low=1)
    kind = _text(fields, b"kind", 10)
    if kind not in ("event", "status", "end"):
        raise EventFormatError("field 'kind' is not event, status or end")
    try:
        session = validate_session_id(_text(fields, b"session", 100))
    except InvalidArgument:
        raise EventFormatError("field 'session' is not a session id") from None
    uid_text = _text(fields, b"uid", 20)
    uid = _int(uid_text, "uid", low=0) if uid_text else None
    data = fields.get(b"data", b"")
    if len(data) > MAX_DATA:
        raise EventFormatError(f"field 'data' is over the cap of {MAX_DATA} bytes")
    event: FleetEvent | None = None
    status: SessionStatus | None = None
    try:
        if kind == "event":
            event = _EVENT_DECODER.decode(data)
        elif data or kind == "status":
            status = _STATUS_DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise EventFormatError(f"field 'data' is not a valid {kind}: {decode_error(exc)}") from None
    named = session_of(event) if event is not None else status.session if status is not None else session
    if named != session:
        raise EventFormatError("field 'data' is about another session than 'session'")
    return Entry(host, src, seq, kind, session, uid, event, status)  # type: ignore[arg-type]


def decode_error(exc: msgspec.DecodeError) -> str:
    """msgspec's message with any quoted value blanked: it names the path
    (``$.status.state``), and the value could be a credential in the wrong place."""
    return re.sub(r"'[^']*'", "'…'", str(exc))[:200]


class GapTracker:
    """Per publisher run (``src``), the last ``seq`` read: a jump means entries were lost."""

    def __init__(self, limit: int = 10_000) -> None:
        self._last: dict[str, int] = {}
        self._limit = limit  # runs come and go (restarts): keep the table bounded

    def saw(self, src: str, seq: int) -> bool:
        """Record ``seq`` of ``src``; False if entries between the last one and it are missing."""
        last = self._last.get(src)
        if last is None and len(self._last) >= self._limit:
            self._last.clear()
        self._last[src] = max(seq, last or 0)
        return last is None or seq <= last + 1

    def reset(self) -> None:
        self._last.clear()
