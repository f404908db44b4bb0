"""Chromium's own sandbox (docs/security.md, "The browser sandbox").

The decision (who runs the browsers, with or without ``--no-sandbox``) is tested
without I/O; the probe against a real seccomp filter that forbids namespaces; the
private directories on the real file system; then real Chromium against the
simulator in the three ways a daemon runs: as an unprivileged user (as the systemd
unit runs it), as root with ``browser_user``, and as root without it (the fallback,
which must say so). The renderers' confinement is checked from the kernel's side:
``Seccomp: 2``, a user namespace of their own, and a root directory from which no
other session's profile can be reached although their uid could read it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import grp
import os
import pwd
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from wa_daemon import AsyncClient, WaDaemonError
from wa_daemon.daemon.browser.process import find_orphans, group_members
from wa_daemon.daemon.browser.sandbox import (
    NAMESPACE,
    NO_SANDBOX,
    NONE,
    BrowserUser,
    SandboxError,
    decide,
    explain_userns,
    plan,
    private_dirs,
    private_tmp,
    resolve_user,
)
from wa_daemon.daemon.ops.configfile import ConfigError, ConfigSource
from wa_daemon.protocol import Health, Metrics
from wa_daemon.sim import SimEngine, SimOptions, serve_simulator

from .helpers import require, require_chromium, require_tool, short_tmpdir, zombies_of
from .test_chromium import SCALE, reach, rig, scan

NOBODY = BrowserUser("nobody", 65534, 65534, (65534,))
BROWSER_USER = "wa-test-browser"


# ============================================================================ the decision, no I/O


@pytest.mark.parametrize(
    ("euid", "user", "problem", "args", "mode", "runs_as", "why"),
    [
        (1000, None, None, (), NAMESPACE, None, None),  # production: the unit's own user
        (0, NOBODY, None, (), NAMESPACE, NOBODY, None),  # root with browser_user
        (0, None, None, (), NONE, None, "root and no browser_user"),
        (0, NOBODY, "user.max_user_namespaces = 0", (), NONE, NOBODY, "max_user_namespaces"),
        (1000, None, "EPERM", (), NONE, None, "no user namespaces"),
        (1000, None, None, ("--lang=de", NO_SANDBOX), NONE, None, "chromium_args"),
        (0, NOBODY, None, (NO_SANDBOX,), NONE, NOBODY, "chromium_args"),
        # Only root can switch users: a non-root daemon keeps its own, sandboxed.
        (1000, NOBODY, None, (), NAMESPACE, None, None),
        (65534, NOBODY, None, (), NAMESPACE, None, None),
    ],
)
def test_the_decision(euid: int, user: BrowserUser | None, problem: str | None, args: tuple[str, ...],
                      mode: str, runs_as: BrowserUser | None, why: str | None) -> None:
    sandbox = decide(euid, user, problem, args)
    assert (sandbox.mode, sandbox.user) == (mode, runs_as)
    assert sandbox.flags == (() if mode == NAMESPACE else (NO_SANDBOX,))
    if why is None:
        assert sandbox.why_off is None and "on (namespace + seccomp-bpf)" in sandbox.describe()
    else:
        assert sandbox.why_off is not None and why in sandbox.why_off and sandbox.describe().startswith("off")
    # A browser_user a non-root daemon cannot use is said, never silently dropped.
    assert (sandbox.ignored_user is not None) == (user is not None and euid not in (0, user.uid))


def test_why_user_namespaces_failed() -> None:
    off = {"/proc/sys/kernel/unprivileged_userns_clone": "0", "/proc/sys/user/max_user_namespaces": "15000"}
    assert explain_userns(errno.EPERM, off) == "kernel.unprivileged_userns_clone = 0 on this host"
    zero = {"/proc/sys/user/max_user_namespaces": "0"}
    assert explain_userns(errno.ENOSPC, zero) == "user.max_user_namespaces = 0 on this host"
    apparmor = {"/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1"}
    assert "apparmor_restrict_unprivileged_userns = 1" in explain_userns(errno.EPERM, apparmor)
    assert "RestrictNamespaces=" in explain_userns(errno.EPERM, {})
    assert "ENOSPC" in explain_userns(errno.ENOSPC, {"/proc/sys/user/max_user_namespaces": "15000"})


def test_browser_user_must_exist_and_not_be_root(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="not root"):
        resolve_user("root")
    with pytest.raises(SandboxError, match="not root"):
        resolve_user("0")
    with pytest.raises(SandboxError, match="no user 'wa-no-such-user'"):
        resolve_user("wa-no-such-user")
    nobody = pwd.getpwnam("nobody")
    user = resolve_user(str(nobody.pw_uid))
    assert (user.name, user.uid, user.gid) == ("nobody", nobody.pw_uid, nobody.pw_gid)
    assert nobody.pw_gid in user.groups and 0 not in user.groups
    # At load, like a broken page contract: check-config and a reload refuse it.
    with pytest.raises(ConfigError, match="browser_user: no user 'wa-no-such-user'"):
        ConfigSource(None, overrides={"browser_user": "wa-no-such-user"}, env={}).load()
    with pytest.raises(ConfigError, match="browser_user"):
        ConfigSource(None, overrides={"browser_user": " "}, env={}).load()
    env = {"WA_DAEMON_BROWSER_USER": "nobody"}
    assert ConfigSource(None, overrides={}, env=env).load().browser_user == "nobody"


# ============================================================================ the probe, for real


# A classic BPF program as systemd's RestrictNamespaces= installs one: unshare() and
# clone() asking for any namespace fail with EPERM, clone3() (whose flags a filter
# cannot read) with ENOSYS, everything else is allowed. x86-64 numbers.
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_NR = {"x86_64": (272, 56, 435)}  # unshare, clone, clone3
_ALL_NAMESPACES = 0x7E020000  # CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET


def _forbid_namespaces() -> None:
    """In this (forked) process: no_new_privs, then the filter above."""
    unshare_nr, clone_nr, clone3_nr = _NR[os.uname().machine]
    insns = [
        (0x20, 0, 0, 0),  # 0: ld [0], the syscall number
        (0x15, 3, 0, unshare_nr),  # 1: unshare -> 5
        (0x15, 2, 0, clone_nr),  # 2: clone -> 5
        (0x15, 5, 0, clone3_nr),  # 3: clone3 -> 9
        (0x06, 0, 0, _SECCOMP_RET_ALLOW),  # 4
        (0x20, 0, 0, 16),  # 5: ld [16], the low half of the first argument: the flags
        (0x45, 0, 1, _ALL_NAMESPACES),  # 6: jset -> 7, else 8
        (0x06, 0, 0, _SECCOMP_RET_ERRNO | errno.EPERM),  # 7
        (0x06, 0, 0, _SECCOMP_RET_ALLOW),  # 8
        (0x06, 0, 0, _SECCOMP_RET_ERRNO | errno.ENOSYS),  # 9
    ]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
    prog = ctypes.create_string_buffer(struct.pack("HxxxxxxP", len(insns), ctypes.addressof(code)))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, prog, 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


def _in_child(fn: Any) -> str:
    """Run ``fn()`` in a forked child; its string result (or the error) comes back."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        out = "?"
        try:
            out = str(fn())
        except BaseException as exc:  # reported to the parent
            out = f"error: {exc!r}"
        finally:
            os.write(write_end, out.encode()[:65000])
            os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return data.decode()


