"""Per-session proxies: the URL forms, and real Chromium on the simulator behind a real
HTTP proxy with basic auth (tinyproxy) and a real SOCKS5 server (microsocks), each
started here on loopback. The password must reach no reply, event, metric or log line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from wa_daemon import AsyncClient, State
from wa_daemon.daemon.browser.process import find_orphans
from wa_daemon.errors import InvalidArgument
from wa_daemon.proxy import parse_proxy
from wa_daemon.sim import SimEngine, SimOptions, serve_simulator

from .helpers import DaemonProcess, needs_chromium, require_tool, running_daemon
from .test_chromium import SCALE, reach

PASSWORD = "pw-Zq81x-s3cret"  # unique enough to grep for


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class ProxyServer:
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serving(argv: list[str], port: int, log: Path, out: Any) -> Iterator[ProxyServer]:
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc)
        yield ProxyServer(port, log, proc)
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def tinyproxy(where: Path, user: str | None = None, password: str | None = None) -> Iterator[ProxyServer]:
    """Debian's tinyproxy in the foreground on loopback, logging every request it serves."""
    exe = require_tool("tinyproxy", "tinyproxy")
    where.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), where / "tinyproxy.log"
    lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 600", "MaxClients 100", "LogLevel Connect",
             f'LogFile "{log}"']
    if user is not None:
        lines.append(f"BasicAuth {user} {password}")
    conf = where / "tinyproxy.conf"
    conf.write_text("\n".join(lines) + "\n")
    log.touch()
    os.chmod(where, 0o777)  # tinyproxy run as root may drop to nobody: it must still write its log
    os.chmod(log, 0o666)
    with serving([exe, "-d", "-c", str(conf)], port, log, subprocess.DEVNULL) as server:
        yield server


@contextmanager
def microsocks(where: Path) -> Iterator[ProxyServer]:
    """Debian's microsocks on loopback; it prints each connection it makes."""
    exe = require_tool("microsocks", "microsocks")
    where.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), where / "microsocks.log"
    with open(log, "wb") as out, serving([exe, "-i", "127.0.0.1", "-p", str(port)], port, log, out) as server:
        yield server


@asynccontextmanager
async def simulators(count: int) -> AsyncIterator[list[tuple[SimEngine, str]]]:
    async with trio.open_nursery() as nursery:
        sims = []
        for _ in range(count):
            engine = SimEngine(SimOptions(time_scale=SCALE))
            sims.append((engine, await nursery.start(partial(serve_simulator, engine.options, engine=engine))))
        yield sims
        nursery.cancel_scope.cancel()


def encoded(value: Any) -> str:
    return msgspec.json.encode(value).decode()


# ------------------------------------------------------------------ the URL forms


VALID = {
    "http://10.0.0.5:3128": ("http", "10.0.0.5", 3128, "", ""),
    "HTTP://Proxy.Example:8080/": ("http", "proxy.example", 8080, "", ""),
    f"http://alice:{PASSWORD}@10.0.0.5:3128": ("http", "10.0.0.5", 3128, "alice", PASSWORD),
    "https://bob:p%40ss%3Aword@proxy.example:443": ("https", "proxy.example", 443, "bob", "p@ss:word"),
    "socks5://127.0.0.1:1080": ("socks5", "127.0.0.1", 1080, "", ""),
    "socks5://[::1]:1080": ("socks5", "[::1]", 1080, "", ""),
}

INVALID = {
    "ftp://10.0.0.5:21": "the ftp scheme is not supported",
    "socks4://10.0.0.5:1080": "the socks4 scheme is not supported",
    "10.0.0.5:3128": "expected scheme://host:port",
    "http://:3128": "no host",
    f"http://alice:{PASSWORD}@:3128": "no host",
    "http://10.0.0.5": "no port",
    f"http://alice:{PASSWORD}@10.0.0.5": "no port",
    "http://10.0.0.5:0": "port must be a number from 1 to 65535",
    f"http://alice:{PASSWORD}@10.0.0.5:99999": "port must be a number from 1 to 65535",
    "http://10.0.0.5:http": "port must be a number",
    f"socks5://alice:{PASSWORD}@10.0.0.5:1080": "a socks5 proxy takes no credentials",
    "socks5://alice@10.0.0.5:1080": "a socks5 proxy takes no credentials",
    "http://10.0.0.5:3128/path": "no path, query or fragment",
    f"http://alice:{PASSWORD}@10.0.0.5:3128/?x=1": "no path, query or fragment",
    "http://10.0.0.5:3128 --no-sandbox": "whitespace or control characters",
    f"http://a:{PASSWORD}\n@h:1": "whitespace or control characters",
    "http://-bad_host-:3128": "the host must be a name or an IP address",
    "http://[fe80::zz]:3128": "IPv6",
    f"http://:{PASSWORD}@10.0.0.5:3128": "a password needs a user name",
}


