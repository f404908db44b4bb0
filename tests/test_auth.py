"""Trust boundaries (docs/security.md): sessions belong to their creator's uid,
admins see everything, the socket's mode and group are the first gate.

The first half drives the manager and the metrics in-process with a ``caller``;
the second runs clients as REAL other uids: a subprocess dropped with
``setpriv`` to system users created for the test session, with a Debian-Python
venv outside /root that holds only the client library.
"""

from __future__ import annotations

import grp
import importlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog
import trio
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import wa_daemon
from wa_daemon import AsyncClient, State
from wa_daemon.daemon.browser.scripted import ScriptedDriver
from wa_daemon.daemon.monitor import GroupUsage
from wa_daemon.daemon.ops.config import Config, from_mapping
from wa_daemon.daemon.ops.metrics import DaemonMetrics
from wa_daemon.daemon.rpc import access
from wa_daemon.daemon.rpc.access import UNKNOWN, Caller
from wa_daemon.daemon.sessions.manager import SessionManager
from wa_daemon.daemon.sessions.registry import MemoryRegistry, SessionRecord, SqliteRegistry
from wa_daemon.errors import LimitExceeded, NotFound, PermissionDenied

from .helpers import open_manager, require, require_tool, running_daemon, wait_state

A, B = 40001, 40002  # in-process callers' uids (no real users needed)
CA, CB = Caller.user(A), Caller.user(B)


def _peer(uid: int, gid: int) -> access.PeerCredentials:
    return access.PeerCredentials(12345, uid, gid)


@asynccontextmanager
async def bounded_manager(**overrides: Any) -> AsyncIterator[tuple[SessionManager, ScriptedDriver]]:
    """open_manager under an absolute deadline."""
    with trio.fail_after(30):
        async with open_manager(**overrides) as pair:
            yield pair


def sample_value(metrics: DaemonMetrics, name: str, **labels: str) -> float:
    for s in metrics.samples():
        if s.name == name and s.labels == labels:
            return s.value
    return 0.0


# ============================================================================ in-process


async def test_another_uids_session_is_denied_for_every_method() -> None:
    async with bounded_manager(scripted={"launch_delay": 0.01}) as (m, driver):
        await m.connect("a1", owner_uid=A, caller=CA)
        await m.connect("b1", owner_uid=B, caller=CB)
        await m.connect("legacy")  # owner None: admins only
        await wait_state(m, "a1", State.WAITING_QR, timeout=10)
        await wait_state(m, "b1", State.WAITING_QR, timeout=10)

        # The owner may do everything on its session.
        assert m.status("a1", CA).owner_uid == A
        assert m.qr("a1", CA).session == "a1"
        assert m.history("a1", 10, CA)
        sub, snaps = m.subscribe("a1", [], CA)
        m.unsubscribe(sub)
        assert [s.session for s in snaps] == ["a1"]

        for sid in ("b1", "legacy"):
            calls: list[Any] = [
                partial(m.status, sid, CA),
                partial(m.qr, sid, CA),
                partial(m.history, sid, 10, CA),
                partial(m.subscribe, sid, [], CA),
            ]
            for call in calls:
                with pytest.raises(PermissionDenied) as info:
                    call()
                assert info.value.details == {"session": sid}
            for acall in (
                partial(m.connect, sid, owner_uid=A, caller=CA),
                partial(m.disconnect, sid, CA),
                partial(m.logout, sid, CA),
                partial(m.delete, sid, CA),
                partial(m.simulate, sid, "scan", CA),
            ):
                with pytest.raises(PermissionDenied):
                    await acall()
        assert m.peek("b1").state == State.WAITING_QR  # type: ignore[union-attr]  # nothing happened to it

        # An unknown session stays not_found (checked before ownership).
        with pytest.raises(NotFound):
            m.status("nope", CA)
        # Admins (the default caller, ADMIN) see and touch everything.
        assert m.status("b1").session == "b1" and m.status("legacy").owner_uid is None
        await m.simulate("b1", "scan")
        await m.disconnect("legacy")
        # The owner's own mutations work.
        await m.disconnect("a1", CA)
        await m.logout("a1", CA)
        await m.delete("a1", CA)
        assert "a1" not in m.session_ids()


