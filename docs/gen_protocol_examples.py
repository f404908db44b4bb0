"""Print the hex examples of docs/protocol.md, built with the real protocol code.

    python docs/gen_protocol_examples.py

The output is the Markdown between the ``BEGIN EXAMPLES`` and ``END EXAMPLES``
markers of docs/protocol.md; paste it there whenever the protocol changes.
Everything is fixed (ids, names, datetimes), so the output is reproducible.
It needs only the plain install (``wa_daemon.protocol``), not the daemon extra.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import msgspec

from wa_daemon.protocol import (
    HEADER,
    PROTOCOL_VERSION,
    Error,
    Hello,
    Reply,
    Request,
    SessionParams,
    SessionStatus,
    State,
    Welcome,
    decode_as,
    encode_frame,
    params_error,
    to_raw,
)

HEX_COLUMN = 44  # where the annotation column starts
BYTES_PER_LINE = 16


def hx(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def _describe_ext(code: int, payload: bytes) -> str:
    if code != -1:
        return f"ext type {code}, {len(payload)} bytes"
    if len(payload) == 4:
        (secs,) = struct.unpack(">I", payload)
        nanos = 0
        kind = "timestamp 32"
    elif len(payload) == 8:
        (word,) = struct.unpack(">Q", payload)
        nanos, secs = word >> 34, word & ((1 << 34) - 1)
        kind = "timestamp 64"
    else:
        nanos, secs = struct.unpack(">Iq", payload)
        kind = "timestamp 96"
    at = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(
        seconds=secs, microseconds=nanos // 1000
    )
    return f"{kind}: {at.isoformat().replace('+00:00', 'Z')}"


class _Reader:
    """A minimal msgpack walker that yields (depth, raw bytes, meaning) per item."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        if len(chunk) != n:
            raise ValueError("truncated msgpack")
        self.pos += n
        return chunk

    def items(self, depth: int = 0, role: str = "") -> Iterator[tuple[int, bytes, str]]:
        start = self.pos
        b = self.take(1)[0]
        prefix = f"{role} " if role else ""

        def done(meaning: str) -> tuple[int, bytes, str]:
            return depth, self.data[start : self.pos], prefix + meaning

        def string(n: int, label: str) -> tuple[int, bytes, str]:
            text = self.take(n).decode()
            return done(f"{label} {json.dumps(text, ensure_ascii=False)}")

        def container(n: int, is_map: bool, label: str) -> Iterator[tuple[int, bytes, str]]:
            noun = ("entry" if n == 1 else "entries") if is_map else ("item" if n == 1 else "items")
            yield done(f"{label}, {n} {noun}")
            for _ in range(n):
                if is_map:
                    yield from self.items(depth + 1, "key")
                    yield from self.items(depth + 1, "  value")
                else:
                    yield from self.items(depth + 1)

        if b <= 0x7F:
            yield done(f"positive fixint {b}")
        elif 0x80 <= b <= 0x8F:
            yield from container(b & 0x0F, True, "fixmap")
        elif 0x90 <= b <= 0x9F:
            yield from container(b & 0x0F, False, "fixarray")
        elif 0xA0 <= b <= 0xBF:
            yield string(b & 0x1F, f"fixstr({b & 0x1F})")
        elif b == 0xC0:
            yield done("nil")
        elif b == 0xC2:
            yield done("false")
        elif b == 0xC3:
            yield done("true")
        elif b in (0xCC, 0xCD, 0xCE, 0xCF):
            size = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}[b]
            yield done(f"uint{size * 8} {int.from_bytes(self.take(size), 'big')}")
        elif b in (0xD0, 0xD1, 0xD2, 0xD3):
            size = {0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}[b]
            yield done(f"int{size * 8} {int.from_bytes(self.take(size), 'big', signed=True)}")
        elif b == 0xCA:
            yield done(f"float32 {struct.unpack('>f', self.take(4))[0]!r}")
        elif b == 0xCB:
            yield done(f"float64 {struct.unpack('>d', self.take(8))[0]!r}")
        elif b in (0xD9, 0xDA, 0xDB):
            size = {0xD9: 1, 0xDA: 2, 0xDB: 4}[b]
            n = int.from_bytes(self.take(size), "big")
            yield string(n, f"str{size * 8}({n})")
        elif b in (0xD4, 0xD5, 0xD6, 0xD7, 0xD8):
            n = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}[b]
            code = struct.unpack(">b", self.take(1))[0]
            yield done(f"fixext{n} type {code}, " + _describe_ext(code, self.take(n)))
        elif b in (0xC7, 0xC8, 0xC9):
            size = {0xC7: 1, 0xC8: 2, 0xC9: 4}[b]
            n = int.from_bytes(self.take(size), "big")
            code = struct.unpack(">b", self.take(1))[0]
            yield done(f"ext{size * 8} type {code}, " + _describe_ext(code, self.take(n)))
        elif b in (0xDE, 0xDF):
            size = 2 if b == 0xDE else 4
            yield from container(int.from_bytes(self.take(size), "big"), True, f"map{size * 8}")
        elif b in (0xDC, 0xDD):
            size = 2 if b == 0xDC else 4
            yield from container(int.from_bytes(self.take(size), "big"), False, f"array{size * 8}")
        elif b >= 0xE0:
            yield done(f"negative fixint {b - 256}")
        else:
            raise ValueError(f"msgpack byte {b:#04x} not handled by this walker")


