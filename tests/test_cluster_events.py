"""The fleet's event stream entries (cluster/events.py) and the cache of remote
sessions (cluster/remote.py), sans I/O: round trips, hostile entries refused with
a clear error, gaps, staleness."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from wa_daemon.daemon.cluster.events import (
    MAX_DATA,
    Entry,
    EventFormatError,
    GapTracker,
    decode_entry,
    encode_entry,
)
from wa_daemon.daemon.cluster.remote import RemoteCache
from wa_daemon.protocol import QrCode, QrUpdated, SessionError, SessionStatus, State, StateChanged, Transition

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def status(session: str = "s1", state: State = State.STARTING, host: str = "h2", **kw: Any) -> SessionStatus:
    return SessionStatus(session, state, T0, 0, owner_uid=1000, host=host, **kw)


def changed(to: State, session: str = "s1", host: str = "h2", **kw: Any) -> StateChanged:
    return StateChanged(Transition(T0, State.STOPPED, to, "why", 0), status(session, to, host, **kw))


def qr(seq: int, session: str = "s1") -> QrCode:
    return QrCode(session, f"2@secret-payload-{seq}", T0, T0 + timedelta(seconds=20), seq)


def entry(seq: int = 1, kind: Any = "event", host: str = "h2", **kw: Any) -> Entry:
    return Entry(host, f"{host}#abcd", seq, kind, kw.pop("session", "s1"), 1000, **kw)


def wire(e: Entry) -> dict[bytes, bytes]:
    """As coredis hands a stream entry back: bytes keys and values."""
    return {k.encode(): v for k, v in encode_entry(e).items()}


def test_every_kind_round_trips() -> None:
    for e in (
        entry(event=changed(State.WAITING_QR, qr=qr(1))),
        entry(event=QrUpdated(qr(2))),
        entry(event=SessionError("s1", "launch_failed", "no browser")),
        entry(kind="status", status=status(busy=True)),
        entry(kind="end", status=status(state=State.STOPPED)),
        entry(kind="end"),
    ):
        assert decode_entry(wire(e)) == e


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda f: f.update({b"extra": b"1"}), "unknown fields ['extra']"),
        (lambda f: f.update({b"v": b"2"}), "format 'v' is not 1"),
        (lambda f: f.pop(b"host"), "field 'host' is missing"),
        (lambda f: f.update({b"src": b"other#1"}), "'src' does not name the entry's host"),
        (lambda f: f.update({b"seq": b"-3"}), "'seq' is not an integer"),
        (lambda f: f.update({b"seq": b"9" * 30}), "'seq' is longer than"),
        (lambda f: f.update({b"kind": b"shell"}), "'kind' is not event, status or end"),
        (lambda f: f.update({b"session": b"../etc"}), "'session' is not a session id"),
        (lambda f: f.update({b"uid": b"root"}), "'uid' is not an integer"),
        (lambda f: f.update({b"host": b"\xff\xfe"}), "'host' is not UTF-8"),
        (lambda f: f.update({b"data": b"not json"}), "'data' is not a valid event"),
        (lambda f: f.update({b"data": b'{"type": "state", "transition": 3}'}), "'data' is not a valid event"),
        (lambda f: f.update({b"data": b"x" * (MAX_DATA + 1)}), "over the cap"),
        (lambda f: f.update({b"session": b"s2"}), "about another session"),
        (lambda f: f.update({b"data": b'{"type": "qr", "qr": {"session": "s1", "data": "2@secret-payload-x", '
                                      b'"generated_at": "2@secret-payload-y", "expires_at": 1, "seq": 1}}'}),
         "'data' is not a valid event"),
    ],
)
def test_hostile_entries_are_refused_with_a_clear_error(change: Any, error: str) -> None:
    fields = wire(entry(event=changed(State.WAITING_QR, qr=qr(1))))
    change(fields)
    with pytest.raises(EventFormatError, match=error.replace("[", r"\[").replace("]", r"\]")) as info:
        decode_entry(fields)
    assert "secret-payload" not in str(info.value)  # errors name fields, never values


def test_garbage_of_any_shape_never_escapes_as_another_exception() -> None:
    import random

    rng = random.Random(11)
    good = wire(entry(event=changed(State.WAITING_QR, qr=qr(1))))
    for _ in range(2000):
        fields = dict(good)
        for _ in range(rng.randint(1, 3)):
            key = rng.choice([*fields, b"v", b"zz"])
            fields[key] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        try:
            decode_entry(fields)
        except EventFormatError:
            pass


def test_an_entry_that_is_no_map_of_strings_is_refused() -> None:
    for raw in (None, [b"v", b"1"], {b"v": 1}, {1: b"1"}):
        with pytest.raises(EventFormatError, match="not a map of strings"):
            decode_entry(raw)  # type: ignore[arg-type]


def test_an_oversized_event_is_not_encoded() -> None:
    huge = entry(event=SessionError("s1", "x", "m" * MAX_DATA))
    with pytest.raises(EventFormatError, match="over the cap"):
        encode_entry(huge)


def test_a_jump_in_a_publishers_seq_is_a_gap() -> None:
    gaps = GapTracker()
    assert gaps.saw("h1#a", 7)  # the first seen of a run: where we came in
    assert gaps.saw("h1#a", 8)
    assert gaps.saw("h1#a", 8)  # a repeat is no gap
    assert not gaps.saw("h1#a", 10)  # 9 was trimmed before we read it
    assert gaps.saw("h1#b", 1)  # a restarted daemon: a new run
    gaps.reset()
    assert gaps.saw("h1#a", 50)


def test_the_cache_follows_state_qr_and_end_and_skips_its_own_host() -> None:
    cache = RemoteCache("h1")
    cache.behind = False
    assert cache.apply(entry(event=changed(State.STARTING)))
    assert cache.apply(entry(2, event=changed(State.WAITING_QR, qr=qr(1))))
    assert cache.apply(entry(3, event=QrUpdated(qr(2))))
    got = cache.status("s1")
    assert got is not None and got.qr == qr(2) and got.host == "h2" and not got.stale
    assert [t.to_state for t in cache.history("s1") or []] == [State.STARTING, State.WAITING_QR]
    assert cache.apply(entry(4, kind="status", status=status(state=State.WAITING_QR, qr=qr(2), busy=True)))
    assert cache.owner_uid("s1") == 1000

    assert not cache.apply(entry(host="h1", event=changed(State.STARTING, session="mine", host="h1"),
                                 session="mine"))
    assert cache.status("mine") is None

    cache.behind = True  # the stream cannot be read: everything is stale
    assert [s.stale for s in cache.statuses()] == [True]
    cache.behind = False
    cache.gone_hosts = {"h2"}  # its owner's heartbeat is gone: its last status, stale
    assert (s := cache.status("s1")) is not None and s.stale and s.state == State.WAITING_QR
    cache.gone_hosts = set()

    assert cache.apply(entry(5, kind="end", status=status(state=State.STOPPED)))
    assert cache.status("s1") is None


def test_seeding_starts_over_but_keeps_histories() -> None:
    cache = RemoteCache("h1")
    cache.apply(entry(event=changed(State.STARTING)))
    cache.apply(entry(event=changed(State.STARTING, session="gone"), session="gone"))
    cache.seed([status(state=State.CONNECTED), status("other", host="h3"), status("own", host="h1")])
    assert sorted(cache.sessions) == ["other", "s1"]
    assert [t.to_state for t in cache.history("s1") or []] == [State.STARTING]
    seeded = msgspec.structs.replace(status(state=State.CONNECTED), stale=True)
    cache.seed([seeded])  # a stored status never keeps a stale mark: it is decided when read
    cache.behind = False
    assert (s := cache.status("s1")) is not None and not s.stale


def test_wactl_marks_a_stale_status() -> None:
    from wactl import render

    assert render.state_cell(msgspec.structs.replace(status(busy=True), stale=True)) == "starting [busy, stale]"
    assert render.state_cell(status()) == "starting"
