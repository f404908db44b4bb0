"""What wactl shows a human: tables, one-line events, QR codes in the terminal and as PNG.

Everything here is pure formatting (strings in, strings out) except
:func:`save_png`, so views.py decides where output goes and tests can call these
directly.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from io import StringIO
from pathlib import Path

import segno

from wa_daemon.message_types import Message, MessageAck, MessageReceived
from wa_daemon.protocol import (
    End,
    HostList,
    PairingCode,
    PairingCodeUpdated,
    QrCode,
    QrUpdated,
    Sample,
    SessionError,
    SessionStatus,
    Snapshot,
    StateChanged,
    Transition,
    WatchEvent,
)

NONE = "-"


def iso(dt: datetime | None) -> str:
    """ISO 8601 UTC to the second: ``2024-05-01T12:00:00Z``."""
    if dt is None:
        return NONE
    if dt.tzinfo is None:
        # The daemon always sends UTC; a naive value can only be UTC that lost its zone.
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def cell(value: object) -> str:
    """One table cell: empty values as ``-``, and never a line break that would split a row."""
    if value is None or value == "":
        return NONE
    return " ".join(str(value).split())


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    body = [list(r) for r in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = []
    for row in [list(headers), *body]:
        padded = [value.ljust(widths[i]) for i, value in enumerate(row[:-1])]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------- tables


def state_cell(status: SessionStatus) -> str:
    """The state, with the flags worth a glance."""
    flags = [
        name for name, on in (("phone offline", status.phone_offline), ("busy", status.busy)) if on
    ]
    if status.stale:
        flags.append("stale")  # another host's session, its last known state (docs/cluster.md)
    return status.state.value + (f" [{', '.join(flags)}]" if flags else "")


def status_table(statuses: Sequence[SessionStatus]) -> str:
    headers = ["SESSION", "STATE", "SINCE", "ATTEMPT", "REASON", "LAST_ERROR"]
    with_qr = any(s.qr is not None for s in statuses)
    if with_qr:
        headers.append("QR_EXPIRES")
    with_proxy = any(s.proxy is not None for s in statuses)
    if with_proxy:
        headers.append("PROXY")  # as the daemon shows it: the password masked
    rows = []
    for s in statuses:
        row = [
            s.session,
            state_cell(s),
            iso(s.since),
            str(s.attempt),
            cell(s.reason),
            cell(s.last_error),
        ]
        if with_qr:
            row.append(iso(s.qr.expires_at) if s.qr is not None else NONE)
        if with_proxy:
            row.append(cell(s.proxy))
        rows.append(row)
    return table(headers, rows)


def history_table(transitions: Sequence[Transition]) -> str:
    rows = [
        [
            iso(t.at),
            t.from_state.value,
            t.to_state.value,
            cell(t.reason),
            str(t.attempt),
            cell(t.message),
        ]
        for t in transitions
    ]
    return table(["AT", "FROM", "TO", "REASON", "ATTEMPT", "MESSAGE"], rows)


def number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def metrics_table(samples: Sequence[Sample]) -> str:
    rows = [
        [s.name, ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) or NONE, number(s.value)]
        for s in samples
    ]
    return table(["NAME", "LABELS", "VALUE"], rows)


def hosts_table(listed: HostList) -> str:
    rows = [
        [
            cell(h.host), number(h.heartbeat_age), str(h.capacity), str(h.sessions), str(h.running), cell(h.version),
            "yes" if h.draining else "no",
        ]
        for h in listed.hosts
    ]
    text = table(["HOST", "HEARTBEAT_AGE", "CAPACITY", "SESSIONS", "RUNNING", "VERSION", "DRAINING"], rows)
    return text if listed.cluster else text + "\n(one host on its own: no redis_url)"


# ---------------------------------------------------------------------------- events


def _message(text: str | None) -> str:
    return f": {cell(text)}" if text else ""


def event_line(event: WatchEvent, now: datetime | None = None) -> str:
    """One line per watch event: ``<time> <session> <kind> <details>``."""
    now = now or utcnow()
    if isinstance(event, Snapshot):
        s = event.status
        line = f"{iso(now)} {s.session} snapshot {state_cell(s)} since={iso(s.since)} attempt={s.attempt}"
        if s.reason:
            line += f" reason={s.reason}"
        if s.qr is not None:
            line += f" qr=#{s.qr.seq} expires={iso(s.qr.expires_at)}"
        if s.pairing_code is not None:
            line += f" pairing_code=#{s.pairing_code.seq} expires={iso(s.pairing_code.expires_at)}"
        return line + _message(s.message)
    if isinstance(event, StateChanged):
        t = event.transition
        return (
            f"{iso(t.at)} {event.status.session} state {t.from_state.value} -> {t.to_state.value}"
            f" reason={t.reason} attempt={t.attempt}{_message(t.message)}"
        )
    if isinstance(event, QrUpdated):
        q = event.qr
        return f"{iso(q.generated_at)} {q.session} qr #{q.seq} expires={iso(q.expires_at)}"
    if isinstance(event, PairingCodeUpdated):
        # Like a QR, the code is a credential: a log of events names it, never shows it.
        c = event.code
        return f"{iso(c.generated_at)} {c.session} pairing_code #{c.seq} expires={iso(c.expires_at)}"
    if isinstance(event, SessionError):
        return f"{iso(now)} {event.session} error {event.code}{_message(event.message)}"
    if isinstance(event, MessageReceived):
        # Like a log line, a watch line names a message, never shows its text (wactl messages does).
        m = event.message
        direction = "out" if m.from_me else "in"
        return f"{iso(m.at)} {event.session} message #{m.seq} {direction} {m.chat} {m.type} ack={m.ack} chars={len(m.text)}"
    if isinstance(event, MessageAck):
        return f"{iso(now)} {event.session} ack #{event.seq} {ACKS.get(event.ack, str(event.ack))}"
    raise TypeError(f"unknown watch event {event!r}")


ACKS = {-1: "error", 0: "pending", 1: "sent", 2: "delivered", 3: "read", 4: "played"}


def message_line(m: Message) -> str:
    """One inbox message for ``wactl messages``: cursor, time, direction, chat, ack, text."""
    arrow = "->" if m.from_me else "<-"
    who = m.chat if m.from_me or m.sender == m.chat else f"{m.chat} ({m.sender})"
    kind = "" if m.type == "chat" else f"[{m.type}] "
    return f"#{m.seq} {iso(m.at)} {arrow} {who} {ACKS.get(m.ack, str(m.ack))}: {kind}{cell(m.text)}"


def end_line(end: End, session: str | None, now: datetime | None = None) -> str:
    line = f"{iso(now or utcnow())} {session or '*'} end {end.reason}"
    if end.status is not None:
        line += f" state={end.status.state.value}"
        if end.status.reason:
            line += f" reason={end.status.reason}"
    return line


def state_line(status: SessionStatus) -> str:
    """How connect reports a state: ``alice: waiting_qr (qr_shown)``."""
    line = f"{status.session}: {state_cell(status)}"
    if status.reason:
        line += f" ({status.reason})"
    return line + _message(status.message)


# ---------------------------------------------------------------------------- QR


def qr_caption(qr: QrCode, now: datetime | None = None) -> str:
    left = max(0, round((qr.expires_at - (now or utcnow())).total_seconds()))
    return (
        f"QR #{qr.seq} for {qr.session}, expires {iso(qr.expires_at)} (in {left} s). "
        "Scan it in WhatsApp: Settings > Linked devices > Link a device."
    )


def code_text(code: PairingCode, now: datetime | None = None) -> str:
    """The pairing code and where to type it."""
    left = max(0, round((code.expires_at - (now or utcnow())).total_seconds()))
    return (
        f"    {code.code}\n"
        f"Pairing code #{code.seq} for {code.session}, expires {iso(code.expires_at)} (in {left} s).\n"
        "Type it in WhatsApp on the phone: Settings > Linked devices > Link a device >\n"
        "Link with phone number instead."
    )


def qr_text(data: str, *, unicode: bool = True) -> str:
    """The QR as terminal text: half-block characters (two modules per line), or ANSI
    reverse-video spaces when the output cannot encode those characters."""
    buf = StringIO()
    segno.make(data, micro=False).terminal(out=buf, compact=unicode)
    return buf.getvalue()


def save_png(data: str, path: str | os.PathLike[str], scale: int = 8) -> None:
    """Write the QR as a PNG at ``path``, replacing it atomically.

    A viewer refreshing the file on each QR renewal never sees half a PNG, and
    the file keeps mkstemp's 0600 mode: the QR is a login credential.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        segno.make(data, micro=False).save(tmp, kind="png", scale=scale)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
