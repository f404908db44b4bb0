"""Trust boundaries: the frame decoder under hostile bytes, a live daemon under a storm
of hostile frames from many connections, and strings that could reach the file
system, Chromium's command line or a log line.

``test_bad_input.py`` already covers one hostile frame per connection against an
in-process daemon, random chunks into the decoder and oversized headers. This file
adds: streams mixing valid, truncated, oversized and garbage frames with the buffer
bound checked after every chunk; well-framed msgpack of every shape (wrong types,
unknown tags, huge strings, non-UTF-8, extension types, deep nesting); and a real
daemon subprocess that must come out of thousands of hostile frames serving, with
its sessions, memory and file descriptors as they were.
"""

from __future__ import annotations

import os
import random
import sqlite3
import struct
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wa_daemon import AsyncClient, Client, State
from wa_daemon.protocol import (
    METHODS,
    ClientMessage,
    ClientProtocol,
    Error,
    FrameDecoder,
    RemoteProtocolError,
    Reply,
    encode,
)

from .helpers import DaemonProcess, draw_seed, running_daemon

MAX = 4096
HDR = struct.Struct(">I")


def _frame(body: bytes) -> bytes:
    return HDR.pack(len(body)) + body


def _drain(dec: FrameDecoder) -> list[Any]:
    """Every message the decoder holds; non-fatal errors are skipped like the server does."""
    out = []
    while True:
        try:
            msg = dec.next_message()
        except RemoteProtocolError as exc:
            if exc.fatal:
                raise
            assert exc.request_id is None or 0 <= exc.request_id < 2**63
            continue
        if msg is None:
            return out
        out.append(msg)


# ------------------------------------------------------------------ module level

_TAGS = ["hello", "request", "cancel", "reply", "welcome", "event", "end", "error", "", "REQUEST", "hello\x00"]

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)
# Maps that look like messages: a known (or nearly known) tag and fields of any type.
_messages = st.fixed_dictionaries(
    {"type": st.sampled_from(_TAGS) | st.text(max_size=12)},
    optional={
        "id": _values,
        "method": st.sampled_from(sorted(METHODS)) | _values,
        "params": _values,
        "protocol": _values,
        "client": _values,
    },
)


def _raw_msgpack_oddities() -> list[bytes]:
    """msgpack that msgspec's encoder would never produce."""
    return [
        b"\x91" * 5000 + b"\xc0",  # 5,000 nested arrays
        b"\x81\xa1a" * 5000 + b"\xc0",  # 5,000 nested maps: deeper than the interpreter's recursion limit
        b"\x84\xa4type\xa7request\xa2id\x07\xa6method\xa4ping\xa6params" + b"\x91" * 5000 + b"\xc0",
        b"\x82\xa4type\xa7request\xa2id\xa4\xff\xfe\xfd\xfc",  # a non-UTF-8 str
        b"\x83\xa4type\xa7request\xa2id\x01\xa6method\xa3\xff\xfe\xfd",  # non-UTF-8 method name
        b"\x81\x91\x01\x01",  # array as a map key
        b"\x81\x81\x01\x01\x01",  # map as a map key
        b"\xd4\x01\x00",  # fixext
        b"\xd6\xff\x00\x00\x00\x00",  # timestamp extension
        b"\xcf" + b"\xff" * 8,  # uint64 max
        b"\xdf\xff\xff\xff\xff",  # a map claiming 4 billion entries, then nothing
        b"\xdd\xff\xff\xff\xff",  # an array claiming 4 billion entries
        b"\xdb\xff\xff\xff\xff",  # a str claiming 4 GiB
        b"\xc1",  # never-used byte
        b"",  # an empty frame
    ]


