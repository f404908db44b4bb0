"""Mutations routed to a session's owner, as they travel through Redis (sans I/O).

A host that receives ``connect``/``disconnect``/``logout``/``delete``/``send_text``
(or ``simulate``) for a session another host owns appends a :class:`Command` to
the owner's stream ``wa:cmd:{host}`` (one entry field, ``c``: the command in
msgpack) and waits for the :class:`Answer` on ``wa:reply:{request_id}``.

Everything read from Redis is hostile until decoded here: an entry with another
shape, an unknown field, a wrong type or garbage is refused with a
:class:`CommandRefused` that names what is wrong, never a crash of the reader.
Nothing here quotes the params (a message body may be in them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from ...errors import WaDaemonError, error_from_wire
from ..rpc.access import ADMIN, UNKNOWN, Caller, PeerCredentials

__all__ = [
    "ROUTED",
    "Answer",
    "Command",
    "CommandRefused",
    "decode_answer",
    "decode_entry",
    "encode_answer",
    "encode_command",
    "entry_ms",
    "error_answer",
    "reply_key",
    "stream_key",
]

# The methods that change a session, and so must run on its owner.
ROUTED: Final = frozenset({"connect", "disconnect", "logout", "delete", "send_text", "simulate"})

FIELD: Final = b"c"  # the one field of a stream entry
MAX_PARAMS: Final = 1 << 20  # bytes of msgpack params; far above any frame a client may send
MAX_BUDGET_MS: Final = 3_600_000
_REQUEST_ID = re.compile(r"[0-9a-f]{32}")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ENTRY_ID = re.compile(rb"([0-9]{1,20})-([0-9]{1,20})")


def stream_key(host: str) -> str:
    return f"wa:cmd:{host}"


def reply_key(request_id: str) -> str:
    return f"wa:reply:{request_id}"


class Command(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One routed call. ``budget_ms`` counts from the entry's id (Redis's clock when
    it was appended), so the deadline is on one clock for every host."""

    id: str  # 32 hex digits; the reply goes to wa:reply:{id}
    method: str
    params: bytes  # the msgpack params as the receiving host got them
    uid: int | None  # the caller's SO_PEERCRED uid/gid; None when unreadable
    gid: int | None
    admin: bool  # decided by the receiving host (its admin_uids, admin_group)
    budget_ms: int
    origin: str  # the receiving host, for the owner's log

    @property
    def caller(self) -> Caller:
        if self.admin:
            return ADMIN
        return UNKNOWN if self.uid is None else Caller.user(self.uid)

    @property
    def credentials(self) -> PeerCredentials | None:
        # pid 0: the peer is on another host, there is no local process.
        return None if self.uid is None or self.gid is None else PeerCredentials(0, self.uid, self.gid)


class Answer(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The owner's answer: ``result`` (msgpack, as its own client would get it), or an error."""

    result: msgspec.Raw = msgspec.Raw(b"\xc0")  # msgpack nil (delete's result)
    code: str | None = None  # set: an error, and result means nothing
    message: str = ""
    details: dict[str, Any] = {}


class CommandRefused(Exception):
    """A stream entry that is not a command this host accepts. ``request_id`` is set
    when the entry named a valid one, so the sender can be answered at once."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Entry:
    command: Command
    sent_ms: int  # Redis's clock when the entry was appended (from its id)

    @property
    def deadline_ms(self) -> int:
        return self.sent_ms + self.command.budget_ms


_encoder = msgspec.msgpack.Encoder()
_command = msgspec.msgpack.Decoder(Command)
_answer = msgspec.msgpack.Decoder(Answer)
_loose = msgspec.msgpack.Decoder(dict[str, Any])


def encode_command(command: Command) -> dict[bytes, bytes]:
    """The stream entry's fields."""
    return {FIELD: _encoder.encode(command)}


def entry_ms(entry_id: bytes | str) -> int:
    """Redis's clock (ms) at which an entry was appended, from its id ``ms-seq``."""
    raw = entry_id.encode() if isinstance(entry_id, str) else entry_id
    match = _ENTRY_ID.fullmatch(raw)
    if match is None:
        raise CommandRefused(f"stream entry id {raw[:40]!r} is not ms-seq")
    return int(match.group(1))


def decode_entry(entry_id: bytes | str, fields: Any) -> Entry:
    """A stream entry as a command, or :class:`CommandRefused` saying why not."""
    sent_ms = entry_ms(entry_id)
    if not isinstance(fields, dict):
        raise CommandRefused(f"entry fields are a {type(fields).__name__}, not a map")
    keys = {k.encode() if isinstance(k, str) else k for k in fields}
    if keys != {FIELD}:
        shown = sorted(repr(k)[:40] for k in keys)[:5]
        raise CommandRefused(f"entry fields {shown} are not exactly [b'c']")
    data = fields.get(FIELD, fields.get(FIELD.decode()))
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, bytes):
        raise CommandRefused("entry field c is not bytes")
    try:
        command = _command.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise CommandRefused(f"not a command: {str(exc)[:200]}", _request_id_of(data)) from None
    _check(command)
    return Entry(command, sent_ms)


def _request_id_of(data: bytes) -> str | None:
    """The request id of an entry that is not a valid command, if it names a good one."""
    try:
        loose = _loose.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    rid = loose.get("id")
    return rid if isinstance(rid, str) and _REQUEST_ID.fullmatch(rid) else None


def _check(c: Command) -> None:
    if not _REQUEST_ID.fullmatch(c.id):
        raise CommandRefused("request id is not 32 hex digits")
    if c.method not in ROUTED:
        raise CommandRefused(f"method {c.method[:40]!r} is not routed", c.id)
    if len(c.params) > MAX_PARAMS:
        raise CommandRefused(f"params of {len(c.params)} bytes exceed {MAX_PARAMS}", c.id)
    for name, value in (("uid", c.uid), ("gid", c.gid)):
        if value is not None and not 0 <= value < 1 << 32:
            raise CommandRefused(f"{name} {value} is out of range", c.id)
    if not 0 < c.budget_ms <= MAX_BUDGET_MS:
        raise CommandRefused(f"budget_ms {c.budget_ms} is out of range", c.id)
    if not _HOST.fullmatch(c.origin):
        raise CommandRefused("origin is not a host id", c.id)


def encode_answer(result: Any) -> bytes:
    """A successful answer; ``result`` is what the handler returned."""
    return _encoder.encode(Answer(result=msgspec.Raw(_encoder.encode(result))))


def error_answer(exc: WaDaemonError) -> bytes:
    return _encoder.encode(Answer(code=exc.code, message=exc.message, details=exc.details))


def decode_answer(data: bytes) -> msgspec.Raw | WaDaemonError:
    """The owner's result (msgpack, to send on as it is) or its error."""
    try:
        answer = _answer.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return error_from_wire("internal", f"the owner's answer is not valid: {str(exc)[:200]}")
    if answer.code is not None:
        return error_from_wire(answer.code, answer.message, answer.details)
    return answer.result
