"""Default socket and state paths: one resolution for daemon, client and CLI."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SOCKET_ENV = "WA_DAEMON_SOCKET"
SOCKET_NAME = "wa-daemon.sock"


def _is_root() -> bool:
    return os.geteuid() == 0


def default_socket_path(env: Mapping[str, str] | None = None, *, root: bool | None = None) -> Path:
    """``$WA_DAEMON_SOCKET``, else ``/run/wa-daemon/...`` for root, else under ``$XDG_RUNTIME_DIR``."""
    env = os.environ if env is None else env
    if env.get(SOCKET_ENV):
        return Path(env[SOCKET_ENV])
    if _is_root() if root is None else root:
        return Path("/run/wa-daemon") / SOCKET_NAME
    runtime = env.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return Path(runtime) / "wa-daemon" / SOCKET_NAME


def default_state_dir(env: Mapping[str, str] | None = None, *, root: bool | None = None) -> Path:
    """``/var/lib/wa-daemon`` for root, else ``$XDG_STATE_HOME/wa-daemon`` (``~/.local/state``)."""
    env = os.environ if env is None else env
    if _is_root() if root is None else root:
        return Path("/var/lib/wa-daemon")
    state = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "state")
    return Path(state) / "wa-daemon"


def resolve_socket_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The ``--socket`` value if given, else the default."""
    return Path(explicit) if explicit else default_socket_path()