def test_the_accepted_forms_parse_and_mask_the_password() -> None:
    for text, (scheme, host, port, user, password) in VALID.items():
        proxy = parse_proxy(text)
        assert proxy is not None, text
        assert (proxy.scheme, proxy.host, proxy.port, proxy.username, proxy.password) == (
            scheme, host, port, user, password)
        assert proxy.server == f"{scheme}://{host}:{port}"
        for shown in (proxy.masked, str(proxy), repr(proxy)):
            assert not password or password not in shown
    assert parse_proxy(f"http://alice:{PASSWORD}@10.0.0.5:3128").masked == "http://alice:***@10.0.0.5:3128"  # type: ignore[union-attr]
    assert parse_proxy("") is None


def test_every_invalid_form_says_what_is_wrong_without_the_password() -> None:
    for text, why in INVALID.items():
        with pytest.raises(ValueError) as caught:
            parse_proxy(text)
        message = str(caught.value)
        assert message.startswith("proxy: ") and why in message, (text, message)
        assert PASSWORD not in message


async def test_connect_refuses_invalid_forms_before_anything_starts(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon, AsyncClient(daemon.socket_path) as wa:
            for text, why in INVALID.items():
                with pytest.raises(InvalidArgument) as caught:
                    await wa.connect("s", proxy=text)
                assert why in caught.value.message and PASSWORD not in str(caught.value) + encoded(caught.value.details), text
                assert caught.value.details.get("param") == "proxy"
            assert (await wa.list()) == []  # nothing was created, nothing started
            with pytest.raises(InvalidArgument):
                await wa.connect("s", proxy="x" * 3000)  # over the wire's cap


async def test_the_daemon_default_applies_unless_the_session_says_direct(sock_dir: Path) -> None:
    default = f"http://alice:{PASSWORD}@10.0.0.5:3128"
    with trio.fail_after(30):
        async with running_daemon(sock_dir, proxy=default, connect_min_interval=0) as daemon, \
                AsyncClient(daemon.socket_path) as wa:
            assert (await wa.connect("a")).proxy == "http://alice:***@10.0.0.5:3128"
            assert (await wa.connect("b", proxy="")).proxy is None  # "" is a choice: direct
            assert (await wa.connect("c", proxy="socks5://127.0.0.1:1080")).proxy == "socks5://127.0.0.1:1080"
            await wa.disconnect("c")
            # A later connect that leaves it nil keeps the session's own.
            assert (await wa.connect("c")).proxy == "socks5://127.0.0.1:1080"
            metrics = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in (await wa.metrics()).samples}
            assert metrics[("wa_sessions_by_proxy", (("proxy", "http"),))] == 1
            assert metrics[("wa_sessions_by_proxy", (("proxy", "socks5"),))] == 1
            assert metrics[("wa_sessions_by_proxy", (("proxy", "direct"),))] == 1
            assert PASSWORD not in (await wa.metrics(prometheus=True)).prometheus  # type: ignore[operator]
            assert PASSWORD not in encoded(await wa.list())
    with pytest.raises(ValueError, match="proxy: the ftp scheme is not supported"):
        from wa_daemon.daemon.ops.config import from_mapping

        from_mapping({"proxy": f"ftp://alice:{PASSWORD}@h:1"})


def test_check_config_shows_the_default_proxy_masked_and_refuses_a_bad_one(tmp_path: Path) -> None:
    from .test_config import _wa_daemon

    path = tmp_path / "c.toml"
    path.write_text(f'proxy = "http://alice:{PASSWORD}@10.0.0.5:3128"\n')
    shown = _wa_daemon("check-config", str(path))
    assert shown.returncode == 0, shown.stderr
    assert 'proxy = "http://alice:***@10.0.0.5:3128"' in shown.stdout and PASSWORD not in shown.stdout
    path.write_text(f'proxy = "socks5://alice:{PASSWORD}@10.0.0.5:1080"\n')
    refused = _wa_daemon("check-config", str(path))
    assert refused.returncode == 78 and "a socks5 proxy takes no credentials" in refused.stderr, refused
    assert PASSWORD not in refused.stdout + refused.stderr