def test_the_probe_sees_user_namespaces_and_a_filter_that_forbids_them(tmp_path: Path) -> None:
    require(os.uname().machine in _NR, "the seccomp filter here is written for x86-64")
    require(Path("/proc/sys/user/max_user_namespaces").read_text().strip() != "0", "user namespaces are off here")
    euid = os.geteuid()
    user = NOBODY if euid == 0 else None
    tmp_path.chmod(0o755)
    assert _in_child(lambda: plan(euid, user, tmp_path, ()).mode) == NAMESPACE

    def forbidden() -> str:
        _forbid_namespaces()
        sandbox = plan(euid, user, tmp_path, ())
        return f"{sandbox.mode}|{sandbox.why_off}"

    mode, why = _in_child(forbidden).split("|", 1)
    assert mode == NONE, why
    assert "no user namespaces for the browsers" in why and "EPERM" in why, why


def test_the_probe_finds_a_state_dir_the_browser_user_cannot_pass() -> None:
    require(os.geteuid() == 0, "dropping to another user needs root")
    with short_tmpdir() as base:  # in /tmp, which every user passes
        closed = base / "closed"
        closed.mkdir(mode=0o700)
        (closed / "sessions").mkdir(mode=0o711)
        sandbox = plan(0, NOBODY, closed / "sessions", ())
        assert sandbox.mode == NAMESPACE and sandbox.unreachable is not None
        assert f"{base} does not let it pass" in sandbox.unreachable, sandbox.unreachable
        base.chmod(0o711)
        sandbox = plan(0, NOBODY, closed / "sessions", ())
        assert sandbox.unreachable is not None and f"{closed} does not let it pass" in sandbox.unreachable
        closed.chmod(0o711)
        assert plan(0, NOBODY, closed / "sessions", ()).unreachable is None


