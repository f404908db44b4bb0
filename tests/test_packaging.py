"""The plain install is the protocol, the clients and wactl: no browser stack."""

from __future__ import annotations

import configparser
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from wa_daemon.paths import default_socket_path, default_state_dir

ROOT = Path(__file__).resolve().parent.parent
DAEMON_ONLY = {"trio", "trio_asyncio", "pyppeteer", "structlog", "prometheus_client", "h11", "urllib3", "websockets", "coredis"}


def test_install_requires_has_no_daemon_dependencies() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    base = {
        line.split(">")[0].split("=")[0].split("<")[0].strip().replace("-", "_").lower()
        for line in cfg["options"]["install_requires"].splitlines()
        if line.strip()
    }
    assert base == {"msgspec", "anyio", "segno"}
    extra = cfg["options.extras_require"]["daemon"]
    for name in ("trio", "trio-asyncio", "pyppeteer", "structlog", "prometheus_client", "h11"):
        assert name in extra
    # Redis is for several hosts only: its client is an extra of its own.
    assert "coredis" not in extra and "coredis" in cfg["options.extras_require"]["cluster"]


def test_every_package_of_the_tree_is_packaged() -> None:
    """A regular install (systemd/install.sh, .ci/setup) ships only the packages
    setup.cfg lists: one left out installs fine and fails at import (it happened:
    wa_daemon.daemon.rpc.handlers). An editable install would not notice."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = {line.strip() for line in cfg["options"]["packages"].splitlines() if line.strip()}
    mapped = {line.split("=")[0].strip(): line.split("=")[1].strip()
              for line in cfg["options"]["package_dir"].splitlines() if "=" in line}
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "wa_daemon").rglob("__init__.py")}
    for name, where in mapped.items():
        found |= {".".join((name, *init.parent.relative_to(ROOT / where).parts))
                  for init in (ROOT / where).rglob("__init__.py")}
    assert found == listed


def test_clients_import_without_the_daemon_stack() -> None:
    code = (
        "import sys, wa_daemon, wa_daemon.client, wa_daemon.protocol, wactl.main\n"
        f"bad = sorted(m for m in {sorted(DAEMON_ONLY)!r} if m in sys.modules)\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_plain_pip_install_in_a_fresh_venv(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(ROOT)], check=True, timeout=600, capture_output=True
    )
    listed = subprocess.run(
        [str(py), "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True, text=True, timeout=60
    ).stdout.lower()
    installed = {line.split("==")[0].replace("-", "_") for line in listed.splitlines()}
    assert installed.isdisjoint(DAEMON_ONLY), installed & DAEMON_ONLY
    subprocess.run([str(py), "-c", "from wa_daemon import Client, AsyncClient"], check=True, timeout=60)
    help_text = subprocess.run(
        [str(env_dir / "bin" / "wactl"), "--help"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    assert "connect" in help_text


def test_default_paths() -> None:
    assert default_socket_path({}, root=True) == Path("/run/wa-daemon/wa-daemon.sock")
    assert default_socket_path({"XDG_RUNTIME_DIR": "/run/user/7"}, root=False) == Path(
        "/run/user/7/wa-daemon/wa-daemon.sock"
    )
    assert default_socket_path({"WA_DAEMON_SOCKET": "/x.sock"}, root=True) == Path("/x.sock")
    assert default_state_dir({}, root=True) == Path("/var/lib/wa-daemon")
    assert default_state_dir({"XDG_STATE_HOME": "/s"}, root=False) == Path("/s/wa-daemon")
    assert default_state_dir({"HOME": "/h"}, root=False) == Path("/h/.local/state/wa-daemon")


def test_clients_fall_back_to_the_system_socket(tmp_path: Path) -> None:
    from wa_daemon.paths import resolve_socket_path

    system = tmp_path / "run" / "wa-daemon.sock"
    user = {"XDG_RUNTIME_DIR": str(tmp_path / "user")}
    assert resolve_socket_path(None, user, root=False, system=system) == tmp_path / "user/wa-daemon/wa-daemon.sock"
    system.parent.mkdir()
    system.touch()
    assert resolve_socket_path(None, user, root=False, system=system) == system
    (tmp_path / "user/wa-daemon").mkdir(parents=True)
    (tmp_path / "user/wa-daemon/wa-daemon.sock").touch()  # a per-user daemon wins
    assert resolve_socket_path(None, user, root=False, system=system) == tmp_path / "user/wa-daemon/wa-daemon.sock"
    assert resolve_socket_path(None, {**user, "WA_DAEMON_SOCKET": "/x"}, root=False, system=system) == Path("/x")
    assert resolve_socket_path("/given", user, root=False, system=system) == Path("/given")


def test_socket_candidates_are_the_paths_a_client_tries() -> None:
    from wa_daemon.paths import SYSTEM_SOCKET, socket_candidates

    per_user = Path("/r/wa-daemon/wa-daemon.sock")
    assert socket_candidates(None, {"XDG_RUNTIME_DIR": "/r"}, root=False) == (per_user, SYSTEM_SOCKET)
    assert socket_candidates(None, {}, root=True) == (SYSTEM_SOCKET,)
    assert socket_candidates(None, {"WA_DAEMON_SOCKET": "/x"}, root=False) == (Path("/x"),)
    assert socket_candidates("/given", {"XDG_RUNTIME_DIR": "/r"}, root=False) == (Path("/given"),)
