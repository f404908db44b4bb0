"""Messages without a browser: the inbox store, the send decisions, the page report
parser, the simulator's conversations, and Messaging on the scripted driver under
MockClock (waiting for a session, send_wait, pace, idempotency, retention)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import structlog
import trio
import trio.testing

from wa_daemon.daemon.browser.base import AckChanged, PageMessage
from wa_daemon.daemon.browser.messaging import MAX_TEXT, parse_report
from wa_daemon.daemon.messages.inbox import Inbox, InboxError
from wa_daemon.daemon.messages.pacing import Gate, Pacer, gate
from wa_daemon.daemon.messages.service import Messaging
from wa_daemon.daemon.sessions.hub import StreamEnd
from wa_daemon.errors import InvalidArgument, NotFound, Unavailable
from wa_daemon.message_types import MessageAck, MessageReceived, chat_id
from wa_daemon.protocol import State, StateChanged
from wa_daemon.sim.chats import Chats
from wa_daemon.sim.records import BadRequest

from .helpers import open_manager


def msg(mid: str, text: str = "hi", *, from_me: bool = False, ack: int = 1, kind: str = "chat") -> PageMessage:
    return PageMessage(mid, "12025550111@c.us", "12025550111@c.us", from_me, kind, text, 1_780_000_000, ack)


# ---------------------------------------------------------------------------- the inbox


def test_inbox_numbers_dedupes_and_pages(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "inbox.sqlite3")
    assert os.stat(tmp_path / "inbox.sqlite3").st_mode & 0o777 == 0o600
    first = inbox.add("a", msg("m1"), 100.0)
    assert first is not None and first.seq == 1
    assert inbox.add("a", msg("m1", "again"), 101.0) is None  # the same WhatsApp id: once
    assert inbox.add("b", msg("m1"), 101.0) is not None  # another session's inbox: its own
    for i in range(2, 6):
        assert inbox.add("a", msg(f"m{i}"), 100.0 + i).seq == i  # type: ignore[union-attr]
    page = inbox.page("a", after=0, limit=2)
    assert [m.seq for m in page.messages] == [1, 2] and page.next == 2
    page = inbox.page("a", after=page.next, limit=100)
    assert [m.id for m in page.messages] == ["m3", "m4", "m5"] and page.next == 5
    assert inbox.page("a", after=5, limit=100).messages == [] and inbox.page("a", 5, 100).next == 5
    assert inbox.page("nobody", after=0, limit=10).messages == []
    media = inbox.add("a", PageMessage("m6", "c@c.us", "c@c.us", False, "image", "a caption", 0, 1, "image/jpeg", 1234), 0)
    assert media is not None and media.media is not None and media.media.mimetype == "image/jpeg"
    assert inbox.page("a", 5, 1).messages[0].media == media.media
    inbox.close()
    again = Inbox(tmp_path / "inbox.sqlite3")  # reopened: the same rows, the sequence goes on
    assert [m.seq for m in again.page("a", 0, 100).messages] == [1, 2, 3, 4, 5, 6]
    assert again.add("a", msg("m7"), 200.0).seq == 7  # type: ignore[union-attr]


def test_acks_move_forward_only() -> None:
    inbox = Inbox(None)
    inbox.add("a", msg("m1", from_me=True, ack=0), 0)
    assert inbox.set_ack("a", "m1", 1).ack == 1  # type: ignore[union-attr]
    assert inbox.set_ack("a", "m1", 3).ack == 3  # type: ignore[union-attr]
    assert inbox.set_ack("a", "m1", 2) is None  # late news
    assert inbox.set_ack("a", "m1", -1) is None  # an error after read is no error
    assert inbox.set_ack("a", "unknown", 2) is None
    inbox.add("a", msg("m2", from_me=True, ack=1), 0)
    assert inbox.set_ack("a", "m2", -1).ack == -1  # type: ignore[union-attr]
    assert [m.ack for m in inbox.page("a", 0, 10).messages] == [3, -1]


def test_retention_and_forget_never_reuse_a_seq() -> None:
    inbox = Inbox(None)
    for i in range(1, 11):
        inbox.add("a", msg(f"m{i}"), float(i))
    inbox.add("b", msg("b1"), 1.0)
    assert inbox.prune(older_than=None, keep=3) == 7  # a: the newest 3 stay; b: its one
    assert [m.seq for m in inbox.page("a", 0, 100).messages] == [8, 9, 10]
    assert inbox.prune(older_than=9.5, keep=None) == 3  # m8, m9 and b1 are older
    assert [m.seq for m in inbox.page("a", 0, 100).messages] == [10]
    assert inbox.add("a", msg("m11"), 20.0).seq == 11  # type: ignore[union-attr]
    inbox.forget("a")
    assert inbox.page("a", 0, 100).messages == [] and inbox.add("a", msg("x"), 0).seq == 1  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- decisions and parsing


def test_gate_and_pace() -> None:
    assert gate(State.CONNECTED) is Gate.GO
    assert {s for s in State if gate(s) is Gate.WAIT} == {State.STARTING, State.AUTHENTICATING, State.RECONNECTING}
    pacer = Pacer(1.5)
    assert pacer.delay("a", 10.0) == 0
    pacer.sent("a", 10.0)
    assert pacer.delay("a", 10.5) == 1.0 and pacer.delay("b", 10.5) == 0 and pacer.delay("a", 12) == 0
    assert Pacer(0).delay("a", 0) == 0


@pytest.mark.parametrize("to", ["+12025550111", "12025550111@s.whatsapp.net", "1" * 16, "abc", "", "1@g.us", "12025550111\n"])
def test_chat_id_refuses_what_is_not_a_recipient(to: str) -> None:
    with pytest.raises(InvalidArgument):
        chat_id(to)


def test_chat_id() -> None:
    assert chat_id("12025550111") == "12025550111@c.us"
    assert chat_id("12025550111@c.us") == "12025550111@c.us"
    assert chat_id("120363020000000-1234@g.us") == "120363020000000-1234@g.us"


def test_parse_report_keeps_only_well_formed_items() -> None:
    good = {"kind": "msg", "id": "m1", "chat": "c@c.us", "sender": "c@c.us", "from_me": False, "type": "chat",
            "text": "x" * (MAX_TEXT + 10), "at": 1.7e9, "ack": 9}
    items = [good, {"kind": "ack", "id": "m1", "ack": -5}, {"kind": "ack", "id": "m1", "ack": "3"}, "junk", None,
             {"kind": "msg", "id": "", "chat": "c"}, {"kind": "msg", "id": "m2", "type": "chat"},
             {"kind": "other", "id": "m3"}, {"kind": "msg", "id": ["m"], "chat": "c", "type": "chat"}]
    out = parse_report(json.dumps(items))
    assert len(out) == 2
    first, ack = out
    assert isinstance(first, PageMessage) and len(first.text) == MAX_TEXT and first.ack == 4 and first.at == 1_700_000_000
    assert ack == AckChanged("m1", -1)
    for raw in ("not json", "{}", "null", '"x"', None):
        assert parse_report(raw) == []


# ---------------------------------------------------------------------------- the simulator's conversations


def test_sim_chats_deliver_send_and_ack() -> None:
    chats = Chats("15550000001")
    for bad in ("+1202", "12", "abc"):
        with pytest.raises(BadRequest):
            chats.incoming(bad, "x", 0)
    with pytest.raises(BadRequest):
        chats.incoming("12025550111", "", 0)
    m = chats.incoming("12025550111", "hello", 1000.0)
    assert m.chat == "12025550111@c.us" and chats.view()["pending"] == [m.json()]
    assert chats.received(["unknown"]) == 0 and chats.received([m.id]) == 1 and chats.view()["pending"] == []
    with pytest.raises(BadRequest):
        chats.send("3EB0AAAAAAAAAAAAAAAA", "12025550111", "x", 0, 0, 1)  # not a chat id
    sent = chats.send("3EB0AAAAAAAAAAAAAAAA", "12025550111@c.us", "hi", 1000, now=5.0, delay=0.5)
    assert chats.send("3EB0AAAAAAAAAAAAAAAA", "12025550111@c.us", "hi", 1000, now=6.0, delay=0.5) is sent
    assert sent.ack == 1 and chats.next_deadline() == 5.5
    assert not chats.advance(5.4) and chats.advance(5.5) and sent.ack == 2 and chats.next_deadline() is None
    assert chats.read() == 1 and chats.view()["acks"] == {sent.id: 3} and chats.read() == 0


# ---------------------------------------------------------------------------- Messaging on the scripted driver


async def test_send_waits_for_the_session_paces_and_is_idempotent(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(send_min_interval=2.0, send_wait=30.0) as (manager, driver):
        messaging = Messaging(manager.config, manager, Inbox(None), wall_clock=lambda: 1_780_000_000.0)
        with pytest.raises(NotFound):
            await messaging.send_text("a", "12025550111", "x")
        driver.authed.add("a")  # a saved login: starting, authenticating, connected by itself
        await manager.connect("a")
        sub, _ = manager.subscribe("a", [], messages=True)
        plain, _ = manager.subscribe("a", [])  # as every client older than messages watches
        # Sent while starting: waits, then goes out once the session is connected.
        await messaging.send_text("a", "12025550111", "early", "k1")
        assert [t.to_state for t in manager.history("a")] == [State.STARTING, State.AUTHENTICATING, State.CONNECTED]
        browser = driver.live["a"]
        assert list(browser.sent.values()) == ["early"]
        started = trio.current_time()
        again = await messaging.send_text("a", "12025550111", "early", "k1")
        assert trio.current_time() == started and list(browser.sent.values()) == ["early"]  # no send, no pace
        with pytest.raises(InvalidArgument):
            await messaging.send_text("a", "12025550111", "other text", "k1")
        second = await messaging.send_text("a", "12025550111@c.us", "second")
        assert trio.current_time() - started >= 2.0  # the pace
        assert second.id != again.id and list(browser.sent.values()) == ["early", "second"]
        # What the page reported went to the inbox, then to the watchers.
        page = messaging.messages("a", 0, 10)
        assert [(m.seq, m.text, m.from_me) for m in page.messages] == [(1, "early", True), (2, "second", True)]
        events = []
        while len(events) < 2:
            item = await sub.next()
            if isinstance(item, MessageReceived | MessageAck):
                events.append(item)
        assert [e.message.seq for e in events] == [1, 2]  # type: ignore[union-attr]
        manager.unsubscribe(sub)
        # A watch that did not ask for messages got the session's events and none of the inbox's.
        seen = []
        with trio.move_on_after(1):
            while not isinstance(item := await plain.next(), StreamEnd):
                seen.append(item)
        assert any(isinstance(e, StateChanged) for e in seen)
        assert not any(isinstance(e, MessageReceived | MessageAck) for e in seen)
        manager.unsubscribe(plain)
        browser.deliver(AckChanged(second.id, 3))
        assert messaging.messages("a", 1, 10).messages[0].ack == 3
        stored = sum(s.value for s in manager.metrics.samples() if s.name == "wa_messages_stored_total"
                     and s.labels == {"direction": "out"})
        assert stored == 2


async def test_an_inbox_that_cannot_write_is_counted_and_announces_nothing(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_manager() as (manager, driver):
        inbox = Inbox(None)
        messaging = Messaging(manager.config, manager, inbox)
        await manager.connect("a")
        sub, _ = manager.subscribe("a", [], messages=True)

        def full(*args: object) -> None:
            raise InboxError("cannot write the inbox: database or disk is full")

        monkeypatch.setattr(inbox, "add", full)
        with structlog.testing.capture_logs() as logs:
            messaging.record("a", msg("m1", text="a secret body"))
        assert [e["event"] for e in logs] == ["inbox_write_failed"] and "a secret body" not in str(logs)
        assert sum(s.value for s in manager.metrics.samples() if s.name == "wa_inbox_errors_total") == 1
        with trio.move_on_after(1):
            while not isinstance(item := await sub.next(), StreamEnd):
                assert not isinstance(item, MessageReceived)
        manager.unsubscribe(sub)


async def test_send_wait_runs_out_and_stopped_sessions_refuse_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(send_wait=5.0, scripted={"launch_delay": 60.0}) as (manager, driver):
        messaging = Messaging(manager.config, manager, Inbox(None))
        await manager.connect("slow")  # starting for 60 s
        started = trio.current_time()
        with pytest.raises(Unavailable, match="within 5 s") as info:
            await messaging.send_text("slow", "12025550111", "x")
        assert trio.current_time() - started == pytest.approx(5.0) and info.value.details["state"] == "starting"
        await manager.disconnect("slow")
        started = trio.current_time()
        with pytest.raises(Unavailable, match="stopped"):
            await messaging.send_text("slow", "12025550111", "x")
        assert trio.current_time() == started


async def test_retention_loop_and_forget(autojump_clock: trio.testing.MockClock) -> None:
    now = [1_000_000.0]
    async with open_manager(message_retention={"max_age": 100.0, "max_count": 2, "interval": 10.0}) as (manager, _):
        messaging = Messaging(manager.config, manager, Inbox(None), wall_clock=lambda: now[0])
        for i in range(3):
            messaging.record("a", msg(f"m{i}"))
        messaging.record("a", msg("m0"))  # again: nothing new
        async with trio.open_nursery() as nursery:
            nursery.start_soon(messaging.retention_loop)
            await trio.sleep(1)
            assert [m.id for m in messaging.inbox.page("a", 0, 10).messages] == ["m1", "m2"]
            now[0] += 101
            await trio.sleep(10)
            assert messaging.inbox.page("a", 0, 10).messages == []
            nursery.cancel_scope.cancel()
        messaging.record("a", msg("m3"))
        messaging.forget("a")
        assert messaging.inbox.page("a", 0, 10).messages == []