# ------------------------------------------------------------------ real Chromium behind real proxies


@asynccontextmanager
async def chromium_daemon(sock_dir: Path, url: str, **overrides: Any) -> AsyncIterator[AsyncClient]:
    settings = {"driver": "chromium", "whatsapp_url": url + "/", "state_dir": str(sock_dir / "state"),
                "connect_min_interval": 0, "max_concurrent_launches": 4, **overrides}
    async with running_daemon(sock_dir, **settings) as daemon, AsyncClient(daemon.socket_path) as wa:
        yield wa
    assert find_orphans(sock_dir / "state" / "sessions") == []


@needs_chromium
async def test_proxy_failures_are_named_with_the_address_and_never_the_password(sock_dir: Path) -> None:
    with trio.fail_after(90), tinyproxy(sock_dir / "tp", "alice", PASSWORD) as proxy:
        async with simulators(1) as [(_, url)], chromium_daemon(sock_dir, url) as wa:
            wrong = f"http://alice:not-{PASSWORD}@127.0.0.1:{proxy.port}"
            nobody = f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}"
            none_given = f"http://127.0.0.1:{proxy.port}"
            for sid, text in (("wrong", wrong), ("nobody", nobody), ("nothing", none_given)):
                await wa.connect(sid, proxy=text)
            seen: list[Any] = []
            for sid in ("wrong", "nobody", "nothing"):
                seen += await reach(wa, sid, "failed", timeout=60)
            statuses = {s.session: s for s in await wa.list()}
            assert statuses["wrong"].reason == "proxy_auth_failed", statuses["wrong"]
            assert statuses["nothing"].reason == "proxy_auth_failed", statuses["nothing"]
            assert statuses["nobody"].reason == "proxy_unreachable", statuses["nobody"]
            for sid, status in statuses.items():
                assert f"127.0.0.1:{proxy.port if sid != 'nobody' else nobody.rsplit(':', 1)[1]}" in status.message
            text = encoded([statuses, seen, [await wa.history(sid) for sid in statuses]])
            assert PASSWORD not in text and "alice:***@" in text


def chromium_secrets(state: Path) -> str:
    """The command lines and environments of the session browsers of ``state``."""
    found = ""
    for pid in find_orphans(state / "sessions"):
        for what in ("cmdline", "environ"):
            try:
                found += Path(f"/proc/{pid}/{what}").read_bytes().decode(errors="replace") + "\n"
            except OSError:
                pass  # it exited meanwhile
    assert found, "no browser of this state directory is running"
    return found