@pytest.mark.parametrize("body", _raw_msgpack_oddities(), ids=range(len(_raw_msgpack_oddities())))
def test_decoder_odd_msgpack_gives_only_its_own_error(body: bytes) -> None:
    dec = FrameDecoder(ClientMessage, max_frame=1 << 20)
    dec.receive_data(_frame(body) + _frame(encode({"type": "cancel", "id": 9})))
    try:
        dec.next_message()
    except RemoteProtocolError as exc:
        assert not exc.fatal  # well framed: the stream stays in sync
    # ...so the next frame decodes.
    assert dec.next_message().id == 9
    assert dec.buffered == 0


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(_messages)
def test_decoder_wellframed_messages_of_any_shape(obj: dict[str, Any]) -> None:
    dec = FrameDecoder(ClientMessage, max_frame=1 << 16)
    dec.receive_data(_frame(encode(obj)))
    try:
        msg = dec.next_message()
    except RemoteProtocolError as exc:
        assert not exc.fatal
        rid = obj.get("id")
        if exc.request_id is not None:
            assert exc.request_id == rid  # salvaged ids are the sender's, never made up
    else:
        assert msg is not None and type(msg).__name__.lower() == obj["type"]
    assert dec.buffered == 0


_pieces = st.one_of(
    _messages.map(lambda m: _frame(encode(m))),  # well framed, any content
    st.binary(max_size=200),  # garbage
    _messages.map(lambda m: _frame(encode(m))[: -1 - len(encode(m)) // 2]),  # truncated
    st.integers(min_value=MAX + 1, max_value=2**32 - 1).map(HDR.pack),  # oversized header
    st.integers(min_value=0, max_value=MAX).map(lambda n: HDR.pack(n) + b"x" * min(n, 300)),  # header, partial body
    st.just(_frame(encode({"type": "request", "id": 1, "method": "ping", "params": {"s": "x" * (MAX - 60)}}))),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(_pieces, max_size=12), st.integers(min_value=1, max_value=700), st.data())
def test_decoder_stream_never_buffers_past_one_frame(pieces: list[bytes], chunk: int, data: st.DataObject) -> None:
    """Any stream, cut anywhere: only RemoteProtocolError, and once the decoder has
    handed out what it holds, it never keeps more than one header and one maximal body."""
    stream = b"".join(pieces)
    dec = FrameDecoder(ClientMessage, max_frame=MAX)
    pos = 0
    try:
        while pos < len(stream):
            size = data.draw(st.integers(min_value=1, max_value=chunk))
            dec.receive_data(stream[pos : pos + size])
            pos += size
            _drain(dec)
            assert dec.buffered <= MAX + HDR.size
        dec.receive_eof()
    except RemoteProtocolError as exc:
        assert exc.fatal  # non-fatal ones were skipped in _drain
        assert dec.buffered <= MAX + HDR.size


def test_decoder_huge_string_at_the_limit_and_one_byte_over() -> None:
    limit = 1 << 20
    body = encode({"type": "hello", "protocol": 1, "client": "é" * ((limit - 40) // 2)})
    assert len(body) <= limit
    dec = FrameDecoder(ClientMessage, max_frame=limit)
    frame = _frame(body)
    for i in range(0, len(frame), 65536):
        dec.receive_data(frame[i : i + 65536])
        assert dec.buffered <= limit + HDR.size
    assert dec.next_message().protocol == 1 and dec.buffered == 0
    big = encode({"type": "hello", "protocol": 1, "client": "x" * limit})
    with pytest.raises(RemoteProtocolError) as info:
        dec.receive_data(_frame(big)[:65536])
    assert info.value.fatal and dec.buffered == 0


# ------------------------------------------------------------------ live storm against a daemon process


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _hostile_frame(rng: random.Random) -> tuple[bytes, bool]:
    """One hostile piece of input and whether the daemon must drop the connection for it."""
    kind = rng.randrange(12)
    if kind == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64))), True  # garbage (fatal or not)
    if kind == 1:
        return HDR.pack(rng.randrange((1 << 20) + 1, 2**32)), True  # oversized header
    if kind == 2:
        return _frame(rng.choice(_raw_msgpack_oddities())), False
    if kind == 3:
        return _frame(encode({"type": rng.choice(_TAGS + ["nope", "x" * 100]), "id": rng.randrange(100)})), False
    if kind == 4:  # a request for a method nobody has
        return _frame(encode({"type": "request", "id": rng.randrange(2**31), "method": "m" * rng.randrange(1, 300)})), False
    if kind == 5:  # read methods with wrong params
        method = rng.choice(["status", "qr", "history", "list", "metrics", "ping", "version"])
        params = rng.choice([{"session": 5}, {"session": None}, {"states": "x"}, [1, 2], "str", {"limit": -1}, {"x": 1}])
        return _frame(encode({"type": "request", "id": rng.randrange(2**31), "method": method, "params": params})), False
    if kind == 6:  # operations with ids that must never reach a file name or a command line
        method = rng.choice(["connect", "disconnect", "logout", "delete", "simulate"])
        sid = rng.choice(["../x", "a/../../b", "--foo", "-x", "a\x00b", "x" * 65, "a b", "é", "", ".", "..", "a\n"])
        return _frame(encode({"type": "request", "id": rng.randrange(2**31), "method": method, "params": {"session": sid}})), False
    if kind == 7:  # huge string, near the frame limit
        size = rng.choice([1000, 60_000, (1 << 20) - 100])
        return _frame(encode({"type": "request", "id": 1, "method": "ping", "params": {"pad": "y" * size}})), False
    if kind == 8:  # mismatched types in the envelope
        env = {"type": "request", "id": rng.choice(["1", -5, 2**64 - 1, 1.5, None, [1]]), "method": "ping"}
        return _frame(encode(env)), False
    if kind == 9:  # cancel of something that is not in flight, hello again
        return _frame(encode(rng.choice([{"type": "cancel", "id": 77}, {"type": "hello", "protocol": 1}]))), False
    if kind == 10:  # a frame cut short, then the connection closes
        full = _frame(encode({"type": "request", "id": 3, "method": "ping"}))
        return full[: rng.randrange(1, len(full))], True
    return _frame(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))), False  # random body


