"""The clients' public API as documented: the async watch form (and the deprecated
one), and the examples of the client module's docstring, the README and
docs/clients.md, run for real against a real daemon."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import wa_daemon.client
from wa_daemon import AsyncClient, AsyncWatch, Client, State
from wa_daemon.protocol import Snapshot

from .helpers import DaemonProcess, running_daemon

ROOT = Path(__file__).resolve().parent.parent
_TIMEOUT = 60  # seconds: the bound of every subprocess here

FAST_SCAN = {"launch_delay": 0.05, "auth_delay": 0.1}


# ============================================================================ async watch


async def test_async_with_watch_opens_the_stream_without_a_warning(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir, scripted=FAST_SCAN) as d, AsyncClient(d.socket_path) as wa:
            await wa.connect("new")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                async with wa.watch("new", until=["waiting_qr"], timeout=10) as events:
                    seen = [event async for event in events]
            assert [w for w in caught if issubclass(w.category, DeprecationWarning)] == []
            assert isinstance(seen[0], Snapshot)
            assert events.end is not None and events.end.reason == "until"
            assert events.end.status is not None and events.end.status.state == State.WAITING_QR


async def test_await_watch_still_works_but_warns_at_the_caller(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir, scripted=FAST_SCAN) as d, AsyncClient(d.socket_path) as wa:
            await wa.connect("old")
            with pytest.warns(DeprecationWarning, match=r"async with wa\.watch") as caught:
                async with await wa.watch("old", until=["waiting_qr"], timeout=10) as events:
                    seen = [event async for event in events]
            (warning,) = [w for w in caught if issubclass(w.category, DeprecationWarning)]
            assert warning.filename == __file__
            assert isinstance(seen[0], Snapshot)
            assert events.end is not None and events.end.reason == "until"

            # The older still: awaited, iterated and closed by hand, never entered.
            with pytest.warns(DeprecationWarning):
                stream = await wa.watch("old", timeout=10)
            assert isinstance(await stream.__anext__(), Snapshot)
            await stream.aclose()
            assert (await wa.ping()).server_time is not None  # the connection is still sound


async def test_a_watch_never_entered_sends_nothing(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(sock_dir) as d, AsyncClient(d.socket_path) as wa:
            stream = wa.watch(None)
            assert isinstance(stream, AsyncWatch)
            with pytest.raises(RuntimeError, match="async with"):
                await stream.__anext__()
            await stream.aclose()  # nothing to cancel
            assert not wa._streams


# ============================================================================ documented examples


@pytest.fixture
def scanning_daemon(sock_dir: Path) -> Iterator[DaemonProcess]:
    """A daemon whose pages scan their first QR by themselves, as a phone would."""
    d = DaemonProcess(
        sock_dir / "d.sock", "--driver", "scripted",
        "--set", "scripted.launch_delay=0.05", "--set", "scripted.auth_delay=0.1",
        "--set", "scripted.auto_scan_after=0.3",
    )
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()


def _run(code: str, daemon: DaemonProcess) -> str:
    """Run ``code`` as a script against ``daemon`` (found through $WA_DAEMON_SOCKET, as
    the examples expect); its stdout. A deprecated call fails it: examples show the current API."""
    out = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code], capture_output=True, text=True, timeout=_TIMEOUT,
        env={**os.environ, "WA_DAEMON_SOCKET": str(daemon.sock)},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _indented_blocks(docstring: str) -> list[str]:
    """The code blocks of a docstring: paragraphs indented by four spaces."""
    paragraphs = docstring.split("\n\n")
    return [textwrap.dedent(p) + "\n" for p in paragraphs if p.strip() and p.startswith("    ")]


def _fenced_blocks(markdown: str, language: str = "python") -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, re.M | re.S)


def _events(stdout: str) -> list[str]:
    """The kind and state of each printed event: ``Snapshot starting``, ``StateChanged connected``."""
    return [
        f"{m[1]} {m[2]}"
        for m in re.finditer(r"^(Snapshot|StateChanged)\(.*?status=SessionStatus\(session='\w+', state=<State\.\w+: '(\w+)'>", stdout, re.M)
    ]


@pytest.mark.slow
def test_the_client_module_docstring_runs(scanning_daemon: DaemonProcess) -> None:
    doc = wa_daemon.client.__doc__
    assert doc is not None
    sync, async_ = _indented_blocks(doc)
    script = (
        "import anyio\nfrom wa_daemon.client import AsyncClient, Client\n"
        + sync
        + "print('--')\nasync def main():\n"
        + textwrap.indent(async_, "    ")
        + "anyio.run(main)\n"
    )
    before, after = _run(script, scanning_daemon).split("--\n")
    # The blocking part follows alice from the connect to connected...
    assert _events(before)[0].startswith("Snapshot")
    assert _events(before)[-1] == "StateChanged connected"
    # ...and the async part finds her connected: the snapshot, and the stream ends.
    assert _events(after) == ["Snapshot connected"]


@pytest.mark.slow
def test_the_readme_client_examples_run(scanning_daemon: DaemonProcess) -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use it from Python"):]
    sync, async_ = _fenced_blocks(section)[:2]
    assert "AsyncClient" in async_ and "trio.run(main)" in async_
    assert _events(_run(sync, scanning_daemon))[-1] == "StateChanged connected"
    assert _events(_run(async_, scanning_daemon)) == ["Snapshot connected"]


def _code(line: str) -> str:
    return line.split("#")[0].strip()


def _guide_blocks() -> tuple[list[str], list[str]]:
    """docs/clients.md's Python blocks: complete programs (they start with their
    imports), and excerpts of the examples."""
    blocks = _fenced_blocks((ROOT / "docs" / "clients.md").read_text())
    programs = [b for b in blocks if b.startswith(("import ", "from "))]
    return programs, [b for b in blocks if b not in programs]


@pytest.mark.slow
def test_the_clients_guide_programs_run(scanning_daemon: DaemonProcess) -> None:
    programs, _ = _guide_blocks()
    blocking, async_, retry = programs
    for program in (blocking, async_):
        stdout = _run(program.replace('"alice"', '"guide"'), scanning_daemon)
        assert _events(stdout)[-1] == "StateChanged connected" or _events(stdout) == ["Snapshot connected"]
        assert stdout.splitlines()[-1].startswith("End(id=") and "reason='until'" in stdout.splitlines()[-1]
    call = 'with Client() as wa:\n    connect_with_retry(wa, "bob")\n    print(wa.status("bob").state.value)\n'
    assert "def connect_with_retry" in retry
    assert _run(retry + call, scanning_daemon).strip() in {s.value for s in State}


def test_the_clients_guide_excerpts_are_lines_of_the_examples() -> None:
    """The abridged snippets (``...`` for what is left out) quote the examples that
    tests/test_guides.py runs, so they cannot drift from running code."""
    examples = "\n".join(p.read_text() for p in sorted((ROOT / "examples").glob("*.py")))
    lines = {_code(line) for line in examples.splitlines()}
    _, excerpts = _guide_blocks()
    assert len(excerpts) == 3
    for excerpt in excerpts:
        missing = [c for c in map(_code, excerpt.splitlines()) if c and "..." not in c and c not in lines]
        assert missing == [], excerpt


def test_client_methods_match_the_rpc_methods() -> None:
    """Every RPC method is a method of both clients, named alike (README, clients.md)."""
    from wa_daemon.protocol import METHODS

    for client in (Client, AsyncClient):
        assert [m for m in METHODS if not callable(getattr(client, m, None))] == []
