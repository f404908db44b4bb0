"""docs/protocol.md against a real daemon: the answers it documents are the ones the daemon gives.

The statements come from the doc itself (the table of §10.1, the limits table of §7.4),
so editing the doc or the daemon alone makes these tests fail. Each frame is sent raw,
as msgpack built from the doc's JSON, over the daemon's Unix socket.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from wa_daemon import AsyncClient, State
from wa_daemon.protocol import (
    SESSION_ID_RULE,
    ClientProtocol,
    End,
    Error,
    HistoryParams,
    Reply,
    SessionParams,
    Welcome,
    decode_as,
    encode,
    params_error,
)

from .helpers import running_daemon

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
MAX_FRAME = 1024  # the doc's table says its daemon runs with this: `metrics` then does not fit
PING_ID = 4242  # the request after the row's frame

# Rows the daemon does not answer as documented until it builds its params errors with
# protocol.params_error (the report of the protocol-doc change tells the lead where).
PENDING_DAEMON_CHANGE: dict[str, str] = {}


@dataclass(frozen=True)
class Row:
    case: str
    body: Any  # decoded from the doc's JSON
    first: bool  # sent as the first message, without hello
    answer: str  # "reply", an error code, or "—" for none
    id: int | None
    details: frozenset[str]
    closes: bool


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def doc_rows() -> list[Row]:
    text = DOC.read_text()
    match = re.search(r"<!-- BEGIN ANSWERS[^\n]*\n(.*?)<!-- END ANSWERS -->", text, re.S)
    assert match, "docs/protocol.md lost its table of answers"
    lines = match.group(1).strip().splitlines()
    assert _cells(lines[0]) == ["case", "sent", "answer", "`id`", "`details`", "connection"]
    rows = []
    for line in lines[2:]:
        case, sent, answer, rid, details, connection = _cells(line)
        assert connection in ("continues", "closed"), line
        rows.append(
            Row(
                case=case,
                body=json.loads(_ticked(sent)[0]),
                first="as the first message" in sent,
                answer=(_ticked(answer) or [answer])[0],
                id=None if rid in ("nil", "") else int(rid),
                details=frozenset(_ticked(details)),
                closes=connection == "closed",
            )
        )
    return rows


def _params() -> list[Any]:
    return [
        pytest.param(
            row,
            id=row.case,
            marks=[pytest.mark.xfail(strict=True, reason=PENDING_DAEMON_CHANGE[row.case])]
            if row.case in PENDING_DAEMON_CHANGE
            else [],
        )
        for row in doc_rows()
    ]


def _frame(obj: Any) -> bytes:
    body = encode(obj)
    return struct.pack(">I", len(body)) + body


class _Peer:
    """A raw connection: frames out, decoded server messages in."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.proto = ClientProtocol("doc-check")

    async def next(self) -> Any | None:
        """The next message, or None once the daemon closed the connection."""
        while (msg := self.proto.decoder.next_message()) is None:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            self.proto.decoder.receive_data(data)
        return msg


def _shape(msg: Any) -> tuple[str, int | None, frozenset[str]]:
    """What the doc's table states about a message: its kind or code, id and details keys."""
    if isinstance(msg, Error):
        return msg.code, msg.id, frozenset(msg.details)
    if isinstance(msg, Reply):
        return "reply", msg.id, frozenset()
    return type(msg).__name__, getattr(msg, "id", None), frozenset()


def test_the_table_of_answers_is_there_and_names_the_pending_rows() -> None:
    cases = [row.case for row in doc_rows()]
    assert len(cases) == len(set(cases)) >= 20
    assert set(PENDING_DAEMON_CHANGE) <= set(cases)