async def test_list_is_filtered_and_cached_per_uid() -> None:
    async with bounded_manager(scripted={"launch_delay": 0.01}) as (m, driver):
        for sid, uid in (("a1", A), ("a2", A), ("b1", B)):
            await m.connect(sid, owner_uid=uid, caller=Caller.user(uid))
        await m.connect("x")

        def ids(raw: msgspec.Raw) -> list[str]:
            return [s["session"] for s in msgspec.msgpack.decode(raw)["sessions"]]

        for sid in ("a1", "a2", "b1", "x"):  # the state filter below needs them all showing a QR
            await wait_state(m, sid, State.WAITING_QR, timeout=10)
        assert ids(m.list_raw(None, CA)) == ["a1", "a2"]
        assert ids(m.list_raw(None, CB)) == ["b1"]
        assert ids(m.list_raw(None, Caller.user(99))) == []
        assert ids(m.list_raw()) == ["a1", "a2", "b1", "x"]  # admin: all
        assert ids(m.list_raw([State.WAITING_QR], CB)) == ["b1"]
        assert [s.session for s in m.list(caller=CA)] == ["a1", "a2"]
        # Cached: the same bytes while nothing changed, rebuilt after a change.
        first = m.list_raw(None, CA)
        assert m.list_raw(None, CA) is first
        await m.disconnect("a2", CA)
        again = m.list_raw(None, CA)
        assert again is not first
        states = {s["session"]: s["state"] for s in msgspec.msgpack.decode(again)["sessions"]}
        assert states["a2"] == "stopped"
        await m.delete("a2", CA)
        assert ids(m.list_raw(None, CA)) == ["a1"]


async def test_watch_of_all_sessions_delivers_only_the_callers() -> None:
    async with bounded_manager(scripted={"launch_delay": 0.01}) as (m, driver):
        await m.connect("a1", owner_uid=A, caller=CA)
        await m.connect("b1", owner_uid=B, caller=CB)
        await wait_state(m, "a1", State.WAITING_QR, timeout=10)
        await wait_state(m, "b1", State.WAITING_QR, timeout=10)
        sub_a, snaps = m.subscribe(None, [], CA)
        sub_all, all_snaps = m.subscribe(None, [])
        try:
            assert [s.session for s in snaps] == ["a1"]
            assert [s.session for s in all_snaps] == ["a1", "b1"]
            await m.disconnect("b1")
            await m.disconnect("a1")
            seen: set[str] = set()
            with trio.move_on_after(1):
                while True:
                    ev = await sub_a.next()
                    seen.add(ev.status.session)  # type: ignore[union-attr]
            assert seen == {"a1"}
            seen_all: set[str] = set()
            with trio.move_on_after(0.5):
                while True:
                    ev = await sub_all.next()
                    seen_all.add(ev.status.session)  # type: ignore[union-attr]
            assert seen_all == {"a1", "b1"}
        finally:
            m.unsubscribe(sub_a)
            m.unsubscribe(sub_all)


class _PerSession(Collector):
    def __init__(self, sessions: Iterable[str]) -> None:
        self.sessions = list(sessions)

    def collect(self) -> Iterable[Metric]:
        pss = GaugeMetricFamily("wa_session_memory_pss_bytes", "pss", labels=["session"])
        for i, sid in enumerate(self.sessions):
            pss.add_metric([sid], 1000 + i)
        yield pss


def test_metrics_drop_per_session_series_of_invisible_sessions() -> None:
    metrics = DaemonMetrics()
    metrics.registry.register(_PerSession(["a1", "b1"]))
    metrics.connect_attempts.labels("started").inc()

    def visible(sid: str) -> bool:
        return sid == "a1"

    mine = metrics.samples(visible)
    pss = [s.labels["session"] for s in mine if s.name == "wa_session_memory_pss_bytes"]
    assert pss == ["a1"]
    assert any(s.name == "wa_connect_attempts_total" for s in mine)  # aggregates stay
    text = metrics.exposition(visible)
    assert 'wa_session_memory_pss_bytes{session="a1"}' in text and 'session="b1"' not in text
    assert "wa_connect_attempts_total" in text and "# TYPE wa_session_memory_pss_bytes gauge" in text
    everything = metrics.exposition()
    assert 'session="b1"' in everything and 'session="a1"' in everything


