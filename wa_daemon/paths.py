"""Default socket and state paths: one resolution for daemon, client and CLI."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SOCKET_ENV = "WA_DAEMON_SOCKET"
SOCKET_NAME = "wa-daemon.sock"
SYSTEM_SOCKET = Path("/run/wa-daemon") / SOCKET_NAME  # where the systemd units put it


def _is_root() -> bool:
    return os.geteuid() == 0


def default_socket_path(env: Mapping[str, str] | None = None, *, root: bool | None = None) -> Path:
    """``$WA_DAEMON_SOCKET``, else ``/run/wa-daemon/...`` for root, else under ``$XDG_RUNTIME_DIR``."""
    env = os.environ if env is None else env
    if env.get(SOCKET_ENV):
        return Path(env[SOCKET_ENV])
    if _is_root() if root is None else root:
        return SYSTEM_SOCKET
    runtime = env.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return Path(runtime) / "wa-daemon" / SOCKET_NAME


def default_state_dir(env: Mapping[str, str] | None = None, *, root: bool | None = None) -> Path:
    """``/var/lib/wa-daemon`` for root, else ``$XDG_STATE_HOME/wa-daemon`` (``~/.local/state``)."""
    env = os.environ if env is None else env
    if _is_root() if root is None else root:
        return Path("/var/lib/wa-daemon")
    state = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "state")
    return Path(state) / "wa-daemon"


def socket_candidates(
    explicit: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    root: bool | None = None,
    system: Path = SYSTEM_SOCKET,
) -> tuple[Path, ...]:
    """Where a client looks for the daemon, in order: ``explicit`` or
    ``$WA_DAEMON_SOCKET`` alone; else the default path, then, for a non-root
    client, the system service's socket."""
    if explicit:
        return (Path(explicit),)
    env = os.environ if env is None else env
    path = default_socket_path(env, root=root)
    if env.get(SOCKET_ENV) or path == system:
        return (path,)
    return (path, system)


def pick_socket(candidates: tuple[Path, ...]) -> Path:
    """The first candidate that exists; the first one when none does (its error
    then names them all: see ``wa_daemon.client``)."""
    return next((path for path in candidates if path.exists()), candidates[0])


def resolve_socket_path(
    explicit: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    root: bool | None = None,
    system: Path = SYSTEM_SOCKET,
) -> Path:
    """The socket a client uses: ``explicit`` if given, else the default; a
    non-root client with no per-user daemon falls back to the system daemon's
    socket when that exists (a service user in the ``wa-clients`` group needs
    no ``WA_DAEMON_SOCKET`` then)."""
    return pick_socket(socket_candidates(explicit, env, root=root, system=system))
