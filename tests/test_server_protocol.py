"""The server half of the wire protocol without I/O (rpc/protocol.py), its handler
table (rpc/handlers/) and its fault mapping (rpc/faults.py): no trio, no socket."""

from __future__ import annotations

import dataclasses
import struct
import typing
from collections import Counter
from typing import Any

import msgspec
import pytest
import structlog

from wa_daemon.daemon.rpc import faults
from wa_daemon.daemon.rpc.access import ADMIN, UNKNOWN, Caller
from wa_daemon.daemon.rpc.handlers import HANDLERS, Operation, Read, Stream
from wa_daemon.daemon.rpc.limits import Limits
from wa_daemon.daemon.rpc.protocol import (
    CLOSED,
    NEED_DATA,
    Answer,
    CancelTask,
    HelloTimeout,
    Malformed,
    Refused,
    ServeInline,
    ServerProtocol,
    StartTask,
    fatal_error,
)
from wa_daemon.errors import Busy, InvalidArgument, LimitExceeded, NotFound
from wa_daemon.protocol import (
    METHODS,
    PROTOCOL_VERSION,
    SESSION_ID_RULE,
    Cancel,
    Error,
    FrameTooLarge,
    Hello,
    OutReply,
    RemoteProtocolError,
    Request,
    Welcome,
    encode,
    encode_frame,
    to_raw,
)

LIMITS = Limits(
    max_frame=4096,
    send_timeout=1.0,
    hello_timeout=10.0,
    max_inflight_per_connection=2,
    max_watches_per_connection=1,
    idle_connection_timeout=60.0,
    max_connections=8,
)
READS = {"status": "the status entry", "ping": "the ping entry"}
T0 = 100.0


def proto(limits: Limits = LIMITS, now: float = T0) -> ServerProtocol[str]:
    return ServerProtocol(limits, READS, now, "wa-daemon/test")


def greeted(limits: Limits = LIMITS) -> ServerProtocol[str]:
    p = proto(limits)
    p.receive_data(encode_frame(Hello(PROTOCOL_VERSION, "t")), T0)
    assert isinstance(p.next_event(), Answer)
    return p


def request(rid: int, method: str, params: Any = None) -> bytearray:
    return encode_frame(Request(rid, method, to_raw(params if params is not None else {})))


def feed(p: ServerProtocol[str], *frames: bytes, now: float = T0) -> list[Any]:
    """Every event until the protocol needs more data."""
    p.receive_data(b"".join(frames), now)
    events = []
    while (event := p.next_event()) is not NEED_DATA:
        events.append(event)
        if event is CLOSED:
            break
    return events


# ---------------------------------------------------------------------------- hello


def test_nothing_buffered_needs_data() -> None:
    p = proto()
    assert p.next_event() is NEED_DATA
    assert not p.greeted and p.hello_deadline == T0 + 10.0
    assert (repr(NEED_DATA), repr(CLOSED)) == ("NEED_DATA", "CLOSED")


def test_hello_is_welcomed_with_the_connections_frame_limit() -> None:
    p = proto()
    [event] = feed(p, encode_frame(Hello(PROTOCOL_VERSION, "t")))
    assert event == Answer(Welcome(PROTOCOL_VERSION, "wa-daemon/test", 4096))
    assert p.greeted and p.hello_deadline is None


def test_frame_limit_and_hello_timeout_are_the_connections_own() -> None:
    """A reload after the connection was accepted changes neither (limits.py)."""
    p = proto()
    p.limits = _replaced(max_frame=8192, hello_timeout=1.0)
    p.check_deadline(T0 + 9.9)  # still the 10 s it was accepted with
    [event] = feed(p, encode_frame(Hello(PROTOCOL_VERSION, "t")))
    assert isinstance(event, Answer) and isinstance(event.message, Welcome) and event.message.max_frame == 4096
    with pytest.raises(FrameTooLarge):
        p.receive_data(struct.pack(">I", 4097), T0)


def test_a_second_hello_is_refused_and_the_connection_goes_on() -> None:
    p = greeted()
    events = feed(p, encode_frame(Hello(PROTOCOL_VERSION, "t")), request(1, "ping"))
    assert events[0] == Answer(Error(None, "protocol_error", "hello was already exchanged"))
    assert isinstance(events[1], ServeInline)