async def _storm_connection(path: Path, rng: random.Random, frames: int, stats: dict[str, int]) -> None:
    """Send ``frames`` hostile frames, reconnecting whenever the daemon drops us."""
    sent = 0
    while sent < frames:
        s = await trio.open_unix_socket(str(path))
        proto = ClientProtocol("storm")
        async with s:
            await s.send_all(proto.hello())

            async def reader(s: trio.SocketStream = s) -> None:
                while True:
                    try:
                        data = await s.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    if not data:
                        return
                    stats["bytes_back"] += len(data)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                try:
                    while sent < frames:
                        payload, closes = _hostile_frame(rng)
                        sent += 1
                        stats["frames"] += 1
                        await s.send_all(payload)
                        if closes:
                            stats["reconnects"] += 1
                            break
                        if sent % 50 == 0:
                            await trio.lowlevel.checkpoint()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    stats["dropped"] += 1
                with trio.move_on_after(0.05):
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()


def _snapshot(wa: Client, sids: list[str]) -> dict[str, Any]:
    return {sid: (wa.status(sid).state, [(t.to_state, t.reason) for t in wa.history(sid)]) for sid in sids}


def _connections(wa: Client) -> float:
    return next(s.value for s in wa.metrics().samples if s.name == "wa_rpc_connections")


