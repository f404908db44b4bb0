"""The metrics listeners of a real daemon (docs/security.md): ``metrics_listen``
serves the daemon-wide aggregates only unless ``metrics_listen_sessions``;
``metrics_socket`` answers each peer, scraping as a REAL other uid (as
test_auth.py runs its clients), as the RPC ``metrics`` method answers it."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from pathlib import Path

import pytest
import trio

from wa_daemon import State
from wa_daemon.daemon.app import Daemon
from wa_daemon.daemon.monitor import GroupUsage

from .helpers import running_daemon, wait_state
from .test_auth import FAST, ClientEnv, Users, _open_socket_dir, as_user, client_env, users  # noqa: F401

SESSION_SERIES = ("wa_session_memory_pss_bytes", "wa_session_cpu_seconds_total", "wa_session_browser_processes")


async def http_get(stream: trio.abc.Stream, target: str) -> tuple[int, str]:
    async with stream:
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: wa-daemon\r\n\r\n".encode())
        response = b""
        while data := await stream.receive_some():
            response += data
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def per_session(text: str) -> set[tuple[str, str]]:
    """(family, session) of every per-session series in an exposition."""
    return set(re.findall(r'^(\w+)\{session="([^"]+)"\}', text, re.M))


def every(*sessions: str) -> set[tuple[str, str]]:
    return {(name, sid) for name in SESSION_SERIES for sid in sessions}


def aggregates_in(text: str) -> bool:
    return all(name in text for name in ("wa_sessions{", "wa_connect_attempts_total", "process_resident_memory_bytes"))


async def two_measured_sessions(d: Daemon) -> None:
    """Sessions a-s and b-s (created here unless they exist), waiting for a QR and measured."""
    m = d.manager
    assert m is not None and d.monitor is not None
    for sid in ("a-s", "b-s"):
        if m.peek(sid) is None:
            await m.connect(sid)
        await wait_state(m, sid, State.WAITING_QR, timeout=10)
    # Scripted sessions have no Chromium to measure: stand in for the sampler
    # (its first sample ran at start-up; the next is an hour away).
    d.monitor.resources.usage = {sid: GroupUsage(1 << 20, 1.5, 3) for sid in ("a-s", "b-s")}


# ---------------------------------------------------------------------------- metrics_listen (TCP)


async def test_tcp_listener_serves_aggregates_only_by_default(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir, metrics_listen="127.0.0.1:0", resource_sample_interval=3600) as d:
            await two_measured_sessions(d)
            host, port = d.metrics_addresses[0].rsplit(":", 1)
            status, text = await http_get(await trio.open_tcp_stream(host, int(port)), "/metrics")
            assert status == 200 and aggregates_in(text)
            assert 'wa_sessions{state="waiting_qr"} 2.0' in text
            assert per_session(text) == set() and 'session="' not in text
            # ... what an admin reads over RPC has them: they exist, the listener left them out.
            assert d.manager is not None
            assert per_session(d.manager.metrics.exposition()) == every("a-s", "b-s")

            # A reload that turns metrics_listen_sessions on applies at the next scrape.
            d.manager.reconfigure(d.manager.config.replace(metrics_listen_sessions=True))
            status, text = await http_get(await trio.open_tcp_stream(host, int(port)), "/metrics")
            assert status == 200 and per_session(text) == every("a-s", "b-s") and aggregates_in(text)


async def test_tcp_listener_with_metrics_listen_sessions(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(
            sock_dir, metrics_listen="127.0.0.1:0", metrics_listen_sessions=True, resource_sample_interval=3600
        ) as d:
            await two_measured_sessions(d)
            host, port = d.metrics_addresses[0].rsplit(":", 1)
            status, text = await http_get(await trio.open_tcp_stream(host, int(port)), "/metrics")
            assert status == 200 and per_session(text) == every("a-s", "b-s") and aggregates_in(text)


# ---------------------------------------------------------------------------- metrics_socket (Unix)


HTTP_RUNNER = r'''
"""GET each target over the Unix socket as whoever this process is; one JSON line."""
import json, socket, sys

spec = json.loads(sys.argv[1])
out = []
for target in spec["ops"]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    try:
        s.connect(spec["socket"])
    except OSError as e:
        out.append({"error": e.strerror})
        continue
    s.sendall(("GET %s HTTP/1.1\r\nHost: wa-daemon\r\n\r\n" % target).encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    out.append({"status": int(head.split()[1]), "body": body.decode()})
print(json.dumps(out), flush=True)
'''


def http_client(env: ClientEnv, sock_dir: Path) -> ClientEnv:
    """``env`` running HTTP_RUNNER (stdlib only) instead of the RPC runner."""
    runner = sock_dir / "http_runner.py"
    runner.write_text(HTTP_RUNNER)
    runner.chmod(0o644)
    return dataclasses.replace(env, runner=runner)


@pytest.mark.slow
async def test_real_uids_metrics_socket_is_filtered_like_the_metrics_method(
    sock_dir: Path, users: Users, client_env: ClientEnv  # noqa: F811
) -> None:
    _open_socket_dir(sock_dir)
    a, b, c = users.a, users.b, users.c
    http = http_client(client_env, sock_dir)
    metrics_sock = sock_dir / "metrics.sock"
    with trio.fail_after(60):
        async with running_daemon(
            sock_dir, scripted=FAST, connect_min_interval=0, resource_sample_interval=3600,
            metrics_socket=str(metrics_sock), admin_group=users.admin_group,
        ) as d:
            st = os.stat(metrics_sock)
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666
            d.socket_path.chmod(0o666)
            await as_user(client_env, a, d.socket_path, [["call", "connect", {"session": "a-s"}]])
            await as_user(client_env, b, d.socket_path, [["call", "connect", {"session": "b-s"}]])
            await two_measured_sessions(d)

            # Each plain uid: its own sessions' series and the aggregates, nothing of the other's.
            for user, mine in ((a, "a-s"), (b, "b-s")):
                res = await as_user(http, user, metrics_sock, ["/metrics", "/health"])
                assert [r["status"] for r in res] == [200, 200], res
                text = res[0]["body"]
                assert per_session(text) == every(mine) and aggregates_in(text), text
                assert "wa_sessions{" in text and f'session="{mine}"' in text
                # ... exactly the series the RPC `metrics` method gives the same uid.
                rpc = await as_user(client_env, user, d.socket_path, [["call", "metrics", {"prometheus": True}]])
                assert per_session(rpc[0]["ok"]["prometheus"]) == per_session(text)

            # A member of admin_group (by the member list): everything.
            res = await as_user(http, c, metrics_sock, ["/metrics"], gid=c.gid)
            assert per_session(res[0]["body"]) == every("a-s", "b-s")
            # The daemon's own uid (root here): everything.
            status, text = await http_get(await trio.open_unix_socket(str(metrics_sock)), "/metrics")
            assert status == 200 and per_session(text) == every("a-s", "b-s") and aggregates_in(text)
        assert not metrics_sock.exists()  # closed and removed with the daemon