# ============================================================================ private directories


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def test_private_dirs_are_0700_from_the_start_and_stay_so(tmp_path: Path) -> None:
    old = os.umask(0)  # the widest umask: mkdir's own mode must be what keeps it private
    try:
        profile = private_dirs(tmp_path, ("sessions", "s1", "profile"), None)
        tmp = private_tmp(tmp_path, "s1-", None)
    finally:
        os.umask(old)
    assert profile == tmp_path / "sessions" / "s1" / "profile"
    for path in (tmp_path / "sessions", tmp_path / "sessions" / "s1", profile, tmp):
        assert _mode(path) == 0o700, (path, oct(_mode(path)))
    # One made wider by an older version, or by hand, is narrowed at the next launch.
    (tmp_path / "sessions" / "s1").chmod(0o755)
    profile.chmod(0o777)
    private_dirs(tmp_path, ("sessions", "s1", "profile"), None)
    assert _mode(tmp_path / "sessions" / "s1") == _mode(profile) == 0o700


def test_private_dirs_follow_no_link_and_take_no_stranger_s_directory(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (tmp_path / "sessions").mkdir(mode=0o700)
    (tmp_path / "sessions" / "s1").symlink_to(elsewhere)
    with pytest.raises(OSError) as info:
        private_dirs(tmp_path, ("sessions", "s1", "profile"), None)
    assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert _mode(elsewhere) == 0o755 and not (elsewhere / "profile").exists()
    if os.geteuid() == 0:
        planted = tmp_path / "planted"
        planted.mkdir()
        planted.chmod(0o777)
        os.chown(planted, NOBODY.uid, NOBODY.gid)  # as another user would in /tmp
        with pytest.raises(PermissionError, match="not by the daemon"):
            private_dirs(tmp_path, ("planted",), None, hand_over=False)
        assert _mode(planted) == 0o777


def test_private_dirs_are_handed_to_the_browser_user(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "chown needs root")
    sessions = tmp_path / "sessions"
    # A profile a root daemon made before browser_user was set: handed over, contents too.
    old = sessions / "s1" / "profile" / "Default"
    old.mkdir(parents=True)
    (old / "Cookies").write_text("x")
    (old / "link").symlink_to("/etc/passwd")
    profile = private_dirs(tmp_path, ("sessions", "s1", "profile"), NOBODY)
    tmp = private_tmp(tmp_path, "s1-", NOBODY)
    assert _mode(sessions) == _mode(sessions / "s1") == 0o711  # passed through, not listed
    assert (sessions.stat().st_uid, (sessions / "s1").stat().st_uid) == (0, 0)
    for path in (profile, tmp):
        st = path.stat()
        assert (_mode(path), st.st_uid, st.st_gid) == (0o700, NOBODY.uid, NOBODY.gid), path
    for path in (old, old / "Cookies"):
        assert path.stat().st_uid == NOBODY.uid, path
    assert (old / "link").lstat().st_uid == NOBODY.uid and Path("/etc/passwd").stat().st_uid == 0


# ============================================================================ real Chromium: helpers


@dataclass(frozen=True)
class Proc:
    pid: int
    uids: tuple[int, ...]
    seccomp: int
    userns: str
    cmdline: bytes

    @property
    def renderer(self) -> bool:
        return b"--type=renderer" in self.cmdline


def proc(pid: int) -> Proc | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        userns = os.readlink(f"/proc/{pid}/ns/user")
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return Proc(pid, tuple(int(x) for x in fields["Uid"].split()), int(fields["Seccomp"]), userns, cmdline)


def tree(pgid: int) -> list[Proc]:
    return [p for p in map(proc, group_members(pgid)) if p is not None]


async def renderers_of(pgid: int, timeout: float = 30) -> list[Proc]:
    with trio.fail_after(timeout):
        while True:
            found = [p for p in tree(pgid) if p.renderer]
            if found:
                return found
            await trio.sleep(0.1)


def check_sandboxed(pgid: int, uid: int, daemon_pid: int) -> list[Proc]:
    """Every process of the browser runs as ``uid``, none with --no-sandbox; every
    renderer under seccomp-bpf, in a user namespace that is not the daemon's."""
    daemon_ns = os.readlink(f"/proc/{daemon_pid}/ns/user")
    procs = tree(pgid)
    assert procs
    for p in procs:
        assert set(p.uids) == {uid}, (p.pid, p.uids, p.cmdline[:200])
        assert NO_SANDBOX.encode() not in p.cmdline, p.cmdline[:300]
    renderers = [p for p in procs if p.renderer]
    assert renderers, [p.cmdline[:100] for p in procs]
    for r in renderers:
        assert r.seccomp == 2, (r.pid, r.seccomp)
        assert r.userns != daemon_ns, (r.pid, r.userns)
    return renderers


def _inner_id(pid: int, host_id: int, kind: str) -> int:
    """``host_id`` as the namespace of ``pid`` sees it (its uid_map or gid_map)."""
    for line in Path(f"/proc/{pid}/{kind}_map").read_text().splitlines():
        inside, outside, count = map(int, line.split())
        if outside <= host_id < outside + count:
            return inside + host_id - outside
    raise AssertionError(f"{host_id} is not mapped in the namespace of {pid}")


_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


def open_with_identity_of(pid: int, path: Path) -> str:
    """Open ``path`` in a child that has the identity of process ``pid``: its user and
    network namespaces, its uid and gid, no supplementary group, but the host's root
    directory. "opened" or the error."""
    status = Path(f"/proc/{pid}/status").read_text()
    host_uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    host_gid = int(next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1])
    uid, gid = _inner_id(pid, host_uid, "uid"), _inner_id(pid, host_gid, "gid")
    user_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY)
    net_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    libc = ctypes.CDLL(None, use_errno=True)

    def attempt() -> str:
        os.setgroups([])  # before the user namespace, where setgroups is denied
        for fd, kind in ((net_fd, _CLONE_NEWNET), (user_fd, _CLONE_NEWUSER)):
            if libc.setns(fd, kind) != 0:
                return f"setns failed: {errno.errorcode[ctypes.get_errno()]}"
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        # Root's uid is unmapped in there, so the change of uid kept the capabilities
        # (the kernel drops them only when leaving the namespace's own root): drop them
        # as the renderer has none.
        header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
        if libc.capset(header, bytes(24)) != 0:
            return f"capset failed: {errno.errorcode[ctypes.get_errno()]}"
        identity = Path("/proc/self/status").read_text()
        assert "CapEff:\t0000000000000000" in identity and "CapPrm:\t0000000000000000" in identity, identity
        try:
            os.close(os.open(path, os.O_RDONLY))
        except OSError as exc:
            return f"error {errno.errorcode[exc.errno or 0]}"
        return "opened"

    try:
        return _in_child(attempt)
    finally:
        os.close(user_fd)
        os.close(net_fd)


