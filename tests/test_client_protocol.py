"""The client half of the wire protocol, sans I/O: bytes out, messages in, no trio.

Both clients (blocking and async) drive one ``ClientProtocol``; what it decides is
tested here once, from frames built by hand, as h11 tests its connection object.
"""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
import pytest

from wa_daemon.errors import NotFound, PermissionDenied
from wa_daemon.protocol import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    Cancel,
    ClientMessage,
    ClientProtocol,
    Error,
    Event,
    FrameTooLarge,
    Hello,
    LocalProtocolError,
    NoParams,
    Pong,
    RemoteProtocolError,
    Reply,
    Request,
    SessionParams,
    SessionStatus,
    Snapshot,
    State,
    WatchParams,
    Welcome,
    encode_frame,
    to_raw,
)

NOW = datetime(2026, 12, 6, tzinfo=timezone.utc)


def sent(data: bytes | bytearray) -> object:
    """What the daemon would read from ``data``: exactly one client message."""
    decoder = msgspec.msgpack.Decoder(ClientMessage)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    return decoder.decode(bytes(data[4:]))


def test_hello_then_welcome_adopts_a_larger_frame_limit_only() -> None:
    proto = ClientProtocol("unit")
    assert sent(proto.hello()) == Hello(PROTOCOL_VERSION, "unit")
    proto.check_welcome(Welcome(PROTOCOL_VERSION, "d", DEFAULT_MAX_FRAME * 4))
    assert proto.decoder.max_frame == DEFAULT_MAX_FRAME * 4
    small = ClientProtocol("unit")
    small.check_welcome(Welcome(PROTOCOL_VERSION, "d", 1024))
    assert small.decoder.max_frame == DEFAULT_MAX_FRAME  # never below its own


def test_a_wrong_welcome_is_refused() -> None:
    proto = ClientProtocol()
    with pytest.raises(RemoteProtocolError, match="speaks protocol 99"):
        proto.check_welcome(Welcome(99, "d", DEFAULT_MAX_FRAME))
    with pytest.raises(RemoteProtocolError, match="expected welcome, got Reply"):
        proto.check_welcome(Reply(1, to_raw(None)))
    with pytest.raises(NotFound):  # the daemon's refusal of hello, typed
        proto.check_welcome(Error(None, "not_found", "no"))


def test_requests_get_increasing_ids_and_unknown_methods_never_leave() -> None:
    proto = ClientProtocol()
    first, data1 = proto.request("status", SessionParams("a"))
    second, data2 = proto.request("ping", NoParams())
    assert (first, second) == (1, 2)
    assert sent(data1) == Request(1, "status", to_raw(SessionParams("a")))
    assert sent(data2) == Request(2, "ping", to_raw(NoParams()))
    with pytest.raises(LocalProtocolError, match="unknown method 'frobnicate'"):
        proto.request("frobnicate", NoParams())
    third, _ = proto.request("ping", NoParams())
    assert third == 3  # the refused call used no id
    assert sent(proto.cancel(2)) == Cancel(2)


def test_results_are_typed_and_errors_raise_their_own_class() -> None:
    pong = ClientProtocol.result("ping", Reply(1, to_raw(Pong(NOW))))
    assert pong == Pong(NOW)
    with pytest.raises(PermissionDenied) as info:
        ClientProtocol.result("status", Error(2, "permission_denied", "not yours", {"session": "a"}))
    assert info.value.details == {"session": "a"}
    with pytest.raises(RemoteProtocolError, match="malformed status result"):
        ClientProtocol.result("status", Reply(3, to_raw({"session": 5})))


def test_events_are_typed_and_a_malformed_one_is_the_daemon_s_fault() -> None:
    snap = Snapshot(SessionStatus("a", State.WAITING_QR, NOW, 0))
    got = ClientProtocol.event(Event(1, to_raw(snap)))
    assert got == snap
    with pytest.raises(RemoteProtocolError, match="malformed watch event"):
        ClientProtocol.event(Event(1, to_raw({"type": "nonsense"})))


def test_incoming_frames_split_anywhere_and_capped() -> None:
    proto = ClientProtocol()
    data = bytes(encode_frame(Reply(7, to_raw(Pong(NOW))))) + bytes(encode_frame(Error(None, "internal", "x")))
    got = []
    for i in range(len(data)):  # one byte at a time: a frame is whole or not yet there
        proto.decoder.receive_data(data[i : i + 1])
        while (msg := proto.decoder.next_message()) is not None:
            got.append(msg)
    assert [type(m) for m in got] == [Reply, Error] and got[0].id == 7
    with pytest.raises(FrameTooLarge):
        proto.decoder.receive_data((DEFAULT_MAX_FRAME + 1).to_bytes(4, "big"))


def test_a_watch_that_does_not_ask_for_messages_sends_no_such_field() -> None:
    # A daemon from before `messages` refuses unknown fields: leave it out when false.
    proto = ClientProtocol()
    _, plain = proto.request("watch", WatchParams("a"))
    _, asked = proto.request("watch", WatchParams("a", messages=True))
    assert msgspec.msgpack.decode(sent(plain).params) == {"session": "a"}  # type: ignore[attr-defined]
    assert msgspec.msgpack.decode(sent(asked).params) == {"session": "a", "messages": True}  # type: ignore[attr-defined]
