"""Chromium's own sandbox: whether it can run, as whom, and the private
directories each browser gets.

Chromium confines its renderers and most other children in a namespace sandbox
(a user, PID and network namespace of their own, an empty root directory) under
a seccomp-bpf filter. Debian's Chromium ships no setuid helper, so that sandbox
needs user namespaces that an unprivileged process may create, and Chromium
refuses to run it as root. ``--no-sandbox`` is passed only when it cannot work:
the daemon runs as root with no ``browser_user``, the kernel or a container
forbids user namespaces, or the operator put the flag in ``chromium_args``. Each
case is logged at start-up, reported by ``health`` and by ``wa_browser_sandbox``
(docs/security.md, "The browser sandbox").
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pwd
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...protocol import HealthCheck
from ..ops.log import get_logger

log = get_logger("chromium")

NO_SANDBOX = "--no-sandbox"
NAMESPACE = "namespace"  # Chromium's namespace sandbox with seccomp-bpf
NONE = "none"  # --no-sandbox
SANDBOX_MODES = (NAMESPACE, NONE)

# What Chromium's zygote asks for (sandbox/linux/services/namespace_sandbox.cc);
# with CLONE_NEWUSER the other two are checked against the new namespace's
# capabilities, so an LSM that strips those (Ubuntu's AppArmor restriction) fails
# the probe as it would fail Chromium.
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
ZYGOTE_NAMESPACES = _CLONE_NEWUSER | _CLONE_NEWPID | _CLONE_NEWNET

# Kernel switches that turn unprivileged user namespaces off, and the value that does.
_USERNS_SWITCHES = (
    ("/proc/sys/kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone = 0"),
    ("/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces = 0"),
    ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1", "kernel.apparmor_restrict_unprivileged_userns = 1"),
)
# Variables of the daemon's own user that must not lead another user's browser into it.
_FOREIGN_ENV = ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME",
                "DBUS_SESSION_BUS_ADDRESS")


class SandboxError(Exception):
    """``browser_user`` names no usable user; the message says why."""


@dataclass(frozen=True)
class BrowserUser:
    """The unprivileged user a root daemon starts its browsers as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # its supplementary groups, as a login would have them

    def __str__(self) -> str:
        return f"{self.name} (uid {self.uid})"


def resolve_user(spec: str) -> BrowserUser:
    """``browser_user``: a user name, or a uid, known to NSS; never root."""
    try:
        pw = pwd.getpwuid(int(spec)) if spec.isdigit() else pwd.getpwnam(spec)
    except KeyError:
        raise SandboxError(f"browser_user: no user {spec!r} on this host") from None
    if pw.pw_uid == 0:
        raise SandboxError("browser_user: must be an unprivileged user, not root")
    try:
        groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    except OSError:
        groups = (pw.pw_gid,)
    return BrowserUser(pw.pw_name, pw.pw_uid, pw.pw_gid, groups)


@dataclass(frozen=True)
class Sandbox:
    """How this daemon's browsers run. ``user``: start them as this user (the daemon is
    root); None: as the daemon's own user. ``why_off``: why ``--no-sandbox`` (None: on).
    ``unreachable``: why that user cannot reach the profiles (every launch fails)."""

    mode: str
    why_off: str | None = None
    user: BrowserUser | None = None
    unreachable: str | None = None
    ignored_user: str | None = None  # browser_user set but unusable by a non-root daemon

    @property
    def flags(self) -> tuple[str, ...]:
        return () if self.mode == NAMESPACE else (NO_SANDBOX,)

    @property
    def runs_as(self) -> str:
        return str(self.user) if self.user is not None else f"the daemon's user (uid {os.geteuid()})"

    def describe(self) -> str:
        if self.mode == NAMESPACE:
            return f"on (namespace + seccomp-bpf); browsers run as {self.runs_as}"
        return f"off (--no-sandbox): {self.why_off}; browsers run as {self.runs_as}"


def decide(
    euid: int, user: BrowserUser | None, userns_problem: str | None, extra_args: tuple[str, ...]
) -> Sandbox:
    """The sandbox, from who the daemon is, ``browser_user``, what the probe found and
    ``chromium_args``. No I/O."""
    ignored = None
    if user is not None and euid != 0:
        # Only root can start a process as another user. The daemon's own user is as
        # good for the sandbox: the point of browser_user is not to sandbox as root.
        if user.uid != euid:
            ignored = f"{user} is not the daemon's user and the daemon is not root: browsers run as the daemon's user"
        user = None
    if NO_SANDBOX in extra_args:
        return Sandbox(NONE, f"chromium_args holds {NO_SANDBOX}", user, ignored_user=ignored)
    if euid == 0 and user is None:
        why = "the daemon runs as root and no browser_user is set (Chromium refuses its sandbox to root)"
        return Sandbox(NONE, why, None, ignored_user=ignored)
    if userns_problem is not None:
        return Sandbox(NONE, f"no user namespaces for the browsers: {userns_problem}", user, ignored_user=ignored)
    return Sandbox(NAMESPACE, None, user, ignored_user=ignored)