def a_file_of(profile: Path) -> Path:
    files = [p for p in profile.rglob("*") if p.is_file() and not p.is_symlink()]
    assert files, f"nothing written in {profile} yet"
    return files[0]


def check_profile_closed_to(renderer: int, other_profile: Path, sessions_dir: Path) -> None:
    """A renderer of one session cannot open another session's profile.

    Its uid may (the same uid runs every browser), which is checked first, so that
    the rest cannot pass vacuously: a process with the renderer's namespaces and
    credentials, but the host's root directory, opens the file. The renderer's own
    root directory is the empty one Chromium's sandbox chroots it into: the same
    path, resolved by the kernel from that root (/proc/PID/root), leads nowhere,
    and the renderer holds no descriptor into any session's directory."""
    target = a_file_of(other_profile)
    assert open_with_identity_of(renderer, target) == "opened"
    with pytest.raises(OSError):
        os.listdir(f"/proc/{renderer}/root/")
    for path in (f"/proc/{renderer}/root{target}", f"/proc/{renderer}/root/../../..{target}"):
        with pytest.raises(OSError) as info:
            os.close(os.open(path, os.O_RDONLY))
        assert info.value.errno in (errno.ENOENT, errno.ESRCH), path
    held = []
    for fd in os.listdir(f"/proc/{renderer}/fd"):
        try:
            held.append(os.readlink(f"/proc/{renderer}/fd/{fd}"))
        except OSError:
            continue
    assert held and not [h for h in held if h.startswith(str(sessions_dir))], held


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    for s in metrics.samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def sandbox_check(health: Health) -> str:
    checks = {c.name: c for c in health.checks}
    assert checks["browser_sandbox"].ok  # informative: a liveness probe must not restart for it
    return checks["browser_sandbox"].message


