"""wactl send and wactl messages against a real daemon (scripted driver: its page
reports what it sends, as the real page's message collection does)."""

from __future__ import annotations

import signal

from .test_cli import DaemonProcess, auto_daemon, finish, json_lines, read_line, wait_state

__all__ = ["auto_daemon"]  # the fixture, used by name

PEER = "12025550111"


def test_send_then_messages_then_follow(auto_daemon: DaemonProcess) -> None:
    d = auto_daemon
    assert d.wactl("connect", "m").returncode == 0
    wait_state(d, "m", "connected")
    sent = d.wactl("--json", "send", "m", PEER, "hello\nthere", "--idempotency-key", "cli-1")
    assert sent.returncode == 0, sent
    doc = json_lines(sent.stdout)[0]
    assert doc["to"] == PEER + "@c.us" and doc["session"] == "m" and doc["id"].startswith("true_")
    again = d.wactl("send", "m", PEER, "hello\nthere", "--idempotency-key", "cli-1")
    assert again.returncode == 0 and again.stdout.startswith(f"sent {doc['id']} to {PEER}@c.us"), again

    listed = d.wactl("messages", "m")
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == [f"#1 {listed.stdout.split()[1]} -> {PEER}@c.us sent: hello there"]
    assert json_lines(d.wactl("--json", "messages", "m").stdout)[0]["id"] == doc["id"]
    assert d.wactl("messages", "m", "--after", "1").stdout == ""

    follow = d.popen_wactl("--json", "messages", "m", "--follow")
    try:
        assert json_lines(read_line(follow))[0]["seq"] == 1  # the backlog first
        assert d.wactl("send", "m", PEER, "second").returncode == 0
        line = json_lines(read_line(follow))[0]
        assert (line["seq"], line["text"], line["from_me"]) == (2, "second", True)
    finally:
        follow.send_signal(signal.SIGINT)
        code, out, err = finish(follow)
    assert code == 130 and "Traceback" not in err
    assert json_lines(out) == []  # nothing printed twice


def test_send_refusals_exit_with_their_code(auto_daemon: DaemonProcess) -> None:
    d = auto_daemon
    bad = d.wactl("send", "m2", "+1 202", "x")
    assert bad.returncode != 0 and "invalid" in bad.stderr
    assert d.wactl("connect", "m2", "--no-wait").returncode == 0
    assert d.wactl("disconnect", "m2").returncode == 0
    stopped = d.wactl("--json", "send", "m2", PEER, "x")
    assert stopped.returncode != 0 and '"unavailable"' in stopped.stderr, stopped
    assert d.wactl("messages", "m2", "--after", "-1").returncode == 2  # argparse refuses it