# ---------------------------------------------------------------------------- the probe


@dataclass(frozen=True)
class ProbeResult:
    userns_errno: int  # 0: the namespaces were created
    reaches: bool  # the user may search the sessions directory


def probe(user: BrowserUser | None, sessions_dir: Path) -> ProbeResult:
    """Ask the kernel, as the browsers' user, for the namespaces Chromium's zygote
    makes, and whether that user can reach ``sessions_dir``: in a forked child that
    drops to the user, tries, and exits (a few milliseconds)."""
    libc = ctypes.CDLL(None, use_errno=True)
    unshare = libc.unshare  # looked up before the fork: the child only calls
    target = os.fsencode(sessions_dir)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its answer is checked by the parent's tests
        code = b"E"
        try:
            os.close(read_end)
            if user is not None:
                os.setgroups(list(user.groups))
                os.setgid(user.gid)
                os.setuid(user.uid)
            reach = b"1" if os.access(target, os.X_OK) else b"0"
            failed = unshare(ZYGOTE_NAMESPACES) != 0
            code = reach + str(ctypes.get_errno() if failed else 0).encode()
        finally:
            os.write(write_end, code)
            os._exit(0)
    os.close(write_end)
    try:
        answer = b""
        while chunk := os.read(read_end, 64):
            answer += chunk
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    if len(answer) < 2 or not answer[1:].isdigit():
        return ProbeResult(errno.EPERM, False)  # could not even drop to the user
    return ProbeResult(int(answer[1:]), answer[:1] == b"1")


def explain_userns(err: int, sysctls: Mapping[str, str] | None = None) -> str:
    """Why user namespaces failed: the kernel switch that is off, else the error."""
    values = _read_switches() if sysctls is None else sysctls
    for path, off, text in _USERNS_SWITCHES:
        if values.get(path) == off:
            return f"{text} on this host"
    name = errno.errorcode.get(err, str(err))
    if err == errno.EPERM:
        return (f"unshare(CLONE_NEWUSER|CLONE_NEWPID|CLONE_NEWNET) failed with {name}: a seccomp filter or "
                "the service manager forbids it (container runtime profile, systemd RestrictNamespaces=)")
    return f"unshare(CLONE_NEWUSER|CLONE_NEWPID|CLONE_NEWNET) failed with {name}: {os.strerror(err)}"


def _read_switches() -> dict[str, str]:
    values = {}
    for path, _, _ in _USERNS_SWITCHES:
        with contextlib.suppress(OSError):
            values[path] = Path(path).read_text().strip()
    return values


def plan(euid: int, user: BrowserUser | None, sessions_dir: Path, extra_args: tuple[str, ...]) -> Sandbox:
    """The sandbox of this daemon: :func:`decide` on what :func:`probe` finds."""
    runs_as = user if euid == 0 else None
    if euid == 0 and runs_as is None:
        result = ProbeResult(0, True)  # root's browsers run unsandboxed whatever the kernel offers
    else:
        result = probe(runs_as, sessions_dir)
    problem = explain_userns(result.userns_errno) if result.userns_errno else None
    sandbox = decide(euid, user, problem, extra_args)
    if sandbox.user is not None and not result.reaches:
        blocked = next((str(p) for p in _ancestors(sessions_dir) if not _searchable(p, sandbox.user)), str(sessions_dir))
        why = (f"browser_user {sandbox.user} cannot reach {sessions_dir}: {blocked} does not let it pass "
               "(give the state directory and its parents o+x, e.g. chmod 0711)")
        sandbox = Sandbox(sandbox.mode, sandbox.why_off, sandbox.user, why, sandbox.ignored_user)
    return sandbox


def _ancestors(path: Path) -> Iterator[Path]:
    yield from reversed([path, *path.parents])


def _searchable(path: Path, user: BrowserUser) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_uid == user.uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid in user.groups:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


# ---------------------------------------------------------------------------- private directories