def test_another_protocol_version_is_refused_and_closes() -> None:
    p = proto()
    events = feed(p, encode_frame(Hello(99, "t")), request(1, "ping"))
    [answer, closed] = events
    assert isinstance(answer, Answer) and answer.close
    assert isinstance(answer.message, Error) and answer.message.id is None
    assert answer.message.code == "protocol_error" and answer.message.details == {"supported": [PROTOCOL_VERSION]}
    assert closed is CLOSED and not p.greeted
    assert p.next_event() is CLOSED  # nothing after it is read


@pytest.mark.parametrize("first", [Request(1, "ping"), Cancel(1)])
def test_anything_before_hello_is_fatal(first: Any) -> None:
    p = proto()
    p.receive_data(encode_frame(first), T0)
    with pytest.raises(RemoteProtocolError, match="the first message must be hello") as info:
        p.next_event()
    assert info.value.fatal and not isinstance(info.value, HelloTimeout)
    assert fatal_error(info.value) == Error(None, "protocol_error", "the first message must be hello")


def test_hello_timeout_is_a_typed_condition() -> None:
    p = proto()
    p.check_deadline(T0 + 9.999)
    with pytest.raises(HelloTimeout, match="no hello within 10 s") as info:
        p.check_deadline(T0 + 10.0)
    assert isinstance(info.value, RemoteProtocolError) and info.value.fatal
    p = greeted()
    p.check_deadline(T0 + 1e6)  # greeted: no deadline any more


# ---------------------------------------------------------------------------- requests


def test_a_read_is_served_inline_with_its_entry_and_never_in_flight() -> None:
    p = greeted()
    events = feed(p, request(1, "status", {"session": "a"}), request(1, "status", {"session": "a"}))
    assert [type(e) for e in events] == [ServeInline, ServeInline]  # the same id twice: reads are never in flight
    assert events[0].read == "the status entry" and events[0].request.id == 1
    assert p.inflight == 0


def test_an_operation_starts_a_task_in_flight_until_done() -> None:
    p = greeted()
    [start] = feed(p, request(5, "connect", {"session": "a"}))
    assert isinstance(start, StartTask) and start.request.method == "connect"
    assert p.inflight == 1
    [dup] = feed(p, request(5, "disconnect", {"session": "a"}))
    assert dup == Answer(Error(5, "protocol_error", "request id 5 is already in flight"))
    p.task_done(5, T0 + 1)
    assert p.inflight == 0 and p.last_active == T0 + 1
    [again] = feed(p, request(5, "disconnect", {"session": "a"}))
    assert isinstance(again, StartTask)


def test_an_unknown_method_goes_to_a_task_which_answers_it() -> None:
    [event] = feed(greeted(), request(1, "frobnicate"))
    assert isinstance(event, StartTask)


def test_the_inflight_cap_refuses_with_busy_and_follows_a_reload() -> None:
    p = greeted()
    events = feed(p, request(1, "connect"), request(2, "watch"), request(3, "logout"))
    assert [type(e) for e in events] == [StartTask, StartTask, Refused]
    refused = events[2]
    assert (refused.request_id, refused.method, refused.limit, refused.maximum) == (3, "logout", "inflight", 2)
    assert isinstance(refused.error, Busy) and refused.error.details == {"limit": 2}
    assert faults.error_frame(refused.error, 3) == Error(
        3, "busy", "more than 2 requests in flight on this connection", {"limit": 2}
    )
    assert p.inflight == 2  # the refused one is not in flight
    p.limits = _replaced(max_inflight_per_connection=3)
    assert isinstance(feed(p, request(3, "logout"))[0], StartTask)


def test_draining_refuses_every_request() -> None:
    p = greeted()
    p.draining = True
    events = feed(p, request(1, "ping"), request(2, "connect"))
    assert events == [
        Answer(Error(1, "unavailable", "the daemon is shutting down")),
        Answer(Error(2, "unavailable", "the daemon is shutting down")),
    ]
    assert p.inflight == 0


def test_cancel_reaches_only_a_request_in_flight() -> None:
    p = greeted()
    feed(p, request(7, "connect"))
    events = feed(p, encode_frame(Cancel(8)), encode_frame(Cancel(7)), request(9, "ping"))
    assert events[0] == CancelTask(7)  # the unknown 8 was passed over
    assert isinstance(events[1], ServeInline)
    p.task_done(7, T0)
    assert feed(p, encode_frame(Cancel(7))) == []  # already done: nothing