def annotate(frame: bytes) -> list[str]:
    (length,) = HEADER.unpack_from(frame)
    lines = [f"{hx(frame[:4]):<{HEX_COLUMN}}length prefix: {length} bytes of msgpack follow"]
    reader = _Reader(frame[4:])
    for depth, raw, meaning in reader.items():
        indent = "  " * depth
        chunks = [raw[i : i + BYTES_PER_LINE] for i in range(0, len(raw), BYTES_PER_LINE)]
        first = f"{indent}{hx(chunks[0])}"
        lines.append(
            f"{first:<{HEX_COLUMN}}{meaning}" if len(first) < HEX_COLUMN else f"{first}  {meaning}"
        )
        lines.extend(f"{indent}{hx(chunk)}" for chunk in chunks[1:])
    if reader.pos != length:
        raise ValueError("the frame body holds more than one msgpack object")
    return lines


def plain(frame: bytes) -> list[str]:
    return [hx(frame[i : i + 32]) for i in range(0, len(frame), 32)]


def section(title: str, what: str, frame: bytes) -> list[str]:
    decoded = msgspec.msgpack.decode(frame[4:])
    as_json = msgspec.json.format(msgspec.json.encode(decoded), indent=2).decode()
    return [
        f"#### {title}",
        "",
        (
            f"{what} {len(frame)} bytes on the wire (4-byte header + {len(frame) - 4}-byte body). "
            "The body shown as JSON (timestamps as RFC 3339 text; on the wire they are msgpack "
            "timestamps), then the whole frame in hex, then the frame annotated item by item:"
        ),
        "",
        "```json",
        as_json,
        "```",
        "",
        "```",
        *plain(frame),
        "```",
        "",
        "```",
        *annotate(frame),
        "```",
        "",
    ]


def bad_session_error(rid: int) -> Error:
    """The daemon's answer to a ``status`` request whose session id breaks the rule."""
    try:
        decode_as(to_raw({"session": "-x"}), SessionParams)
    except msgspec.ValidationError as exc:
        err = params_error("status", exc)
        return Error(rid, err.code, err.message, err.details)
    raise AssertionError("the session id rule let '-x' through")


def main() -> None:
    created = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    since = datetime(2024, 5, 1, 12, 0, 5, 250000, tzinfo=timezone.utc)
    frames = [
        (
            "1. Client → daemon: hello",
            '`Hello(protocol=1, client="wactl")`:',
            encode_frame(Hello(PROTOCOL_VERSION, "wactl")),
        ),
        (
            "2. Daemon → client: welcome",
            '`Welcome(protocol=1, server="wa-daemon/0.1.0", max_frame=1048576)`:',
            encode_frame(Welcome(PROTOCOL_VERSION, "wa-daemon/0.1.0", 1 << 20)),
        ),
        (
            "3. Client → daemon: request `status` of session `alice`, id 1",
            '`Request(id=1, method="status", params={"session": "alice"})`:',
            encode_frame(Request(id=1, method="status", params=to_raw(SessionParams("alice")))),
        ),
        (
            "4. Daemon → client: reply to request 1",
            (
                "`Reply(id=1, result=SessionStatus(...))` for a connected session (fixed times: "
                "`created_at` 2024-05-01T12:00:00Z, `since` 2024-05-01T12:00:05.25Z):"
            ),
            encode_frame(
                Reply(
                    id=1,
                    result=to_raw(
                        SessionStatus(
                            session="alice",
                            state=State.CONNECTED,
                            since=since,
                            attempt=0,
                            reason="app_loaded",
                            owner_uid=1000,
                            created_at=created,
                        )
                    ),
                )
            ),
        ),
        (
            "5. Daemon → client: error for request 2, a `status` of session `-x`",
            "`Error(id=2, code=\"invalid_argument\", ...)`: the session id breaks the rule (§9):",
            encode_frame(bad_session_error(2)),
        ),
    ]
    out: list[str] = []
    for title, what, frame in frames:
        out += section(title, what, bytes(frame))
    print("\n".join(out).rstrip("\n"))


if __name__ == "__main__":
    main()