def private_dirs(base: Path, parts: tuple[str, ...], user: BrowserUser | None, *, hand_over: bool = True) -> Path:
    """``base/parts[0]/.../parts[-1]``, each level created 0700 (mkdir's mode: never
    wider, whatever the umask) and kept so: an older, wider one is narrowed. With
    ``user``, the levels it only passes through are 0711 (it lists nothing there)
    and, with ``hand_over``, the last level is the user's before anyone uses it.

    Every level is opened without following a symbolic link, and a level the daemon
    should own but does not (one planted in /tmp) is refused: nothing leads a root
    daemon's chmod or chown elsewhere."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, name in enumerate(parts):
            handed = hand_over and user is not None and i == len(parts) - 1
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
            st = os.fstat(fd)
            # The level handed over may belong to anyone: its parent is ours, so nobody
            # else put it there (a browser_user changed since is handed the profile).
            if not handed and st.st_uid != os.geteuid():
                raise PermissionError(errno.EPERM, f"owned by uid {st.st_uid}, not by the daemon",
                                      str(base.joinpath(*parts[: i + 1])))
            mode = 0o711 if user is not None and not handed else 0o700
            if st.st_mode & 0o7777 != mode:
                os.fchmod(fd, mode)
            if handed and user is not None and (st.st_uid, st.st_gid) != (user.uid, user.gid):
                os.fchown(fd, user.uid, user.gid)
                _chown_tree(fd, user)
    finally:
        os.close(fd)
    return base.joinpath(*parts)


def _chown_tree(fd: int, user: BrowserUser) -> None:
    """Hand what a directory holds to ``user`` (a profile made by another user before
    browser_user was set), without following links."""
    for _, dirs, files, dir_fd in os.fwalk(".", dir_fd=fd):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(name, user.uid, user.gid, dir_fd=dir_fd, follow_symlinks=False)


def private_tmp(base: Path, prefix: str, user: BrowserUser | None) -> Path:
    """A new directory of one launch under ``base``: 0700 from its creation (mkdtemp),
    then handed to ``user``."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    if user is not None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchown(fd, user.uid, user.gid)
        finally:
            os.close(fd)
    return path


def browser_env(base: Mapping[str, str], tmp: Path, user: BrowserUser | None) -> dict[str, str]:
    """The browser's environment: the daemon's, with TMPDIR in its launch directory;
    for another user also HOME there (Chromium writes ~/.pki and ~/.config) and none
    of the daemon user's XDG or D-Bus places."""
    env = {k: v for k, v in base.items() if user is None or k not in _FOREIGN_ENV}
    env["TMPDIR"] = str(tmp)
    if user is not None:
        env.update(HOME=str(tmp), USER=user.name, LOGNAME=user.name)
    return env


# ---------------------------------------------------------------------------- one driver's browsers


class Confinement:
    """Where and as whom one driver's browsers run: the sandbox decided at the first
    need (start-up), the private directories of each launch, and how to start one."""

    def __init__(self, state_dir: Path, tmp_base: Path, browser_user: str | None, extra_args: tuple[str, ...]) -> None:
        self.state_dir = state_dir
        self.tmp_base = tmp_base
        self._browser_user = browser_user
        self._extra_args = extra_args
        self._sandbox: Sandbox | None = None

    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            user = resolve_user(self._browser_user) if self._browser_user else None
            self.state_dir.mkdir(parents=True, exist_ok=True)
            sessions = private_dirs(self.state_dir, ("sessions",), user, hand_over=False)
            self._sandbox = plan(os.geteuid(), user, sessions, self._extra_args)
        return self._sandbox

    def launch_dirs(self, session_id: str) -> Path:
        """The session's profile and a new temp directory of one launch, both 0700 and
        the browsers' user's; returns the temp directory."""
        user = self.sandbox.user
        private_dirs(self.state_dir, ("sessions", session_id, "profile"), user)
        private_dirs(self.tmp_base.parent, (self.tmp_base.name,), user, hand_over=False)
        return private_tmp(self.tmp_base, f"{session_id}-", user)

    def spawn_options(self, tmp: Path) -> dict[str, Any]:
        """Popen's arguments for a browser: its environment; another uid with its own
        groups (not root's), set in the child before exec and before ``preexec_fn``
        (whose parent-death signal a change of uid would clear); a private umask."""
        user = self.sandbox.user
        options: dict[str, Any] = {"env": browser_env(os.environ, tmp, user), "umask": 0o077}
        if user is not None:
            options.update(user=user.uid, group=user.gid, extra_groups=list(user.groups))
        return options

    def health_check(self) -> HealthCheck:
        """Always ok: running without the sandbox is a deployment's choice, which a
        liveness probe must not punish by restarts; the message and the value say it."""
        sandbox = self.sandbox
        return HealthCheck("browser_sandbox", True, sandbox.describe(), 1.0 if sandbox.mode == NAMESPACE else 0.0)

    def announce(self) -> None:
        """The start-up log lines: the sandbox in use, and loudly when it is off."""
        sandbox = self.sandbox
        if sandbox.ignored_user:
            log.warning("browser_user_ignored", reason=sandbox.ignored_user)
        if sandbox.mode == NAMESPACE:
            log.info("browser_sandbox", mode=sandbox.mode, runs_as=sandbox.runs_as)
        else:
            log.warning("browser_sandbox_off", mode=sandbox.mode, reason=sandbox.why_off, runs_as=sandbox.runs_as,
                        see="docs/security.md, The browser sandbox")
        if sandbox.unreachable:
            log.error("browser_user_cannot_reach_profiles", reason=sandbox.unreachable)