def check_private(path: Path, uid: int) -> None:
    st = path.stat()
    assert (st.st_mode & 0o7777, st.st_uid) == (0o700, uid), (path, oct(st.st_mode), st.st_uid)


@pytest.fixture(scope="session")
def browser_user() -> Iterator[BrowserUser]:
    """An unprivileged system user for the browsers (and for a daemon run as one);
    created if missing, removed afterwards if this session created it."""
    require(os.geteuid() == 0, "starting processes as another user needs root")
    for tool in ("useradd", "userdel"):
        require_tool(tool, "passwd")
    created = False
    try:
        pwd.getpwnam(BROWSER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
                        BROWSER_USER], check=True, capture_output=True, timeout=60)
        created = True
    try:
        yield resolve_user(BROWSER_USER)
    finally:
        if created:
            subprocess.run(["userdel", BROWSER_USER], capture_output=True, timeout=60)
            with contextlib.suppress(KeyError):
                grp.getgrnam(BROWSER_USER)
                subprocess.run(["groupdel", BROWSER_USER], capture_output=True, timeout=60)


def _open_path(path: Path) -> None:
    """Let other users pass through ``path`` and its parents (search only)."""
    for p in [path, *path.parents]:
        if not p.stat().st_mode & 0o001:
            p.chmod(p.stat().st_mode | 0o001)


# ============================================================================ real Chromium: root + browser_user


@pytest.mark.usefixtures("chromium")
async def test_root_with_browser_user_runs_every_renderer_sandboxed(sock_dir: Path,
                                                                   browser_user: BrowserUser) -> None:
    require(os.geteuid() == 0, "the root + browser_user path needs root")
    _open_path(sock_dir)  # the state directory lies in it: the browser user must pass
    with trio.fail_after(240), structlog.testing.capture_logs() as logs:
        async with rig(sock_dir, browser_user=browser_user.name, resource_sample_interval=0.5) as r:
            sessions = r.state / "sessions"
            for sid in ("alice", "bob"):
                await r.wa.connect(sid)
                await reach(r.wa, sid, "waiting_qr", timeout=120)
                await scan(r, sid)
                await reach(r.wa, sid, "connected", timeout=120)
            renderers = {}
            for sid in ("alice", "bob"):
                pgid = r.browser(sid).pid
                await renderers_of(pgid)
                renderers[sid] = check_sandboxed(pgid, browser_user.uid, os.getpid())
                check_private(sessions / sid / "profile", browser_user.uid)
                tmp = r.browser(sid).tmp
                assert tmp is not None
                check_private(tmp, browser_user.uid)
                assert (sessions / sid).stat().st_mode & 0o777 == 0o711
            check_profile_closed_to(renderers["alice"][0].pid, sessions / "bob" / "profile", sessions)
            # Another local user reads no profile: 0700, the browser user's.
            nobody_child = _in_child(lambda: _open_as(NOBODY, a_file_of(sessions / "bob" / "profile")))
            assert nobody_child == "error EACCES", nobody_child
            assert "on (namespace + seccomp-bpf)" in sandbox_check(await r.wa.health())
            metrics = await r.wa.metrics()
            assert sample(metrics, "wa_browser_sandbox", mode="namespace") == 1
            assert sample(metrics, "wa_browser_sandbox", mode="none") == 0
            # Root reads the other uid's /proc: memory and processes are accounted.
            with trio.fail_after(30):
                while not (sample(await r.wa.metrics(), "wa_session_memory_pss_bytes", session="alice") or 0) > 0:
                    await trio.sleep(0.2)
            # kill -9 of a browser of another uid: noticed (pidfd), its whole group ended,
            # relaunched as the same user, sandboxed again.
            old = r.browser("alice").pid
            os.kill(old, signal.SIGKILL)
            await reach(r.wa, "alice", "reconnecting", timeout=30)
            await reach(r.wa, "alice", "connected", timeout=120)
            assert group_members(old) == []
            check_sandboxed(r.browser("alice").pid, browser_user.uid, os.getpid())
    events = [e for e in logs if e["event"] in ("browser_sandbox", "browser_sandbox_off")]
    assert events and events[0]["event"] == "browser_sandbox" and BROWSER_USER in events[0]["runs_as"], events


