"""Hostile and broken input on the live socket: each gets its error, everyone else is served."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wa_daemon import AsyncClient, State
from wa_daemon.protocol import (
    DEFAULT_MAX_FRAME,
    ClientMessage,
    ClientProtocol,
    Error,
    Event,
    FrameDecoder,
    RemoteProtocolError,
    SessionParams,
    WatchParams,
    encode,
)

from .helpers import running_daemon


async def _read_all(stream: trio.SocketStream, proto: ClientProtocol, out: list[object] | None = None) -> list[object]:
    """Every message until the daemon closes the connection (appended to ``out`` as they come)."""
    out = [] if out is None else out
    while True:
        msg = proto.decoder.next_message()
        if msg is not None:
            out.append(msg)
            continue
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return out
        if not data:
            return out
        proto.decoder.receive_data(data)


async def _exchange(path: Path, payload: bytes, hello: bool = True) -> list[object]:
    s = await trio.open_unix_socket(str(path))
    proto = ClientProtocol("hostile")
    if hello:
        await s.send_all(proto.hello())
    await s.send_all(payload)
    got: list[object] = []
    with trio.move_on_after(1):
        # Fatal errors close the connection; otherwise stop waiting after a second.
        await _read_all(s, proto, got)
    await s.aclose()
    return got


def _frame(obj: object) -> bytes:
    body = encode(obj)
    return struct.pack(">I", len(body)) + body


async def _still_serving(path: Path) -> None:
    async with AsyncClient(path) as wa:
        assert await wa.ping()
        assert isinstance(await wa.list(), list)


CASES = {
    "garbage": (b"\xde\xad\xbe\xef" * 8, True),
    "2GiB_prefix": (struct.pack(">I", 2**31) + b"x" * 16, True),
    "just_over_limit": (struct.pack(">I", DEFAULT_MAX_FRAME + 1), True),
    "not_msgpack": (struct.pack(">I", 3) + b"\xc1\xc1\xc1", False),
    "unknown_type": (_frame({"type": "launch_missiles", "id": 1}), False),
    "request_id_string": (_frame({"type": "request", "id": "x", "method": "ping"}), False),
    "negative_id": (_frame({"type": "request", "id": -1, "method": "ping"}), False),
    "array_not_map": (_frame([1, 2, 3]), False),
    "deep_nesting": (_frame({"type": "request", "id": 3, "method": "ping", "params": [[[[[[[[[[]]]]]]]]]]}), False),
}


@pytest.mark.parametrize("name", sorted(CASES))
async def test_hostile_frames_get_protocol_error(sock_dir: Path, name: str) -> None:
    payload, fatal = CASES[name]
    with trio.fail_after(20):
        async with running_daemon(sock_dir) as d:
            got = await _exchange(d.socket_path, payload)
            errors = [m for m in got if isinstance(m, Error)]
            assert errors, got
            assert errors[-1].code in ("protocol_error", "invalid_argument")
            if fatal:
                assert errors[-1].id is None and errors[-1].code == "protocol_error"
            await _still_serving(d.socket_path)


async def test_truncated_frame_then_close(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir) as d:
            s = await trio.open_unix_socket(str(d.socket_path))
            proto = ClientProtocol("t")
            await s.send_all(proto.hello())
            frame = _frame({"type": "request", "id": 1, "method": "ping"})
            await s.send_all(frame[:-2])
            await s.send_eof()
            # The daemon sees the end of the stream inside a frame: it answers and closes.
            got = await _read_all(s, proto)
            await s.aclose()
            assert any(isinstance(m, Error) and m.code == "protocol_error" for m in got), got
            await _still_serving(d.socket_path)
            errors = d.manager.metrics.samples()  # type: ignore[union-attr]
            assert any(x.name == "wa_protocol_errors_total" and x.value >= 1 for x in errors)


async def test_request_before_hello_and_bad_version(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir) as d:
            got = await _exchange(d.socket_path, _frame({"type": "request", "id": 1, "method": "ping"}), hello=False)
            assert isinstance(got[-1], Error) and "hello" in got[-1].message
            got = await _exchange(d.socket_path, _frame({"type": "hello", "protocol": 99}), hello=False)
            assert isinstance(got[-1], Error) and got[-1].details == {"supported": [1]}
            await _still_serving(d.socket_path)


async def test_wrong_param_types_and_invalid_ids(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir) as d:
            bad = [
                {"session": 5},
                {"session": None},
                {"session": "../../etc"},
                {"session": "--remote-debugging-port=1"},
                {"session": "a" * 10_000},
                {"session": "ok", "extra": 1},
                {"session": "ok", "whatsapp_url": "file:///etc/passwd"},
                {"session": "ok", "whatsapp_url": "http://a b/"},
                {"session": "ok", "whatsapp_url": "--user-data-dir=/tmp"},
                {"session": "ok", "idle_timeout": -5},
                {},
            ]
            payload = b"".join(
                _frame({"type": "request", "id": i + 1, "method": "connect", "params": p}) for i, p in enumerate(bad)
            )
            payload += _frame({"type": "request", "id": 50, "method": "watch", "params": {"timeout": -1}})
            payload += _frame({"type": "request", "id": 51, "method": "list", "params": {"states": ["bogus"]}})
            got = await _exchange(d.socket_path, payload)
            codes = {m.id: m.code for m in got if isinstance(m, Error)}
            assert codes == {i: "invalid_argument" for i in [*range(1, len(bad) + 1), 50, 51]}
            assert not d.manager.session_ids()  # type: ignore[union-attr]
            await _still_serving(d.socket_path)


async def test_client_vanishing_mid_watch(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir) as d:
            async with AsyncClient(d.socket_path) as wa:
                await wa.connect("v")
            for i in range(20):
                s = await trio.open_unix_socket(str(d.socket_path))
                proto = ClientProtocol("v")
                await s.send_all(proto.hello())
                await s.send_all(proto.request("watch", WatchParams(session="v"))[1])
                if i % 2:  # half of them vanish once their watch is surely running (its snapshot came)
                    while not isinstance(msg := proto.decoder.next_message(), Event):
                        if msg is None:
                            proto.decoder.receive_data(await s.receive_some(65536))
                await s.aclose()
            while d.server.connection_count:  # type: ignore[union-attr]
                await trio.sleep(0.01)
            assert d.manager.hub._subs == set()  # type: ignore[union-attr]
            async with AsyncClient(d.socket_path) as wa:
                assert (await wa.status("v")).state in (State.STARTING, State.WAITING_QR)


async def test_silent_client_is_closed_after_hello_timeout(sock_dir: Path, autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with running_daemon(sock_dir) as d:
            s = await trio.open_unix_socket(str(d.socket_path))
            proto = ClientProtocol("silent")
            got = await _read_all(s, proto)  # returns when the daemon closes on us
            assert isinstance(got[-1], Error) and "no hello" in got[-1].message
            await _still_serving(d.socket_path)


async def test_inflight_limit_gives_busy(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir, max_inflight_per_connection=2, scripted={"launch_delay": 1}) as d:
            async with AsyncClient(d.socket_path) as wa:
                await wa.connect("b")
            proto = ClientProtocol("b")
            # Three watches (each stays in flight) on one connection: the third is refused.
            payload = b"".join(proto.request("watch", WatchParams(session="b"))[1] for _ in range(3))
            got = await _exchange(d.socket_path, payload)
            assert any(isinstance(m, Error) and m.code == "busy" for m in got)


# ------------------------------------------------------------------ sans-IO decoder properties


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_decoder_raises_only_its_own_error(chunks: list[bytes]) -> None:
    dec = FrameDecoder(ClientMessage, max_frame=4096)
    try:
        for chunk in chunks:
            dec.receive_data(chunk)
            while dec.next_message() is not None:
                pass
            assert dec.buffered <= 4096 + 4 + 64
        dec.receive_eof()
    except RemoteProtocolError:
        pass


@given(st.integers(min_value=4097, max_value=2**32 - 1))
def test_decoder_rejects_oversize_before_buffering(length: int) -> None:
    dec = FrameDecoder(ClientMessage, max_frame=4096)
    with pytest.raises(RemoteProtocolError) as info:
        dec.receive_data(struct.pack(">I", length))
    assert info.value.fatal and dec.buffered == 0


def test_valid_frame_before_an_oversized_header_is_still_delivered() -> None:
    dec = FrameDecoder(ClientMessage, max_frame=4096)
    dec.receive_data(_frame({"type": "cancel", "id": 3}) + struct.pack(">I", 10**6))
    assert dec.next_message().id == 3
    with pytest.raises(RemoteProtocolError):
        dec.next_message()


_ = SessionParams
