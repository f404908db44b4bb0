"""Messages through real Chromium on the simulator's module layer: sends reach the
phone side's outbox with their acks, incoming messages reach the durable inbox and
the watchers, idempotent retries, waiting for a reconnect, and restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from wa_daemon import AsyncClient, Client, InvalidArgument, Message, MessageAck, MessageReceived, State, Unavailable

from .helpers import DaemonProcess, needs_chromium
from .test_chromium import link, reach, rig
from .test_recovery import _link, _wait, simulator

pytestmark = needs_chromium

PEER = "12025550111"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ping_pong.py"


async def events_until(wa: AsyncClient, sid: str, done: Any, timeout: float = 20) -> list[Any]:
    """Watch ``sid`` until ``done(events)`` holds."""
    seen: list[Any] = []
    async with wa.watch(sid, timeout=timeout, messages=True) as events:
        async for ev in events:
            seen.append(ev)
            if done(seen):
                break
    assert done(seen), seen
    return seen


async def inbox(wa: AsyncClient, sid: str, after: int = 0) -> list[Message]:
    out: list[Message] = []
    while True:
        page = await wa.messages(sid, after=after, limit=1000)
        out += page.messages
        if page.next == after:
            return out
        after = page.next


async def wait_inbox(wa: AsyncClient, sid: str, check: Any, timeout: float = 15) -> list[Message]:
    with trio.fail_after(timeout):
        while True:
            msgs = await inbox(wa, sid)
            if check(msgs):
                return msgs
            await trio.sleep(0.05)


def acks_of(events: list[Any], mid: str) -> list[int]:
    return [e.ack for e in events if isinstance(e, MessageAck) and e.id == mid]


async def test_send_reaches_the_outbox_and_acks_flow_back(sock_dir: Path) -> None:
    with trio.fail_after(90):
        async with rig(sock_dir, send_min_interval=0) as r:
            await link(r, "a")
            device = r.device_of("a")
            async with trio.open_nursery() as nursery:
                seen: list[Any] = []

                async def watch() -> None:
                    seen.extend(await events_until(r.wa, "a", lambda evs: 3 in acks_of(evs, sent.id)))

                sent = await r.wa.send_text("a", PEER, "hello from the daemon")
                nursery.start_soon(watch)
                assert sent.to == PEER + "@c.us" and sent.id.startswith("true_" + PEER + "@c.us_")
                assert sent.ack >= 1 and sent.session == "a"
                outbox = r.engine.outbox(device)
                assert [(o["id"], o["to"], o["text"]) for o in outbox] == [(sent.id, sent.to, "hello from the daemon")]
                # The recipient's phone gets it (ack 2 by itself), then reads it (ack 3).
                await wait_inbox(r.wa, "a", lambda m: m and m[0].ack == 2)
                r.engine.read(device)
            assert r.engine.outbox(device)[0]["ack"] == 3
            mine = [e.message for e in seen if isinstance(e, MessageReceived)]
            assert acks_of(seen, sent.id)[-1] == 3 and sorted(set(acks_of(seen, sent.id))) == acks_of(seen, sent.id)
            msgs = await inbox(r.wa, "a")
            assert len(msgs) == 1 and msgs[0].id == sent.id and msgs[0].from_me and msgs[0].ack == 3
            assert msgs[0].text == "hello from the daemon" and msgs[0].chat == sent.to and msgs[0].seq == 1
            assert mine == [] or mine[0].id == sent.id  # the watch may have opened after it was stored


async def test_incoming_message_reaches_the_watch_and_the_inbox(sock_dir: Path) -> None:
    with trio.fail_after(90):
        async with rig(sock_dir) as r:
            await link(r, "a")
            device = r.device_of("a")
            async with r.wa.watch("a", timeout=20, messages=True) as events:
                incoming = r.engine.incoming(device, PEER, "ping")
                async for ev in events:
                    if isinstance(ev, MessageReceived):
                        break
            msg = ev.message
            assert (msg.id, msg.chat, msg.sender, msg.from_me, msg.type, msg.text) == (
                incoming.id, PEER + "@c.us", PEER + "@c.us", False, "chat", "ping"
            )
            assert msg.seq == 1 and ev.session == "a"
            assert await inbox(r.wa, "a") == [msg]
            page = await r.wa.messages("a", after=1)
            assert page.messages == [] and page.next == 1


async def test_idempotent_retry_hostile_input_and_a_stopped_session(sock_dir: Path) -> None:
    with trio.fail_after(90):
        async with rig(sock_dir, send_min_interval=0) as r:
            await link(r, "a")
            device = r.device_of("a")
            first = await r.wa.send_text("a", PEER, "once", idempotency_key="job-1")
            again = await r.wa.send_text("a", PEER, "once", idempotency_key="job-1")
            assert again == first
            with pytest.raises(InvalidArgument, match="another message"):
                await r.wa.send_text("a", PEER, "twice", idempotency_key="job-1")
            other = await r.wa.send_text("a", PEER + "@c.us", "once", idempotency_key="job-2")
            assert other.id != first.id
            assert [o["id"] for o in r.engine.outbox(device)] == [first.id, other.id]
            # Hostile values: refused before anything is sent, nothing stored.
            for to in ("+12025550111", "abc", "1" * 16, "123", f"{PEER}@s.whatsapp.net", f"{PEER}@c.us\n", ""):
                with pytest.raises(InvalidArgument):
                    await r.wa.send_text("a", to, "x")
            for text in ("", "a" * 65537, "nul\x00byte"):
                with pytest.raises(InvalidArgument):
                    await r.wa.send_text("a", PEER, text)
            for key in ("", "has space", "k" * 129, "ünïcode"):
                with pytest.raises(InvalidArgument):
                    await r.wa.send_text("a", PEER, "x", idempotency_key=key)
            for after, limit in ((-1, 10), (2**63, 10), (0, 0), (0, 1001)):
                with pytest.raises(InvalidArgument):
                    await r.wa.messages("a", after=after, limit=limit)
            with pytest.raises(InvalidArgument):
                await r.wa.messages("../../etc", after=0)
            assert len(r.engine.outbox(device)) == 2
            assert [m.id for m in await inbox(r.wa, "a")] == [first.id, other.id]
            # A stopped session does not wait: unavailable at once.
            await r.wa.disconnect("a")
            started = trio.current_time()
            with pytest.raises(Unavailable, match="stopped"):
                await r.wa.send_text("a", PEER, "to nobody")
            assert trio.current_time() - started < 1
            assert len(r.engine.outbox(device)) == 2


async def test_browser_killed_send_waits_and_missed_messages_arrive_once(sock_dir: Path) -> None:
    with trio.fail_after(120):
        async with rig(sock_dir, send_min_interval=0, reconnect_base_delay=0.5, reconnect_jitter=0) as r:
            await link(r, "a")
            device = r.device_of("a")
            before = r.engine.incoming(device, PEER, "before")
            await wait_inbox(r.wa, "a", lambda m: len(m) == 1)
            os.kill(r.browser("a").pid, signal.SIGKILL)
            await reach(r.wa, "a", "reconnecting")
            missed = [r.engine.incoming(device, PEER, f"while down {i}") for i in range(3)]
            # A send now waits for the reconnect (send_wait), then goes out.
            sent = await r.wa.send_text("a", PEER, "after the crash")
            assert (await r.wa.status("a")).state == State.CONNECTED
            msgs = await wait_inbox(r.wa, "a", lambda m: len(m) == 5)
            await trio.sleep(0.5)  # nothing more comes: no message twice
            msgs = await inbox(r.wa, "a")
            assert sorted(m.id for m in msgs) == sorted([before.id, *(m.id for m in missed), sent.id])
            assert [m.seq for m in msgs] == [1, 2, 3, 4, 5]
            assert [m.text for m in msgs if not m.from_me][1:] == [f"while down {i}" for i in range(3)]
            assert [o["text"] for o in r.engine.outbox(device)] == ["after the crash"]


def _sim_post(sim: str, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        sim + path, data=json.dumps(body).encode(), method="POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def _sim_get(sim: str, path: str) -> Any:
    with urllib.request.urlopen(sim + path, timeout=10) as resp:
        return json.load(resp)


def test_daemon_sigkill_keeps_the_inbox_cursors_and_idempotency(sock_dir: Path) -> None:
    state = sock_dir / "state"
    with simulator() as sim:
        args = ("--driver", "chromium", "--state-dir", str(state), "--wa-url", sim + "/",
                "--set", "send_min_interval=0", "--set", "connect_min_interval=0")
        first = DaemonProcess(sock_dir / "d.sock", *args)
        try:
            first.wait_ready(30)
            with Client(first.sock, timeout=30) as wa:
                _link(wa, sim, "a")
                device = _sim_get(sim, "/__sim__/devices")[0]["id"]
                for i in range(3):
                    _sim_post(sim, f"/__sim__/devices/{device}/incoming", {"from": PEER, "text": f"m{i}"})
                sent = wa.send_text("a", PEER, "keyed", idempotency_key="k1")
                _wait(lambda: len(wa.messages("a").messages) == 4, 15, "4 messages stored")
                page = wa.messages("a", after=0, limit=2)
                assert [m.seq for m in page.messages] == [1, 2] and page.next == 2
                before = wa.messages("a").messages
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
        finally:
            first.stop()
        assert (state / "inbox.sqlite3").stat().st_mode & 0o777 == 0o600
        # While no daemon runs, the phone side keeps writing: delivered on the next load. (The
        # killed browser's renderer outlives it by a moment; what it takes then is gone with it.)
        _wait(lambda: not any(p["open"] for p in _sim_get(sim, "/__sim__/pages")), 10, "the page gone")
        _sim_post(sim, f"/__sim__/devices/{device}/incoming", {"from": PEER, "text": "while dead"})
        second = DaemonProcess(sock_dir / "d.sock", *args)
        try:
            second.wait_ready(30)
            with Client(second.sock, timeout=30) as wa:
                _wait(lambda: wa.status("a").state == State.CONNECTED, 60, "a restored")
                _wait(lambda: len(wa.messages("a").messages) == 5, 20, "the missed message")
                after = wa.messages("a", after=2)  # the cursor read before the kill goes on
                assert [m.seq for m in after.messages] == [3, 4, 5] and after.next == 5
                assert after.messages[:2] == before[2:]
                assert after.messages[2].text == "while dead" and not after.messages[2].from_me
                assert wa.send_text("a", PEER, "keyed", idempotency_key="k1") == sent
                time.sleep(0.5)
                msgs = wa.messages("a").messages
                assert len({m.id for m in msgs}) == len(msgs) == 5
            assert [o["text"] for o in _sim_get(sim, f"/__sim__/devices/{device}/outbox")] == ["keyed"]
        finally:
            assert second.stop() == 0


async def test_the_ping_pong_example_answers_through_a_session(sock_dir: Path, tmp_path: Path) -> None:
    cursor = tmp_path / "a.cursor"
    with trio.fail_after(90):
        async with rig(sock_dir, send_min_interval=0) as r:
            await link(r, "a")
            device = r.device_of("a")
            r.engine.incoming(device, PEER, "hello")  # not a ping: read, not answered
            r.engine.incoming(device, PEER, "ping")  # in the backlog when the service starts
            await wait_inbox(r.wa, "a", lambda m: len(m) == 2)
            cmd = [sys.executable, str(EXAMPLE), "a", "--socket", str(r.daemon.socket_path),
                   "--cursor-file", str(cursor), "--exit-after", "2"]
            async with trio.open_nursery() as nursery:
                proc = await nursery.start(partial(trio.run_process, cmd, stdout=subprocess.PIPE, check=False))
                with trio.fail_after(30):
                    while not r.engine.outbox(device):
                        await trio.sleep(0.05)
                r.engine.incoming(device, "12025550122", " PING ")  # a live one, from someone else
                out = b""
                while chunk := await proc.stdout.receive_some():
                    out += chunk
            assert proc.returncode == 0, out
            assert [(o["to"], o["text"]) for o in r.engine.outbox(device)] == [
                (PEER + "@c.us", "pong"), ("12025550122@c.us", "pong")]
            assert out.decode().count("answered") == 2
            assert int(cursor.read_text()) == 4  # hello, ping, its pong, PING: it exits after answering