def _open_as(user: BrowserUser, path: Path) -> str:
    os.setgroups([])
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as exc:
        return f"error {errno.errorcode[exc.errno or 0]}"
    return "opened"


@pytest.mark.usefixtures("chromium")
async def test_browser_user_that_cannot_reach_the_state_dir_fails_launches_clearly(
    sock_dir: Path, browser_user: BrowserUser
) -> None:
    require(os.geteuid() == 0, "the root + browser_user path needs root")
    os.chmod(sock_dir, 0o700)  # closed to the browser user
    with trio.fail_after(60), structlog.testing.capture_logs() as logs:
        async with rig(sock_dir, browser_user=browser_user.name, reconnect_max_attempts=0) as r:
            await r.wa.connect("closed")
            await reach(r.wa, "closed", "failed", timeout=30)
            st = await r.wa.status("closed")
            assert st.reason == "launch_error"
            assert f"{sock_dir} does not let it pass" in (st.message or ""), st
    assert [e for e in logs if e["event"] == "browser_user_cannot_reach_profiles"], logs


# ============================================================================ real Chromium: the fallback


@pytest.mark.usefixtures("chromium")
async def test_root_without_browser_user_falls_back_and_says_so(sock_dir: Path) -> None:
    require(os.geteuid() == 0, "the fallback for root needs root")
    with trio.fail_after(120), structlog.testing.capture_logs() as logs:
        async with rig(sock_dir) as r:
            await r.wa.connect("fb")
            await reach(r.wa, "fb", "waiting_qr", timeout=60)
            pgid = r.browser("fb").pid
            await renderers_of(pgid)
            procs = tree(pgid)
            browser = next(p for p in procs if p.pid == pgid)
            assert NO_SANDBOX.encode() in browser.cmdline
            assert all(p.seccomp == 0 for p in procs if p.renderer)  # what the fallback means
            check_private(r.state / "sessions" / "fb" / "profile", 0)
            check_private(r.state / "sessions" / "fb", 0)
            check_private(r.state / "sessions", 0)
            tmp = r.browser("fb").tmp
            assert tmp is not None
            check_private(tmp, 0)
            message = sandbox_check(await r.wa.health())
            assert message.startswith("off (--no-sandbox)") and "no browser_user" in message, message
            metrics = await r.wa.metrics()
            assert sample(metrics, "wa_browser_sandbox", mode="none") == 1
            assert sample(metrics, "wa_browser_sandbox", mode="namespace") == 0
            text = (await r.wa.metrics(prometheus=True)).prometheus or ""
            assert 'wa_browser_sandbox{mode="none"} 1.0' in text
    off = [e for e in logs if e["event"] == "browser_sandbox_off"]
    assert len(off) == 1 and off[0]["log_level"] == "warning", logs
    assert "no browser_user" in off[0]["reason"] and off[0]["mode"] == "none"


# ============================================================================ real Chromium: an unprivileged daemon