def test_live_storm_of_hostile_frames(sock_dir: Path, request: pytest.FixtureRequest) -> None:
    seed = draw_seed(request, "WA_FUZZ_SEED")
    rng = random.Random(seed)
    daemon = DaemonProcess(
        sock_dir / "d.sock",
        "--driver", "scripted", "--log-level", "error",
        "--set", "scripted.launch_delay=0.05", "--set", "scripted.auth_delay=0.05", "--set", "hello_timeout=5",
    )
    try:
        daemon.wait_ready()
        pid = daemon.proc.pid
        sids = ["f-connected", "f-qr", "f-stopped"]
        with Client(daemon.sock, timeout=30) as wa:
            wa.connect("f-connected")
            wa.connect("f-qr")
            wa.connect("f-stopped")
            deadline = time.monotonic() + 10
            while wa.status("f-qr").state != State.WAITING_QR or wa.status("f-connected").state != State.WAITING_QR:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            wa.simulate("f-connected", "scan")
            while wa.status("f-connected").state != State.CONNECTED:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            while wa.status("f-stopped").state != State.WAITING_QR:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            wa.disconnect("f-stopped")

        def storm(connections: int, frames: int) -> dict[str, int]:
            stats = {"frames": 0, "reconnects": 0, "dropped": 0, "bytes_back": 0}

            async def main() -> None:
                with trio.fail_after(120):
                    async with trio.open_nursery() as nursery:
                        for _ in range(connections):
                            nursery.start_soon(_storm_connection, daemon.sock, random.Random(rng.random()), frames, stats)

            trio.run(main)
            return stats

        with Client(daemon.sock, timeout=30) as wa:
            before = _snapshot(wa, sids)
            # Warm-up storm: the allocator reaches its working size (1 MiB frame buffers,
            # msgspec's decoder caches, structlog's) before the baseline is taken.
            storm(4, 150)
            _wait_connections(wa, 1)
            rss0, fds0 = _rss_kib(pid), _fds(pid)
            stats = storm(8, 500)
            _wait_connections(wa, 1)
            rss1, fds1 = _rss_kib(pid), _fds(pid)
            print(f"storm: {stats}; RSS {rss0} -> {rss1} KiB; fds {fds0} -> {fds1}")
            assert stats["frames"] == 8 * 500
            # A normal client gets correct answers, and no session moved.
            assert wa.ping() is not None
            assert sorted(s.session for s in wa.list()) == sids
            assert _snapshot(wa, sids) == before
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in wa.metrics().samples}
            assert samples[("wa_protocol_errors_total", ())] > 1000
            # Every connection of the storm is closed: the same descriptors as before it.
            assert fds1 == fds0, (fds0, fds1)
            # Memory: back to about the baseline. The tolerance (8 MiB) covers what CPython and
            # glibc keep in their free lists after the last 1 MiB frame buffers were released,
            # not growth per frame: 4,000 frames leaking even 2 KiB each would be 8 MiB.
            assert rss1 - rss0 < 8 * 1024, (rss0, rss1)
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0, daemon.output()[-3000:]
    assert "Traceback" not in daemon.output(), daemon.output()[-5000:]