@pytest.mark.parametrize("row", _params())
async def test_the_daemon_answers_as_the_doc_says(sock_dir: Path, row: Row) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir, max_frame=MAX_FRAME) as d:
            peer = _Peer(await trio.open_unix_socket(str(d.socket_path)))
            async with peer.stream:
                if not row.first:
                    await peer.stream.send_all(peer.proto.hello())
                    assert isinstance(await peer.next(), Welcome)
                await peer.stream.send_all(_frame(row.body))
                got: list[tuple[str, int | None, frozenset[str]]] = []
                if row.answer != "—":
                    with trio.move_on_after(5):  # an answer the daemon does not send fails the test below
                        got.append(_shape(await peer.next()))
                if row.closes:
                    assert await peer.next() is None, "the doc says the connection is closed"
                else:
                    # The connection goes on, and nothing else answers the row's frame
                    # before the answer to the next one: a hello if none was accepted yet.
                    answered_by: type[Welcome | Reply] = Welcome if row.first else Reply
                    follow = (
                        peer.proto.hello()
                        if row.first
                        else _frame({"type": "request", "id": PING_ID, "method": "ping"})
                    )
                    await peer.stream.send_all(follow)
                    while not isinstance(msg := await peer.next(), answered_by):
                        assert msg is not None, "the doc says the connection continues"
                        got.append(_shape(msg))
                    assert getattr(msg, "id", PING_ID) == PING_ID, msg
            expected = [] if row.answer == "—" else [(row.answer, row.id, row.details)]
            assert got == expected


def _limit_row(name: str) -> tuple[str, set[str]]:
    """The code and details keys §7.4's limits table gives for the limit called ``name``."""
    for line in DOC.read_text().splitlines():
        if line.startswith(f"| {name} |"):
            gets = _cells(line)[2]
            return _ticked(gets)[0], set(re.findall(r"`details\.(\w+)`", gets))
    raise AssertionError(f"§7.4 has no row for {name!r}")


async def test_watch_limit_refuses_one_of_several_and_frees_a_place_at_end(sock_dir: Path) -> None:
    code, details = _limit_row("watch streams")
    with trio.fail_after(20):
        async with running_daemon(sock_dir, max_watches_per_connection=2) as d:
            peer = _Peer(await trio.open_unix_socket(str(d.socket_path)))
            async with peer.stream:
                await peer.stream.send_all(peer.proto.hello())
                assert isinstance(await peer.next(), Welcome)
                watch = {"type": "request", "method": "watch", "params": {"timeout": 0.5}}
                await peer.stream.send_all(b"".join(_frame({**watch, "id": i}) for i in (1, 2, 3)))
                errors: list[Error] = []
                ended: set[int] = set()
                while len(errors) + len(ended) < 3:
                    msg = await peer.next()
                    if isinstance(msg, Error):
                        errors.append(msg)
                    else:
                        assert isinstance(msg, End), msg  # no session: no snapshot, only the end
                        ended.add(msg.id)
                # Which of the three is refused is decided as each stream starts (§7.1).
                assert [(e.code, set(e.details)) for e in errors] == [(code, details)]
                assert errors[0].details["limit"] == 2 and errors[0].id not in ended
                # Both streams have ended: a new one gets a place.
                await peer.stream.send_all(_frame({**watch, "id": 4}))
                msg = await peer.next()
                assert isinstance(msg, End) and msg.id == 4 and msg.reason == "timeout"


async def test_refresh_qr_shows_the_next_qr_after_the_reply_without_a_state_change(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir, qr_timeout=3600) as d:
            async with AsyncClient(d.socket_path) as wa:
                await wa.connect("q")
                while (status := await wa.status("q")).state != State.WAITING_QR:
                    await trio.sleep(0.02)
                assert status.qr is not None
                seq = status.qr.seq
                reply = await wa.simulate("q", "refresh_qr")
                assert reply.state == State.WAITING_QR and reply.qr == status.qr  # the effect comes after
                while (status := await wa.status("q")).qr is None or status.qr.seq == seq:
                    await trio.sleep(0.02)
                assert status.state == State.WAITING_QR and status.qr.seq == seq + 1


# ------------------------------------------------------------------ params_error, no I/O


def _validation_error(raw: Any, type_: Any) -> msgspec.ValidationError:
    with pytest.raises(msgspec.ValidationError) as info:
        decode_as(encode(raw), type_)
    return info.value


@pytest.mark.parametrize("session", ["-x", "a" * 65, "a\n", "", 5, None, ["a"]])
def test_params_error_names_the_rule_for_a_bad_session(session: Any) -> None:
    err = params_error("status", _validation_error({"session": session}, SessionParams))
    assert err.code == "invalid_argument"
    assert err.details == {"method": "status", "rule": SESSION_ID_RULE}


@pytest.mark.parametrize("params", [{}, [1], "x", None, {"session": "ok", "extra": 1}, {"session": "ok", "limit": 5.0}])
def test_params_error_names_only_the_method_otherwise(params: Any) -> None:
    err = params_error("history", _validation_error(params, HistoryParams))
    assert err.details == {"method": "history"}