def _daemon_modules() -> list[str]:
    """The top-level packages the daemon and its Chromium driver import."""
    code = (
        "import sys, os\n"
        "import wa_daemon.daemon.main, wa_daemon.daemon.app, wa_daemon.daemon.browser.chromium\n"
        "import pyppeteer, pyppeteer.connection, pyppeteer.browser, trio_asyncio, websockets.legacy.client\n"
        "roots = [p for p in sys.path if p.endswith('site-packages')]\n"
        "tops = set()\n"
        "for m in list(sys.modules.values()):\n"
        "    f = getattr(m, '__file__', None) or ''\n"
        "    for root in roots:\n"
        "        if f.startswith(root + os.sep):\n"
        "            tops.add(os.path.join(root, os.path.relpath(f, root).split(os.sep)[0]))\n"
        "print('\\n'.join(sorted(tops)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return [line for line in out.stdout.splitlines() if "__editable__" not in line and "_distutils_hack" not in line]


@pytest.fixture(scope="session")
def daemon_runtime() -> Iterator[Path]:
    """A world-readable copy of this checkout's ``wa_daemon`` and of the packages the
    daemon imports, for Debian's /usr/bin/python3 run as another user (the test's
    own interpreter and checkout may lie where other users cannot go, e.g. /root).
    The compiled msgspec needs the same Python minor version there."""
    require(os.path.exists("/usr/bin/python3"), "Debian's /usr/bin/python3 is missing")
    version = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60, check=True).stdout.split()
    require(version == [str(n) for n in sys.version_info[:2]],
            f"the tests run on Python {sys.version_info[:2]}, /usr/bin/python3 is {version}")
    import wa_daemon

    root = Path(tempfile.mkdtemp(prefix="wa-sandbox-rt-"))
    try:
        root.chmod(0o755)
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(Path(wa_daemon.__file__).parent, root / "wa_daemon", ignore=ignore)
        for path in map(Path, _daemon_modules()):
            if path.is_dir():
                shutil.copytree(path, root / path.name, ignore=ignore)
            else:
                shutil.copy(path, root / path.name)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() or path.stat().st_mode & 0o100 else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@asynccontextmanager
async def unprivileged_daemon(sock_dir: Path, user: BrowserUser, runtime: Path, url: str,
                              *args: str) -> AsyncIterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """``wa-daemon`` as ``user`` with the unit's privileges (no new privileges, no
    capabilities at all), its state directory and socket its own."""
    setpriv = require_tool("setpriv", "util-linux")
    _open_path(sock_dir)
    home = sock_dir / "home"
    home.mkdir(mode=0o700)
    os.chown(home, user.uid, user.gid)
    state, sock = home / "state", home / "d.sock"
    log = open(sock_dir / "daemon.log", "wb")  # noqa: ASYNC230 - closed below; a file of the test
    proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once (fork and exec)
        [setpriv, "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all",
         f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
         "env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}", f"PYTHONPATH={runtime}", "PYTHONDONTWRITEBYTECODE=1",
         "/usr/bin/python3", "-m", "wa_daemon.daemon.main", "--socket", str(sock), "--state-dir", str(state),
         "--driver", "chromium", "--wa-url", url, "--set", "resource_sample_interval=0.5", *args],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        with trio.fail_after(60):
            while True:
                assert proc.poll() is None, (sock_dir / "daemon.log").read_text()
                try:
                    async with AsyncClient(sock) as wa:
                        await wa.ping()
                    break
                except WaDaemonError:
                    await trio.sleep(0.1)
        yield proc, sock, state
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(60):
            while proc.poll() is None:
                await trio.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    assert proc.returncode == 0, (sock_dir / "daemon.log").read_text()[-3000:]
    assert find_orphans(state / "sessions") == []