async def test_max_sessions_per_uid_refuses_non_admins_only() -> None:
    async with bounded_manager(max_sessions_per_uid=2) as (m, driver):
        await m.connect("a1", owner_uid=A, caller=CA)
        await m.connect("a2", owner_uid=A, caller=CA)
        with structlog.testing.capture_logs() as logs, pytest.raises(LimitExceeded) as info:
            await m.connect("a3", owner_uid=A, caller=CA)
        assert info.value.details == {"limit": 2, "uid": A}
        assert "a3" not in m.session_ids()
        assert [e for e in logs if e["event"] == "limit_refused"] == [
            {"event": "limit_refused", "limit": "sessions_per_uid", "uid": A, "value": 2, "log_level": "warning"}
        ]
        assert sample_value(m.metrics, "wa_limit_refusals_total", limit="sessions_per_uid") == 1
        assert sample_value(m.metrics, "wa_connect_attempts_total", result="limit_exceeded") == 1
        # An existing session of its own is no new session: allowed.
        await m.connect("a1", owner_uid=A, caller=CA)
        # Another uid has its own count; admins are exempt.
        await m.connect("b1", owner_uid=B, caller=CB)
        for sid in ("r1", "r2", "r3"):
            await m.connect(sid, owner_uid=0)
        # Deleting frees a slot.
        await m.delete("a2", CA)
        await m.connect("a3", owner_uid=A, caller=CA)
        # Unset: only max_sessions applies.
        m.reconfigure(m.config.replace(max_sessions_per_uid=None))
        await m.connect("a4", owner_uid=A, caller=CA)


async def test_peer_without_credentials_creates_nothing() -> None:
    async with bounded_manager() as (m, driver):
        with pytest.raises(PermissionDenied):
            await m.connect("x", owner_uid=None, caller=UNKNOWN)
        assert not m.session_ids()