def _wait_connections(wa: Client, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _connections(wa) > n:
        assert time.monotonic() < deadline, "storm connections still open"
        time.sleep(0.05)


# ------------------------------------------------------------------ strings that reach files, argv and logs

_BAD_IDS = [
    "../x",
    "../../etc/passwd",
    "a/b",
    "a/../b",
    ".",
    "..",
    ".hidden",
    "a\x00b",
    "\x00",
    "--foo",
    "--user-data-dir=/tmp/x",
    "-x",
    "a" * 65,
    "a" * 100_000,
    "a\nb",
    "a\n",
    "a\r\nlevel=error",
    "é",
    "a b",
    "a\tb",
    "",
    "a\\b",
    "a;rm -rf",
    "%2e%2e",
]
_BAD_URLS = [
    "file:///etc/passwd",
    "javascript:alert(1)",
    "--user-data-dir=/tmp",
    "--foo",
    "http://x/\x00y",
    "http://x/ --remote-debugging-port=1",
    "http://x/\n--foo",
    "https://x/" + "a" * 3000,
    "",
    "http://",
    "chrome://settings",
    "data:text/html,<h1>x</h1>",
    "http://x/\t",
]


def _raw_request(rid: int, method: str, params: bytes) -> bytes:
    """A request frame whose params are given as raw msgpack (to send what no encoder would)."""
    head = encode({"type": "request", "id": rid, "method": method})
    # head is a fixmap of 3 entries: make it 4 and append "params" with the raw bytes.
    assert head[0] == 0x83
    return _frame(b"\x84" + head[1:] + encode("params") + params)


def _non_utf8_params() -> list[tuple[str, bytes, bool]]:
    """(method, raw params, whether the msgpack is well formed).

    params travel as ``Raw``: a str that is not UTF-8 is found when the params are
    decoded, so it is that request's ``invalid_argument``. The last one is broken
    msgpack (a str longer than the data): the message cannot be read, its id
    included, so the answer is a non-fatal ``protocol_error`` with no id.
    """
    sid_ok = encode("ok")
    return [
        ("connect", b"\x81" + encode("session") + b"\xa5\xff\xfe/..", True),
        ("connect", b"\x81" + encode("session") + b"\xc4\x03abc", True),  # bin, not str
        ("connect", b"\x82" + encode("session") + sid_ok + encode("whatsapp_url") + b"\xa9http://\xff\xfe", True),
        ("connect", b"\x82" + encode("session") + sid_ok + encode("whatsapp_url") + b"\xc4\x09http://x/", True),
        ("status", b"\x81" + encode("session") + b"\xa3\xc0\xaf.", True),  # overlong UTF-8 encoding of "/"
        ("delete", b"\x81" + encode("session") + b"\xa2\xed\xa0", True),  # truncated surrogate
        ("connect", b"\x81" + encode("session") + b"\xa9../", False),  # 9 bytes announced, 3 sent
    ]


async def test_strings_for_files_argv_and_logs_are_refused(sock_dir: Path) -> None:
    state = sock_dir / "state"
    with trio.fail_after(60):
        # The Chromium driver with a SQLite registry: the real paths a session id would
        # reach (profile directory, registry row). Nothing is launched: every call is refused.
        async with running_daemon(
            sock_dir, driver="chromium", state_dir=str(state), whatsapp_url="http://127.0.0.1:9/"
        ) as d:
            listing = sorted(p.relative_to(state) for p in state.rglob("*"))
            payload = b""
            rid = 0
            expected: dict[int, str] = {}
            for sid in _BAD_IDS:
                for method in ("connect", "status", "history", "qr", "disconnect", "logout", "delete", "watch"):
                    rid += 1
                    payload += _frame(encode({"type": "request", "id": rid, "method": method, "params": {"session": sid}}))
                    expected[rid] = "invalid_argument"
            for url in _BAD_URLS:
                rid += 1
                params = {"session": "okid", "whatsapp_url": url}
                payload += _frame(encode({"type": "request", "id": rid, "method": "connect", "params": params}))
                expected[rid] = "invalid_argument"
            undecodable = 0
            for method, params_raw, well_formed in _non_utf8_params():
                rid += 1
                payload += _raw_request(rid, method, params_raw)
                if well_formed:
                    expected[rid] = "invalid_argument"
                else:
                    undecodable += 1
            got = await _exchange_all(d.socket_path, payload, len(expected) + undecodable)
            codes = {m.id: m.code for m in got if isinstance(m, Error) and m.id is not None}
            anonymous = [m.code for m in got if isinstance(m, Error) and m.id is None]
            replies = [m.id for m in got if isinstance(m, Reply)]
            assert replies == [] and codes == expected, {k: v for k, v in codes.items() if v != "invalid_argument"}
            assert anonymous == ["protocol_error"] * undecodable
            # Nothing on disk: no profile, no registry row, no new file anywhere in the state dir.
            assert not d.manager.session_ids()  # type: ignore[union-attr]
            assert sorted(p.relative_to(state) for p in state.rglob("*")) == listing
            assert list((state / "sessions").iterdir()) == []
            rows = sqlite3.connect(state / "registry.sqlite3").execute("SELECT count(*) FROM sessions").fetchone()
            assert rows == (0,)
            # The error message quotes the id with repr(): no raw newline or NUL reaches a log line.
            async with AsyncClient(d.socket_path) as wa:
                with pytest.raises(Exception) as info:
                    await wa.status("a\nlevel=error")
                assert "\n" not in str(info.value)
                assert await wa.ping()


async def _exchange_all(path: Path, payload: bytes, expect: int) -> list[Any]:
    s = await trio.open_unix_socket(str(path))
    proto = ClientProtocol("strings")
    got: list[Any] = []
    async with s:
        await s.send_all(proto.hello())
        await s.send_all(payload)
        while len([m for m in got if isinstance(m, (Error, Reply))]) < expect:
            msg = proto.decoder.next_message()
            if msg is not None:
                got.append(msg)
                continue
            data = await s.receive_some(65536)
            if not data:
                break
            proto.decoder.receive_data(data)
    return got


_ = msgspec