@pytest.mark.usefixtures("chromium")
async def test_unprivileged_daemon_runs_every_renderer_sandboxed(sock_dir: Path, browser_user: BrowserUser,
                                                                 daemon_runtime: Path) -> None:
    """Production: the daemon as its own unprivileged user with the unit's privileges;
    its browsers as that user, sandboxed; profiles closed to each other's renderers."""
    require_chromium()
    engine = SimEngine(SimOptions(time_scale=SCALE))
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_simulator, engine.options, engine=engine))
            async with unprivileged_daemon(sock_dir, browser_user, daemon_runtime, url + "/") as (proc, sock, state):
                async with AsyncClient(sock) as wa:
                    pgids = {}
                    for sid in ("a", "b"):
                        await wa.connect(sid)
                        await reach(wa, sid, "waiting_qr", timeout=120)
                        engine.scan((await wa.qr(sid)).data)
                        await reach(wa, sid, "connected", timeout=120)
                        pgids[sid] = _browser_pgid(state / "sessions" / sid / "profile")
                    sessions = state / "sessions"
                    renderers = {}
                    for sid, pgid in pgids.items():
                        await renderers_of(pgid)
                        renderers[sid] = check_sandboxed(pgid, browser_user.uid, proc.pid)
                        check_private(sessions / sid / "profile", browser_user.uid)
                        check_private(sessions / sid, browser_user.uid)
                    check_profile_closed_to(renderers["a"][0].pid, sessions / "b" / "profile", sessions)
                    check_profile_closed_to(renderers["b"][0].pid, sessions / "a" / "profile", sessions)
                    assert "on (namespace + seccomp-bpf)" in sandbox_check(await wa.health())
                    assert sample(await wa.metrics(), "wa_browser_sandbox", mode="namespace") == 1
                    # The daemon reads its non-dumpable renderers' memory: their user
                    # namespace is its own uid's, where it holds every capability.
                    with trio.fail_after(30):
                        while True:
                            metrics = await wa.metrics()
                            procs = sample(metrics, "wa_session_browser_processes", session="a") or 0
                            if procs >= len(tree(pgids["a"])) - 1 and procs >= 3:
                                break
                            await trio.sleep(0.2)
                    pss = sample(metrics, "wa_session_memory_pss_bytes", session="a") or 0
                    assert pss > 20 << 20, pss
                    os.kill(pgids["a"], signal.SIGKILL)
                    await reach(wa, "a", "reconnecting", timeout=30)
                    await reach(wa, "a", "connected", timeout=120)
                    assert group_members(pgids["a"]) == []
            nursery.cancel_scope.cancel()
    assert zombies_of(os.getpid()) == []


def _browser_pgid(profile: Path) -> int:
    needle = f"--user-data-dir={profile}".encode()
    for pid in find_orphans(profile.parent.parent):
        p = proc(pid)
        if p is not None and needle in p.cmdline and b"--type=" not in p.cmdline:
            return pid
    raise AssertionError(f"no browser of {profile}")


def test_orphans_of_another_uid_are_found_and_killed() -> None:
    """A root daemon's start-up finds a browser a killed daemon left running as
    browser_user (by its --user-data-dir) and kills its whole group."""
    require(os.geteuid() == 0, "a process of another uid needs root")
    from wa_daemon.daemon.browser.process import kill_orphans

    with short_tmpdir() as base:
        sessions = base / "sessions"
        profile = private_dirs(base, ("sessions", "s1", "profile"), NOBODY)
        (profile / "SingletonLock").symlink_to("otherhost-1234")
        orphan = subprocess.Popen(
            # One process holding the flag (its $1), blocked in a built-in: no child that
            # would carry the flag too between its fork and exec.
            ["/bin/sh", "-c", "read line", "sh", f"--user-data-dir={profile}"], stdin=subprocess.PIPE,
            user=NOBODY.uid, group=NOBODY.gid, extra_groups=[], start_new_session=True,
        )
        try:
            info = proc(orphan.pid)
            assert info is not None and info.uids == (NOBODY.uid,) * 4
            assert find_orphans(sessions) == [orphan.pid]
            assert kill_orphans(sessions) == 1
            assert orphan.wait(timeout=30) == -signal.SIGKILL
            left = find_orphans(sessions)
            assert left == [], [(p, Path(f"/proc/{p}/cmdline").read_bytes()[:300], orphan.pid) for p in left]
            assert not (profile / "SingletonLock").is_symlink()
        finally:
            if orphan.poll() is None:
                orphan.kill()
                orphan.wait()
            assert orphan.stdin is not None
            orphan.stdin.close()
