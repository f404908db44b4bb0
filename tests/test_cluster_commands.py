"""The routed commands' encoding and the placement choice, sans I/O
(cluster/commands.py, cluster/least_loaded.py; docs/cluster.md, "Routing")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from wa_daemon.daemon.cluster.commands import (
    Command,
    CommandRefused,
    decode_answer,
    decode_entry,
    encode_answer,
    encode_command,
    entry_ms,
    error_answer,
)
from wa_daemon.daemon.cluster.least_loaded import Load, choose, parse_load
from wa_daemon.daemon.rpc.access import ADMIN, UNKNOWN, Caller
from wa_daemon.errors import InternalError, PermissionDenied, RateLimited, WaDaemonError
from wa_daemon.protocol import SessionStatus, State

RID = "0123456789abcdef0123456789abcdef"


def command(**changes: Any) -> Command:
    fields: dict[str, Any] = dict(
        id=RID, method="disconnect", params=msgspec.msgpack.encode({"session": "s1"}),
        uid=1000, gid=1000, admin=False, budget_ms=10_000, origin="host-a",
    )
    return Command(**{**fields, **changes})


def raw_entry(**fields: Any) -> dict[bytes, bytes]:
    base: dict[str, Any] = msgspec.structs.asdict(command())
    base.update(fields)
    return {b"c": msgspec.msgpack.encode(base)}


def test_a_command_round_trips_with_its_deadline_on_redis_clock() -> None:
    entry = decode_entry(b"1700000000123-4", encode_command(command()))
    assert entry.command == command()
    assert entry.sent_ms == 1700000000123 and entry.deadline_ms == 1700000010123
    assert entry_ms("5-0") == 5
    # fields as a client that decodes to str would give them
    assert decode_entry("1-0", {"c": encode_command(command())[b"c"]}).command == command()


def test_the_owner_serves_the_caller_the_receiving_host_saw() -> None:
    assert command(admin=True).caller == ADMIN
    assert command().caller == Caller.user(1000)
    assert command(uid=None, gid=None).caller == UNKNOWN
    assert command(uid=None, gid=None).credentials is None
    creds = command(uid=7, gid=8).credentials
    assert creds is not None and (creds.uid, creds.gid) == (7, 8)


@pytest.mark.parametrize(
    ("fields", "message", "answerable"),
    [
        ({b"c": b"\xc1\xc1"}, "not a command", False),  # garbage, not msgpack
        ({b"c": msgspec.msgpack.encode([1, 2])}, "not a command", False),  # the wrong type
        ({b"c": b"x", b"extra": b"y"}, "are not exactly", False),  # an unknown entry field
        ({b"d": b"x"}, "are not exactly", False),
        ({b"c": 5}, "not bytes", False),
        (["c", "x"], "not a map", False),
        (raw_entry(extra=1), "not a command", True),  # an unknown command field
        (raw_entry(uid="root"), "not a command", True),  # a wrong type
        (raw_entry(params="text"), "not a command", True),
        (raw_entry(admin=1), "not a command", True),
        (raw_entry(method="status"), "is not routed", True),
        (raw_entry(method="x" * 500), "is not routed", True),
        (raw_entry(params=b"\x00" * ((1 << 20) + 1)), "exceed", True),
        (raw_entry(uid=-1), "out of range", True),
        (raw_entry(gid=1 << 40), "out of range", True),
        (raw_entry(budget_ms=0), "out of range", True),
        (raw_entry(budget_ms=10**9), "out of range", True),
        (raw_entry(origin="../x"), "not a host id", True),
        (raw_entry(id="nope"), "32 hex digits", False),
        (raw_entry(id="A" * 32), "32 hex digits", False),
    ],
)
def test_hostile_entries_are_refused_with_a_clear_error(fields: Any, message: str, answerable: bool) -> None:
    with pytest.raises(CommandRefused, match=message) as info:
        decode_entry(b"1-0", fields)
    assert (info.value.request_id == RID) is answerable
    assert "s1" not in info.value.message  # params are never quoted (a message body may be in them)


def test_an_entry_id_that_is_not_ms_seq_is_refused() -> None:
    for ident in (b"", b"x-1", b"1", b"1-2-3", "1-x"):
        with pytest.raises(CommandRefused, match="not ms-seq"):
            decode_entry(ident, encode_command(command()))


def test_answers_carry_the_result_or_the_typed_error() -> None:
    status = SessionStatus("s1", State.STOPPED, datetime(2026, 1, 2, tzinfo=UTC), 0, host="b")
    result = decode_answer(encode_answer(status))
    assert isinstance(result, msgspec.Raw)
    assert msgspec.msgpack.decode(result, type=SessionStatus) == status
    nil = decode_answer(encode_answer(None))
    assert isinstance(nil, msgspec.Raw) and msgspec.msgpack.decode(nil) is None

    error = decode_answer(error_answer(RateLimited("slow down", {"retry_after": 1.5})))
    assert isinstance(error, RateLimited) and error.retry_after == 1.5 and error.message == "slow down"
    assert isinstance(decode_answer(error_answer(PermissionDenied("no"))), PermissionDenied)
    newer = decode_answer(msgspec.msgpack.encode({"code": "from_the_future", "message": "m"}))
    assert isinstance(newer, WaDaemonError) and newer.code == "from_the_future"
    for garbage in (b"", b"\xc1", msgspec.msgpack.encode({"result": 1, "extra": 2}), msgspec.msgpack.encode([1])):
        bad = decode_answer(garbage)
        assert isinstance(bad, InternalError) and "not valid" in bad.message


def load(host: str, capacity: int, sessions: int, age: float = 0.0, draining: bool = False) -> Load:
    return Load(host, capacity, sessions, NOW - int(age * 1e6), draining)


NOW = 1_700_000_000_000_000


def test_a_new_session_goes_to_the_live_host_with_the_most_room() -> None:
    loads = [load("a", 10, 8), load("b", 10, 3), load("c", 20, 16)]
    assert choose(loads, NOW, "a", stale_after=5) == "b"
    # ties: the receiving host, then the lowest id (every host picks the same)
    tied = [load("a", 10, 5), load("b", 10, 5), load("c", 10, 5)]
    assert choose(tied, NOW, "c", 5) == "c"
    assert choose(tied, NOW, "z", 5) == "a"
    assert choose([load("ab", 4, 0), load("a", 4, 0)], NOW, "z", 5) == "a"
    # stale, draining and full hosts are skipped
    assert choose([load("a", 10, 0, age=6), load("b", 10, 9)], NOW, "x", 5) == "b"
    assert choose([load("a", 10, 0, draining=True), load("b", 10, 9)], NOW, "x", 5) == "b"
    assert choose([load("a", 10, 10), load("b", 3, 4)], NOW, "a", 5) is None
    assert choose([], NOW, "a", 5) is None


def test_heartbeat_fields_are_read_as_redis_holds_them() -> None:
    fields = {"capacity": "10", "sessions": "3", "at_us": str(NOW), "version": "1", "other": "x"}
    assert parse_load("a", fields) == Load("a", 10, 3, NOW, False)  # no draining field: not draining
    assert parse_load("a", {**fields, "draining": "1"}) == Load("a", 10, 3, NOW, True)
    assert parse_load("a", {**fields, "draining": "True"}) == Load("a", 10, 3, NOW, True)
    assert parse_load("a", {**fields, "draining": "0"}) == Load("a", 10, 3, NOW, False)
    assert parse_load("a", {**fields, "capacity": "many"}) is None
    assert parse_load("a", {k: v for k, v in fields.items() if k != "sessions"}) is None