def test_several_messages_in_one_chunk_come_out_in_order_and_split_frames_wait() -> None:
    p = greeted()
    data = request(1, "ping") + request(2, "status", {"session": "a"}) + request(3, "connect")
    events = feed(p, data[:-3])
    assert [e.request.id for e in events] == [1, 2]
    [last] = feed(p, data[-3:])
    assert isinstance(last, StartTask) and last.request.id == 3


# ---------------------------------------------------------------------------- broken input


def test_a_message_that_does_not_decode_is_answered_and_the_connection_goes_on() -> None:
    p = greeted()
    body = encode({"type": "request", "id": 4, "method": 5})
    events = feed(p, struct.pack(">I", len(body)) + body, request(5, "ping"))
    assert isinstance(events[0], Malformed)
    assert events[0].error.id == 4 and events[0].error.code == "protocol_error"
    assert isinstance(events[1], ServeInline)
    body = b"\xc1"  # not msgpack: no id to answer to
    [bad] = feed(p, struct.pack(">I", 1) + body)
    assert isinstance(bad, Malformed) and bad.error.id is None


def test_an_oversized_frame_is_fatal_before_its_body() -> None:
    p = greeted()
    with pytest.raises(FrameTooLarge) as info:
        p.receive_data(struct.pack(">I", 4097), T0)
    assert info.value.fatal
    # Behind a complete frame in the same chunk: that one is still served first.
    p = greeted()
    p.receive_data(request(1, "ping") + struct.pack(">I", 4097), T0)
    assert isinstance(p.next_event(), ServeInline)
    with pytest.raises(FrameTooLarge):
        p.next_event()


def test_end_of_stream_between_frames_closes_and_inside_one_is_fatal() -> None:
    p = greeted()
    events = feed(p, request(1, "ping"))
    p.receive_data(b"", T0 + 1)
    assert p.next_event() is CLOSED and p.next_event() is CLOSED
    assert p.last_active == T0 + 1
    assert len(events) == 1
    p = greeted()
    p.receive_data(request(1, "ping")[:-1], T0)
    assert p.next_event() is NEED_DATA
    p.receive_data(b"", T0)
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        p.next_event()


# ---------------------------------------------------------------------------- watch streams


def test_the_watch_cap_is_decided_when_each_stream_starts_and_follows_a_reload() -> None:
    p = greeted()
    assert p.open_watch(1, "watch") is None and p.watches == 1
    refused = p.open_watch(2, "watch")
    assert refused is not None and (refused.limit, refused.maximum, refused.request_id) == ("watch_streams", 1, 2)
    assert isinstance(refused.error, LimitExceeded) and refused.error.details == {"limit": 1}
    assert p.watches == 1
    p.close_watch()
    assert p.open_watch(3, "watch") is None
    p.limits = _replaced(max_watches_per_connection=2)
    assert p.open_watch(4, "watch") is None and p.watches == 2


# ---------------------------------------------------------------------------- idleness


def test_idle_time_counts_from_the_last_bytes_or_task_end_and_not_before_hello() -> None:
    p = proto()
    assert p.idle_for(T0 + 500) == 0.0 and p.idle_expired(T0 + 500) is None  # hello_timeout covers it
    p.receive_data(encode_frame(Hello(PROTOCOL_VERSION, "t")), T0 + 1)
    p.next_event()
    assert p.idle_for(T0 + 11) == 10.0
    assert p.idle_expired(T0 + 60) is None and p.idle_expired(T0 + 61) == 60.0
    feed(p, request(1, "connect"), now=T0 + 20)
    assert p.idle_for(T0 + 500) == 0.0  # a task in flight
    p.task_done(1, T0 + 30)
    assert p.idle_for(T0 + 40) == 10.0
    p.limits = _replaced(idle_connection_timeout=None)
    assert p.idle_expired(T0 + 1e6) is None


# ---------------------------------------------------------------------------- handlers


def test_every_method_has_exactly_one_handler_of_its_kind() -> None:
    counts = Counter(h.method for h in HANDLERS)
    assert counts == Counter(list(METHODS)), "every METHODS entry needs exactly one handler"
    for handler in HANDLERS:
        method = METHODS[handler.method]
        assert isinstance(handler, Stream) == method.stream, handler.method
        hints = typing.get_type_hints(handler.fn)
        assert hints["params"] is method.params, f"{handler.method}: params typed as {hints['params']}"