@needs_chromium
async def test_a_session_behind_an_http_proxy_with_basic_auth_survives_a_restart(sock_dir: Path) -> None:
    state = sock_dir / "state"
    args = ("--driver", "chromium", "--state-dir", str(state), "--log-level", "debug",
            "--set", "connect_min_interval=0")
    proxy_url = f"http://alice:{PASSWORD}@127.0.0.1:{{port}}"
    seen: list[Any] = []
    with trio.fail_after(150), tinyproxy(sock_dir / "tp", "alice", PASSWORD) as proxy:
        async with simulators(1) as [(engine, url)]:
            first = DaemonProcess(sock_dir / "d.sock", *args, "--wa-url", url + "/")
            try:
                await trio.to_thread.run_sync(first.wait_ready)
                async with AsyncClient(first.sock) as wa:
                    started = await wa.connect("p", proxy=proxy_url.format(port=proxy.port),
                                               whatsapp_url=url + "/?via=proxied")
                    assert started.proxy == f"http://alice:***@127.0.0.1:{proxy.port}"
                    await wa.connect("d", whatsapp_url=url + "/?via=direct")
                    seen += await reach(wa, "p", "waiting_qr")
                    seen += await reach(wa, "d", "waiting_qr")
                    assert PASSWORD not in chromium_secrets(state)  # not on a command line, not in an environment
                    # The password's one home: the registry, and its WAL, the daemon's only.
                    stored = sorted(state.glob("registry.sqlite3*"))
                    assert len(stored) == 3 and {oct(f.stat().st_mode & 0o777) for f in stored} == {"0o600"}
                    assert PASSWORD.encode() in b"".join(f.read_bytes() for f in stored)
                    engine.scan((await wa.qr("p")).data)
                    seen += await reach(wa, "p", "connected")
                    # The page, its scripts and its event stream all came through the proxy.
                    log = proxy.text()
                    assert f"GET http://127.0.0.1:{url.rsplit(':', 1)[1]}/?via=proxied" in log, log[-2000:]
                    assert "/static/" in log and "via=direct" not in log
                    metrics = await wa.metrics(prometheus=True)
                    assert 'wa_sessions_by_proxy{proxy="http"} 1.0' in (metrics.prometheus or "")
                    assert 'wa_sessions_by_proxy{proxy="direct"} 1.0' in (metrics.prometheus or "")
                    replies = [await wa.status("p"), await wa.list(), await wa.history("p"), metrics, seen]
                wactl = await trio.run_process([sys.executable, "-m", "wactl", "--socket", str(first.sock), "status"],
                                               capture_stdout=True, capture_stderr=True)
                shown = (wactl.stdout + wactl.stderr).decode()
                assert f"alice:***@127.0.0.1:{proxy.port}" in shown, shown
            finally:
                await trio.to_thread.run_sync(first.stop)
            before = proxy.text().count("via=proxied")
            second = DaemonProcess(sock_dir / "d.sock", *args, "--wa-url", url + "/")
            try:
                await trio.to_thread.run_sync(second.wait_ready)
                async with AsyncClient(second.sock) as wa:
                    await reach(wa, "p", "connected")
                    history = await wa.history("p")
                    assert [t.to_state for t in history][-1] == State.CONNECTED
                    assert State.WAITING_QR not in [t.to_state for t in history]  # its login kept: no QR
                    assert (await wa.status("p")).proxy == f"http://alice:***@127.0.0.1:{proxy.port}"
                    replies.append(await wa.history("p"))
            finally:
                await trio.to_thread.run_sync(second.stop)
            assert proxy.text().count("via=proxied") > before  # the restored session used the same proxy
    assert PASSWORD not in encoded(replies) + shown
    journal = first.output()  # both daemons append to the same file
    launches = [msgspec.json.decode(line) for line in journal.splitlines() if '"browser_proxy"' in line]
    assert len(launches) == 2, journal[-3000:]  # one per daemon, the password masked
    assert {line["proxy"] for line in launches} == {f"http://alice:***@127.0.0.1:{proxy.port}"}
    assert PASSWORD not in journal


@needs_chromium
async def test_sessions_with_different_proxies_at_once_each_use_their_own(sock_dir: Path) -> None:
    """Four sessions at once: two behind their own tinyproxy (one with basic auth), one
    behind microsocks on a simulator of its own (SOCKS5 logs hosts, not URLs), one direct."""
    with trio.fail_after(120), tinyproxy(sock_dir / "tp1", "alice", PASSWORD) as one, \
            tinyproxy(sock_dir / "tp2") as two, microsocks(sock_dir / "socks") as socks:
        async with simulators(2) as [(_, url), (_, socks_url)], chromium_daemon(sock_dir, url) as wa:
            routes = {
                "one": f"http://alice:{PASSWORD}@127.0.0.1:{one.port}",
                "two": f"http://127.0.0.1:{two.port}",
                "socks": f"socks5://127.0.0.1:{socks.port}",
                "direct": "",
            }
            for sid, proxy in routes.items():
                page = (socks_url if sid == "socks" else url) + f"/?via={sid}"
                await wa.connect(sid, proxy=proxy, whatsapp_url=page)
            for sid in routes:
                await reach(wa, sid, "waiting_qr", timeout=60)
            shown = {s.session: s.proxy for s in await wa.list()}
            assert shown == {"one": f"http://alice:***@127.0.0.1:{one.port}", "two": routes["two"],
                             "socks": routes["socks"], "direct": None}
            samples = {s.labels["proxy"]: s.value for s in (await wa.metrics()).samples
                       if s.name == "wa_sessions_by_proxy"}
            assert samples == {"direct": 1, "http": 2, "https": 0, "socks5": 1}
        first, second = one.text(), two.text()
        assert "via=one" in first and "via=two" in second
        for log, own in ((first, "one"), (second, "two")):
            assert not [sid for sid in routes if sid != own and f"via={sid}" in log], log[-2000:]
        socks_port, sim_port = socks_url.rsplit(":", 1)[1], url.rsplit(":", 1)[1]
        connections = socks.text()
        assert f"connected to 127.0.0.1:{socks_port}" in connections, connections
        assert f":{sim_port}" not in connections  # the others never went through it
        assert f":{socks_port}" not in first + second