def test_who_is_admin(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Config()
    assert access.is_admin(cfg, _peer(0, 0))
    assert access.is_admin(cfg, _peer(os.geteuid(), 12345))
    assert not access.is_admin(cfg, _peer(A, A))
    assert not access.is_admin(cfg, None)
    assert access.is_admin(from_mapping({"admin_uids": [A]}), _peer(A, A))
    assert access.caller_of(cfg, _peer(A, A)) == CA and access.caller_of(cfg, _peer(0, 0)) is access.ADMIN
    assert access.caller_of(cfg, None) is access.UNKNOWN

    entry = grp.struct_group(("wa-admins", "x", 5555, ["alice"]))
    monkeypatch.setattr(access.grp, "getgrnam", lambda name: entry if name == "wa-admins" else _raise(KeyError))
    monkeypatch.setattr(access.grp, "getgrgid", lambda gid: entry if gid == 5555 else _raise(KeyError))
    users = {A: "alice", B: "bob"}
    monkeypatch.setattr(access.pwd, "getpwuid", lambda uid: _pw(users[uid]) if uid in users else _raise(KeyError))
    for group in ("wa-admins", "5555"):
        cfg = from_mapping({"admin_group": group})
        assert access.is_admin(cfg, _peer(A, A))  # in the member list
        assert not access.is_admin(cfg, _peer(B, B))
        assert access.is_admin(cfg, _peer(B, 5555))  # primary gid
        assert not access.is_admin(cfg, _peer(777, 777))  # no user name
    with structlog.testing.capture_logs() as logs:
        assert not access.is_admin(from_mapping({"admin_group": "nosuch"}), _peer(A, A))
    assert logs[0]["event"] == "admin_group_unknown"
    with pytest.raises(msgspec.ValidationError, match="admin_group"):
        from_mapping({"admin_group": " "})
    with pytest.raises(msgspec.ValidationError):
        from_mapping({"admin_uids": [-1]})


def _raise(exc: type[Exception]) -> Any:
    raise exc()


def _pw(name: str) -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", 1, 1, "", "/", "/bin/false"))


async def test_restored_sessions_keep_their_owner(tmp_path: Path) -> None:
    reg = SqliteRegistry(tmp_path / "registry.sqlite3")
    reg.put(SessionRecord("a1", A, _now(), False))
    reg.put(SessionRecord("old", None, _now(), False))
    reg.close()
    reg = SqliteRegistry(tmp_path / "registry.sqlite3")
    assert {r.session: r.owner_uid for r in reg.load()} == {"a1": A, "old": None}
    async with bounded_manager() as (m, driver):
        m.registry = reg
        m.restore()
        assert m.status("a1", CA).owner_uid == A
        with pytest.raises(PermissionDenied):
            m.status("a1", CB)
        with pytest.raises(PermissionDenied):
            m.status("old", CA)  # no owner: admins only
        assert m.status("old").owner_uid is None
        # A later put (state change) never rewrites the owner.
        await m.connect("a1", owner_uid=A, caller=CA)
        assert {r.session: r.owner_uid for r in reg.load()}["a1"] == A
    reg.close()


def _now() -> Any:
    from wa_daemon.daemon.sessions.session import utcnow

    return utcnow()


async def test_memory_registry_round_trip_keeps_owner() -> None:
    reg = MemoryRegistry()
    reg.put(SessionRecord("b1", B, _now(), False))
    async with bounded_manager() as (m, driver):
        m.registry = reg
        m.restore()
        assert [s.session for s in m.list(caller=CB)] == ["b1"]
        assert m.list(caller=CA) == []


# ============================================================================ real uids


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Users:
    a: User  # plain users
    b: User
    c: User  # in the admin group's member list (its primary group is its own)
    admin_gid: int  # the group named by admin_group
    admin_group: str
    clients_gid: int  # a socket_group
    clients_group: str


USER_NAMES = ("wa-test-a", "wa-test-b", "wa-test-c")
ADMIN_GROUP = "wa-test-admins"
CLIENTS_GROUP = "wa-test-clients"


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def users() -> Iterator[Users]:
    """System users and groups for the test session; created if missing, and
    removed afterwards if this session created them."""
    require(os.geteuid() == 0, "real-uid tests run as root (to create users and drop privileges)")
    require_tool("setpriv", "util-linux")
    for tool in ("useradd", "groupadd", "gpasswd", "userdel", "groupdel"):
        require_tool(tool, "passwd")
    created_users: list[str] = []
    created_groups: list[str] = []
    for group in (ADMIN_GROUP, CLIENTS_GROUP):
        try:
            grp.getgrnam(group)
        except KeyError:
            _run("groupadd", "--system", group)
            created_groups.append(group)
    for name in USER_NAMES:
        try:
            pwd.getpwnam(name)
        except KeyError:
            _run("useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name)
            created_users.append(name)
    if "wa-test-c" not in grp.getgrnam(ADMIN_GROUP).gr_mem:
        _run("gpasswd", "-a", "wa-test-c", ADMIN_GROUP)

    def user(name: str) -> User:
        pw = pwd.getpwnam(name)
        return User(name, pw.pw_uid, pw.pw_gid)

    try:
        yield Users(
            user("wa-test-a"),
            user("wa-test-b"),
            user("wa-test-c"),
            grp.getgrnam(ADMIN_GROUP).gr_gid,
            ADMIN_GROUP,
            grp.getgrnam(CLIENTS_GROUP).gr_gid,
            CLIENTS_GROUP,
        )
    finally:
        for name in created_users:
            subprocess.run(["userdel", name], capture_output=True, timeout=60)
        for group in created_groups:
            subprocess.run(["groupdel", group], capture_output=True, timeout=60)


RUNNER = r'''
"""Run wire calls as whoever this process is; print one JSON line of results."""
import json, os, sys, time
import msgspec
from wa_daemon import Client, WaDaemonError
from wa_daemon.client import _SyncConnection
from wa_daemon.protocol import METHODS, End, Error, Event

def main():
    spec = json.loads(sys.argv[1])
    out, conn = [], None
    for op in spec["ops"]:
        kind = op[0]
        if kind == "client_ping":
            try:
                with Client(spec["socket"], timeout=10) as c:
                    c.ping()
                out.append({"ok": True})
            except WaDaemonError as e:
                out.append({"error": e.code, "type": type(e).__name__, "message": e.message, "details": e.details})
            continue
        if kind == "barrier":  # say so, then wait for the test to create the file
            print("READY", flush=True)
            deadline = time.monotonic() + 30
            while not os.path.exists(op[1]):
                assert time.monotonic() < deadline, "barrier timed out"
                time.sleep(0.02)
            continue
        method, params = op[1], op[2]
        if conn is None:
            conn = _SyncConnection(spec["socket"], 20, "auth-test")
        rid, data = conn.proto.request(method, msgspec.convert(params, METHODS[method].params))
        conn.send(data)
        events = []
        while True:
            msg = conn.receive()
            if getattr(msg, "id", None) != rid:
                continue
            if isinstance(msg, Event):
                events.append(msgspec.msgpack.decode(msg.event))
                if len(events) == 1 and kind == "watch":
                    print("READY", flush=True)
                continue
            break
        if isinstance(msg, Error):
            out.append({"error": msg.code, "message": msg.message, "details": msg.details, "events": events})
        elif isinstance(msg, End):
            out.append({"end": msg.reason, "events": events})
        else:
            out.append({"ok": msgspec.msgpack.decode(msg.result)})
    print(json.dumps(out, default=str), flush=True)

main()
'''


@dataclass(frozen=True)
class ClientEnv:
    python: Path
    src: Path
    runner: Path


@pytest.fixture(scope="session")
def client_env(users: Users) -> Iterator[ClientEnv]:
    """A venv outside /root (other uids cannot traverse it) from Debian's python3,
    holding only the client library: world-readable copies of this checkout's
    ``wa_daemon`` package and of the client's dependencies (msgspec, anyio with
    sniffio, idna and typing_extensions, segno) as installed in the test's own
    environment, so nothing is downloaded a second time. msgspec is compiled: the
    copy needs the same Python minor version, which .ci/setup gives (its venv is
    made by Debian's python3)."""
    require(os.path.exists("/usr/bin/python3"), "Debian's /usr/bin/python3 is missing")
    system_version = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()
    require(
        system_version == [str(n) for n in sys.version_info[:2]],
        f"the tests run on Python {sys.version_info[:2]}, /usr/bin/python3 is {system_version}: "
        "the compiled msgspec cannot be shared",
    )
    root = Path(tempfile.mkdtemp(prefix="wa-auth-"))
    try:
        root.chmod(0o755)
        venv = root / "venv"
        # No pip in it (and no ensurepip needed): a site-packages of nothing but the stdlib.
        result = subprocess.run(
            ["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        src = root / "src"
        shutil.copytree(
            Path(wa_daemon.__file__).parent, src / "wa_daemon", ignore=shutil.ignore_patterns("__pycache__", "daemon", "sim")
        )
        for name in ("msgspec", "anyio", "sniffio", "idna", "typing_extensions", "segno"):
            where = Path(importlib.import_module(name).__file__ or "")
            if where.name == "__init__.py":
                shutil.copytree(where.parent, src / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(where, src / where.name)
        runner = root / "runner.py"
        runner.write_text(RUNNER)
        for path in [root, *root.rglob("*")]:
            mode = path.stat().st_mode
            path.chmod(mode | stat.S_IRGRP | stat.S_IROTH | (stat.S_IXGRP | stat.S_IXOTH if mode & stat.S_IXUSR else 0))
        yield ClientEnv(venv / "bin/python", src, runner)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def as_user(
    env: ClientEnv, user: User, socket: Path, ops: list[Any], *, gid: int | None = None, groups: list[int] = ()  # type: ignore[assignment]
) -> list[dict[str, Any]]:
    """Run ``ops`` over one connection as ``user`` (primary gid ``gid``, else its own)."""
    result = await trio.run_process(
        _setpriv(env, user, socket, ops, gid=gid, groups=groups), capture_stdout=True, capture_stderr=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout.decode().splitlines()[-1])  # type: ignore[no-any-return]


def _setpriv(env: ClientEnv, user: User, socket: Path, ops: list[Any], *, gid: int | None, groups: Iterable[int]) -> list[str]:
    groups = list(groups)
    return [
        "env", "-i", "PATH=/usr/bin:/bin", f"PYTHONPATH={env.src}", "PYTHONDONTWRITEBYTECODE=1", "HOME=/",
        "setpriv", f"--reuid={user.uid}", f"--regid={user.gid if gid is None else gid}",
        f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
        str(env.python), str(env.runner), json.dumps({"socket": str(socket), "ops": ops}),
    ]


async def as_user_interactive(
    env: ClientEnv, user: User, socket: Path, ops: list[Any], during: Callable[[], Awaitable[None]]
) -> list[dict[str, Any]]:
    """Like as_user; once the client prints READY (a barrier op or a watch's first
    event), run ``during`` in the test, then collect the client's results."""
    cmd = _setpriv(env, user, socket, ops, gid=None, groups=())
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(partial(trio.run_process, cmd, stdout=subprocess.PIPE, check=False))
        buf = b""
        while b"READY" not in buf:
            chunk = await proc.stdout.receive_some()
            assert chunk, f"the client exited before READY: {buf!r}"
            buf += chunk
        await during()
        while chunk := await proc.stdout.receive_some():
            buf += chunk
    assert proc.returncode == 0, buf
    return json.loads(buf.decode().splitlines()[-1])  # type: ignore[no-any-return]


def _open_socket_dir(sock_dir: Path) -> None:
    sock_dir.chmod(0o755)  # other uids must traverse it to reach the socket


def codes(results: list[dict[str, Any]]) -> list[str]:
    return [r.get("error", "ok") for r in results]


SESSION_METHODS = [
    ["call", "status", {"session": "{s}"}],
    ["call", "qr", {"session": "{s}"}],
    ["call", "history", {"session": "{s}"}],
    ["call", "messages", {"session": "{s}"}],
    ["call", "simulate", {"session": "{s}", "action": "refresh_qr"}],
    ["watch", "watch", {"session": "{s}", "timeout": 0.5}],
    ["call", "connect", {"session": "{s}"}],
    ["call", "disconnect", {"session": "{s}"}],
    ["call", "logout", {"session": "{s}"}],
    ["call", "delete", {"session": "{s}"}],
]


def on(session: str, ops: list[Any]) -> list[Any]:
    return json.loads(json.dumps(ops).replace("{s}", session))  # type: ignore[no-any-return]


FAST = {"launch_delay": 0.05, "auth_delay": 0.1}


@pytest.mark.slow
async def test_real_uids_owner_may_everything_others_get_permission_denied(
    sock_dir: Path, users: Users, client_env: ClientEnv
) -> None:
    _open_socket_dir(sock_dir)
    with trio.fail_after(60):
        async with running_daemon(sock_dir, scripted=FAST, connect_min_interval=0) as d:
            sock = d.socket_path
            sock.chmod(0o666)  # every uid may connect: only ownership separates them
            a, b = users.a, users.b
            # wa-test-a creates its session and may use every method on it.
            res = await as_user(client_env, a, sock, [
                ["call", "connect", {"session": "a-s"}],
                ["watch", "watch", {"session": "a-s", "until": ["waiting_qr"], "timeout": 10}],
                *on("a-s", SESSION_METHODS[:4]),
                ["call", "list", {}],
                ["call", "connect", {"session": "a-del"}],
                ["call", "delete", {"session": "a-del"}],
            ])
            assert codes(res) == ["ok"] * len(res), res
            assert res[0]["ok"]["owner_uid"] == a.uid
            assert res[1]["end"] == "until"
            assert res[3]["ok"]["session"] == "a-s"  # qr
            assert [s["session"] for s in res[6]["ok"]["sessions"]] == ["a-s"]
            # The rest of the session methods, as the owner: each succeeds.
            res = await as_user(client_env, a, sock, on("a-s", SESSION_METHODS[4:]))
            assert codes(res) == ["ok"] * len(res), res

            await as_user(client_env, a, sock, [["call", "connect", {"session": "a-s"}]])
            await as_user(client_env, b, sock, [["call", "connect", {"session": "b-s"}]])
            # wa-test-b: every method naming a-s is permission_denied, on the wire: its inbox
            # is not readable, and nothing can be sent through it.
            send = ["call", "send_text", {"session": "{s}", "to": "12025550111", "text": "x"}]
            res = await as_user(client_env, b, sock, on("a-s", [*SESSION_METHODS, send]))
            assert codes(res) == ["permission_denied"] * (len(SESSION_METHODS) + 1), res
            assert all(r["details"] == {"session": "a-s"} for r in res)
            assert d.manager.peek("a-s").owner_uid == a.uid  # type: ignore[union-attr]  # untouched
            # ... and a-s does not exist in its list; its own session does.
            res = await as_user(client_env, b, sock, [["call", "list", {}], ["call", "status", {"session": "b-s"}]])
            assert [s["session"] for s in res[0]["ok"]["sessions"]] == ["b-s"]
            assert res[1]["ok"]["owner_uid"] == b.uid
            # A session nobody has is not_found, not permission_denied.
            res = await as_user(client_env, b, sock, [["call", "status", {"session": "nobody-s"}]])
            assert codes(res) == ["not_found"]

            # Root (an admin) sees and touches both.
            async with AsyncClient(sock) as wa:
                assert [s.session for s in await wa.list()] == ["a-s", "b-s"]
                assert (await wa.status("a-s")).owner_uid == a.uid
                await wa.disconnect("b-s")


@pytest.mark.slow
async def test_real_uids_admins_see_everything(sock_dir: Path, users: Users, client_env: ClientEnv) -> None:
    _open_socket_dir(sock_dir)
    a, b, c = users.a, users.b, users.c
    with trio.fail_after(60):
        async with running_daemon(
            sock_dir, scripted=FAST, admin_uids=[b.uid], admin_group=users.admin_group
        ) as d:
            sock = d.socket_path
            sock.chmod(0o666)
            res = await as_user(client_env, a, sock, [["call", "connect", {"session": "a-s"}]])
            assert res[0]["ok"]["owner_uid"] == a.uid
            await as_user(client_env, c, sock, [["call", "connect", {"session": "c-s"}]], gid=c.gid)
            admin_ops = [["call", "list", {}], ["call", "status", {"session": "a-s"}],
                         ["call", "simulate", {"session": "a-s", "action": "offline"}]]
            everyone = ["a-s", "c-s"]
            # admin_uids
            res = await as_user(client_env, b, sock, admin_ops)
            assert codes(res) == ["ok"] * 3 and [s["session"] for s in res[0]["ok"]["sessions"]] == everyone
            # admin_group, by the member list (its primary gid is its own, supplementary groups cleared)
            res = await as_user(client_env, c, sock, admin_ops, gid=c.gid)
            assert codes(res) == ["ok"] * 3 and [s["session"] for s in res[0]["ok"]["sessions"]] == everyone
            # admin_group, by the primary gid of the peer (a is not in the member list)
            res = await as_user(client_env, a, sock, [["call", "status", {"session": "c-s"}]], gid=users.admin_gid)
            assert codes(res) == ["ok"]
            # ... and without it, a is an ordinary user again.
            res = await as_user(client_env, a, sock, [["call", "status", {"session": "c-s"}], ["call", "list", {}]])
            assert codes(res) == ["permission_denied", "ok"]
            assert [s["session"] for s in res[1]["ok"]["sessions"]] == ["a-s"]
            # A reload that drops b from admin_uids applies to b's open connection at its next request.
            barrier = sock_dir / "reloaded"

            async def reload() -> None:
                assert d.manager is not None and d.server is not None
                config = d.manager.config.replace(admin_uids=[])
                d.manager.reconfigure(config)  # what Daemon._reload does
                d.server.reconfigure(config)
                barrier.touch()

            res = await as_user_interactive(
                client_env, b, sock, [*admin_ops[:2], ["barrier", str(barrier)], *admin_ops[:2]], reload
            )
            assert codes(res) == ["ok", "ok", "ok", "permission_denied"]
            assert res[2]["ok"]["sessions"] == []
            # root
            async with AsyncClient(sock) as wa:
                assert [s.session for s in await wa.list()] == everyone


@pytest.mark.slow
async def test_real_uids_watch_all_and_metrics_are_filtered(
    sock_dir: Path, users: Users, client_env: ClientEnv
) -> None:
    _open_socket_dir(sock_dir)
    a, b = users.a, users.b
    with trio.fail_after(60):
        async with running_daemon(
            sock_dir, scripted=FAST, connect_min_interval=0, resource_sample_interval=3600
        ) as d:
            sock = d.socket_path
            sock.chmod(0o666)
            m = d.manager
            assert m is not None and d.monitor is not None
            await as_user(client_env, a, sock, [["call", "connect", {"session": "a-s"}]])
            await as_user(client_env, b, sock, [["call", "connect", {"session": "b-s"}]])
            await wait_state(m, "a-s", State.WAITING_QR, timeout=10)
            await wait_state(m, "b-s", State.WAITING_QR, timeout=10)
            # Scripted sessions have no Chromium to measure: stand in for the sampler
            # (its first sample ran at start-up; the next is an hour away).
            d.monitor.resources.usage = {sid: GroupUsage(1 << 20, 1.5, 3) for sid in ("a-s", "b-s")}

            # b watches every session while both sessions change state.
            async def change_both() -> None:
                await m.disconnect("a-s")
                await m.disconnect("b-s")
                await m.connect("a-s")

            result = (await as_user_interactive(
                client_env, b, sock, [["watch", "watch", {"timeout": 3}]], change_both
            ))[0]
            assert result["end"] == "timeout"
            sessions = [
                (ev.get("status") or {}).get("session") or (ev.get("qr") or {}).get("session") or ev.get("session")
                for ev in result["events"]
            ]
            assert set(sessions) == {"b-s"}, result["events"]
            assert [ev["type"] for ev in result["events"]][:2] == ["snapshot", "state"]

            # metrics: b sees its own per-session series and the daemon-wide aggregates.
            res = await as_user(client_env, b, sock, [["call", "metrics", {"prometheus": True}]])
            samples = res[0]["ok"]["samples"]
            labelled = {(s["name"], s["labels"]["session"]) for s in samples if "session" in s["labels"]}
            assert labelled == {
                (name, "b-s")
                for name in ("wa_session_memory_pss_bytes", "wa_session_cpu_seconds_total", "wa_session_browser_processes")
            }
            names = {s["name"] for s in samples}
            assert {"wa_sessions", "wa_rpc_duration_seconds_count", "wa_connect_attempts_total"} <= names
            text = res[0]["ok"]["prometheus"]
            assert 'session="b-s"' in text and 'session="a-s"' not in text and "wa_sessions{" in text
            async with AsyncClient(sock) as wa:
                mine = {s.labels["session"] for s in (await wa.metrics()).samples if "session" in s.labels}
                assert mine == {"a-s", "b-s"}


@pytest.mark.slow
async def test_real_uids_per_uid_session_limit(sock_dir: Path, users: Users, client_env: ClientEnv) -> None:
    _open_socket_dir(sock_dir)
    a, b = users.a, users.b
    with trio.fail_after(60):
        async with running_daemon(sock_dir, scripted=FAST, max_sessions_per_uid=1) as d:
            sock = d.socket_path
            sock.chmod(0o666)
            res = await as_user(client_env, a, sock, [
                ["call", "connect", {"session": "a-1"}],
                ["call", "connect", {"session": "a-2"}],
                ["call", "connect", {"session": "a-1"}],
            ])
            assert codes(res) == ["ok", "limit_exceeded", "ok"]
            assert res[1]["details"] == {"limit": 1, "uid": a.uid}
            res = await as_user(client_env, b, sock, [["call", "connect", {"session": "b-1"}]])
            assert codes(res) == ["ok"]
            async with AsyncClient(sock) as wa:  # root: exempt
                await wa.connect("r-1")
                await wa.connect("r-2")
                samples = (await wa.metrics()).samples
            refusals = [s.value for s in samples if s.name == "wa_limit_refusals_total"
                        and s.labels == {"limit": "sessions_per_uid"}]
            assert refusals == [1.0]


@pytest.mark.slow
async def test_real_uids_socket_mode_group_and_eacces(sock_dir: Path, users: Users, client_env: ClientEnv) -> None:
    _open_socket_dir(sock_dir)
    a, b = users.a, users.b
    with trio.fail_after(60):
        async with running_daemon(sock_dir, socket_group=users.clients_group) as d:
            st = os.stat(d.socket_path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o660
            assert st.st_gid == users.clients_gid and st.st_uid == os.geteuid()
            # A member of the socket's group (supplementary) may connect ...
            res = await as_user(client_env, a, d.socket_path, [["client_ping"], ["call", "list", {}]],
                                groups=[users.clients_gid])
            assert codes(res) == ["ok", "ok"]
            # ... a uid outside it gets EACCES from connect(): a clear client-side error.
            res = await as_user(client_env, b, d.socket_path, [["client_ping"]])
            assert res[0]["error"] == "unavailable" and res[0]["type"] == "DaemonUnreachable"
            message = res[0]["message"]
            assert message.endswith(": Permission denied") and "in its group" in message, message
            assert res[0]["details"] == {"socket": str(d.socket_path), "errno": "EACCES"}