def test_the_reads_served_inline_are_the_methods_that_never_wait() -> None:
    """The fast path (docs/performance.md): reads run in the read loop, without a task."""
    reads = {h.method for h in HANDLERS if isinstance(h, Read)}
    assert reads == {"status", "list", "qr", "pairing_code", "history", "messages", "metrics", "ping", "version"}
    assert {h.method for h in HANDLERS if isinstance(h, Operation)} == {
        "connect",
        "disconnect",
        "logout",
        "delete",
        "simulate",
        "health",
        "send_text",
        "hosts",  # asks Redis
        "drain",  # asks Redis
    }


# ---------------------------------------------------------------------------- faults


def test_a_typed_error_is_answered_with_its_own_code() -> None:
    exc = NotFound("no session 'x'", {"session": "x"})
    with structlog.testing.capture_logs() as logs:
        frame, outcome = faults.fault(exc, 3, "status", structlog.get_logger("t"))
    assert frame == Error(3, "not_found", "no session 'x'", {"session": "x"}) and outcome == "not_found"
    assert logs == []


def test_a_bug_is_answered_internal_and_logged_with_its_traceback() -> None:
    with structlog.testing.capture_logs() as logs:
        try:
            raise KeyError("boom")
        except KeyError as exc:
            frame, outcome = faults.fault(exc, 3, "status", structlog.get_logger("t"))
    assert frame == Error(3, "internal", faults.INTERNAL_MESSAGE, {"request": 3}) and outcome == "internal"
    assert logs[0]["event"] == "rpc_internal_error" and logs[0]["exc_info"] is True
    assert "boom" not in frame.message


def test_params_errors_and_unknown_methods_are_invalid_argument() -> None:
    try:
        msgspec.msgpack.decode(encode({"session": 5}), type=METHODS["status"].params)
    except faults.PARAMS_ERRORS as exc:
        err = faults.invalid_params("status", exc)
    # A session param of the wrong type breaks the session id rule: the details say which.
    assert isinstance(err, InvalidArgument) and err.details == {"method": "status", "rule": SESSION_ID_RULE}
    assert "invalid params for status" in err.message
    try:
        msgspec.msgpack.decode(encode({"session": "a", "limit": "x"}), type=METHODS["history"].params)
    except faults.PARAMS_ERRORS as exc:
        other = faults.invalid_params("history", exc)
    assert other.details == {"method": "history"}
    unknown = faults.unknown_method("frobnicate")
    assert unknown.details["known"] == sorted(METHODS) and "frobnicate" in unknown.message
    assert faults.cancelled(4) == Error(4, "unavailable", "cancelled by the client")


def test_a_reply_over_the_frame_limit_becomes_an_internal_error() -> None:
    small = faults.encode_answer(OutReply(1, "x"), 4096)
    assert small == encode_frame(OutReply(1, "x"))
    with pytest.raises(faults.ReplyTooLarge) as info:
        faults.encode_answer(OutReply(2, "x" * 5000), 4096)
    with structlog.testing.capture_logs() as logs:
        error, outcome = faults.fault(info.value, 2, "list", structlog.get_logger("t"))
    # The rpc line says what the client got; the daemon's own fault, so `internal`.
    assert outcome == "internal" and error.id == 2 and error.code == "internal" and "too large" in error.message
    assert logs == [
        {"event": "reply_too_large", "id": 2, "method": "list", "error": info.value.message, "log_level": "error"}
    ]


# ---------------------------------------------------------------------------- callers


def test_who_a_caller_may_use() -> None:
    assert ADMIN.may_use(1000) and ADMIN.may_use(None) and ADMIN.known
    me = Caller.user(1000)
    assert me.may_use(1000) and not me.may_use(1001) and not me.may_use(None) and me.known
    # Unknown credentials: nobody in particular, not even the owner of ownerless sessions.
    assert not UNKNOWN.may_use(None) and not UNKNOWN.may_use(1000) and not UNKNOWN.known


def _replaced(**changes: Any) -> Limits:
    return dataclasses.replace(LIMITS, **changes)


def test_an_error_over_the_frame_limit_is_sent_shortened() -> None:
    # Errors quote what the client sent: a client can make one as large as it likes.
    huge = faults.unknown_method("x" * 5000)
    frame = faults.encode_answer(Error(9, huge.code, huge.message, huge.details), 1024)
    decoded = msgspec.msgpack.decode(bytes(frame[4:]), type=Error)
    assert decoded.id == 9 and decoded.code == "invalid_argument" and decoded.details == {}
    assert decoded.message.startswith("unknown method 'xxx") and "shortened" in decoded.message
    assert len(frame) < 1024
