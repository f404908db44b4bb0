"""Every shell example in the docs that uses wactl or the simulator runs as written,
against a real daemon (real Chromium) and a real simulator, so that a doc cannot
drift from the code (issue 16). Like tests/test_client_api.py for the Python examples.

The ``sh`` blocks of docs/*.md and README.md that mention ``wactl``, ``wa-daemon-sim``
or ``/__sim__/`` are run by bash with ``-e -o pipefail``. What the test supplies is
only what a reader supplies: the daemon's socket (``WA_DAEMON_SOCKET``) and the
simulator's URL (``SIM``, as simulator.md says), the value of an example's
placeholders (``$id``, ``ID``, ``D=...``), a phone that scans the QR codes a
waiting example shows, and a writable directory for example output paths. The
blocks that administer a host (systemd, sudo, pip, apt, backups of
/var/lib/wa-daemon, servers that run until stopped) are listed in ``HOST_ONLY``
with the reason; systemd/test-in-container.sh runs the systemd ones on a real
systemd. The list must name exactly the blocks that exist."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import DaemonProcess, needs_chromium, require_tool

ROOT = Path(__file__).resolve().parent.parent
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
_TIMEOUT = 150  # seconds: the bound of each block (a connect waits up to 120 s)

# (file, first line of the block) -> why it does not run here.
HOST_ONLY = {
    ("operations.md", "sudo -u myapp env WA_DAEMON_SOCKET=/run/wa-daemon/wa-daemon.sock /opt/wa-daemon/bin/wactl ping"):
        "the installed system service and a user myapp: systemd/test-in-container.sh",
    ("systemd.md", "sudo -u myapp env WA_DAEMON_SOCKET=/run/wa-daemon/wa-daemon.sock /opt/wa-daemon/bin/wactl ping"):
        "the installed system service and a user myapp: systemd/test-in-container.sh",
    ("operations.md", "wactl disconnect alice                       # browser closed, login kept"):
        "backs up /var/lib/wa-daemon with gpg: the system service's state directory",
    ("operations.md", "systemctl stop wa-daemon.socket wa-daemon.service"):
        "restores /var/lib/wa-daemon under systemd",
    ("simulator.md", "pip install 'wa-daemon[sim]'          # trio and hypercorn; segno comes with the plain install"):
        "installs packages, then starts servers that run until stopped",
    ("README.md", "pip install wa-daemon            # protocol, clients and wactl only: no browser stack"):
        "installs packages",
    ("README.md", "wa-daemon                      # socket: /run/wa-daemon/wa-daemon.sock as root,"):
        "starts the daemon, which runs until stopped (the test's daemon is started the same way)",
    ("README.md", "wa-daemon-sim --port 8080                       # prints its URL; POST /__sim__/scan plays the phone"):
        "starts the simulator and the daemon, which run until stopped (as the test's are)",
    ("README.md", "sudo bash systemd/install.sh          # from a checkout: Debian's chromium + python3-venv, a venv in /opt/wa-daemon,"):
        "installs the system service: systemd/test-in-container.sh",
    ("troubleshooting.md", "wactl health                     # is the daemon itself well? (exit 0 / 9 unhealthy / 5 unreachable)"):
        "ends with journalctl -u wa-daemon: the system service's journal",
}
# Example output paths a test may not write to, and where they go instead.
PATHS = {"/srv/qr/": "{tmp}/srv-qr/"}
# An example's own placeholders: names a reader replaces.
PLACEHOLDERS = {r"\bID\b": "doc-id"}


def shell_blocks() -> list[tuple[str, str]]:
    """(file name, block) of every sh block that uses wactl or the simulator."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"^```sh\n(.*?)^```", doc.read_text(), re.M | re.S):
            if re.search(r"\bwactl\b|wa-daemon-sim|/__sim__/", block):
                found.append((doc.name, block))
    return found


def test_the_host_only_list_names_existing_blocks() -> None:
    firsts = {(name, block.splitlines()[0]) for name, block in shell_blocks()}
    assert set(HOST_ONLY) - firsts == set(), "HOST_ONLY names blocks that no longer exist"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def _post(url: str, body: bytes) -> None:
    urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=10).read()


class Phone:
    """Scans the QR of every open page that shows one, and types the pairing code
    a page shows, while ``scanning`` is set (a person with a phone, for the examples
    that wait for one)."""

    def __init__(self, sim: str) -> None:
        self.sim = sim
        self.scanning = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        seen: dict[str, float] = {}  # ref -> when the phone first saw it
        while not self.stopped.wait(0.3):
            if not self.scanning.is_set():
                continue
            try:
                for page in _get(self.sim + "/__sim__/pages"):
                    if page["open"] and page["screen"] == "qr" and page["ref"]:
                        # A person takes a moment to point the phone: wactl shows the QR first.
                        if time.monotonic() - seen.setdefault(page["ref"], time.monotonic()) >= 2:
                            _post(self.sim + "/__sim__/scan", page["ref"].encode())
                    elif page["open"] and page["screen"] == "code":  # its owner types the code
                        pairing = _get(f"{self.sim}/__sim__/pages/{page['id']}")["pairing"]
                        _post(self.sim + "/__sim__/pair", json.dumps(pairing).encode())
            except OSError:
                pass  # a ref expired between the two calls: the next round gets the new one

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The simulator, a daemon driving real Chromium on it, and a bin directory
    where `wactl` and `wa-daemon-sim` run this tree's code."""
    tmp = tmp_path_factory.mktemp("docsh")
    short = Path(subprocess.run(["mktemp", "-d", "/tmp/docsh.XXXXXX"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip())
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, module in (("wactl", "wactl"), ("wa-daemon-sim", "wa_daemon.sim.main")):
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {sys.executable} -m {module} \"$@\"\n")
        (bin_dir / name).chmod(0o755)
    sim = subprocess.Popen([sys.executable, "-m", "wa_daemon.sim.main", "--port", "0", "--time-scale", "0.2",
                            "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    daemon = None
    phone = None
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().strip()
        assert url.startswith("http://"), url
        daemon = DaemonProcess(short / "d.sock", "--state-dir", str(short / "state"), "--wa-url", url + "/",
                               "--set", "qr_debounce=0.2", "--set", "connect_min_interval=0")
        daemon.wait_ready(30)
        phone = Phone(url)
        env = {**os.environ, "WA_DAEMON_SOCKET": str(daemon.sock), "SIM": url,
               "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "id": "doc-id"}
        yield {"env": env, "tmp": tmp, "sim": url, "phone": phone}
    finally:
        if phone is not None:
            phone.stop()
        if daemon is not None:
            daemon.stop(60)
        sim.terminate()
        sim.wait(15)
        shutil.rmtree(short, ignore_errors=True)


def _wactl(rig: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["wactl", *args], env=rig["env"], capture_output=True, text=True, timeout=_TIMEOUT,
                          check=False)


def _run_block(rig: dict[str, Any], block: str, **params: str) -> str:
    """``block`` with the reader's values (``NAME=...`` lines of ``params``, the
    placeholders, the output paths), run by bash; its stdout."""
    for name, value in params.items():
        block, n = re.subn(rf"^{name}=\S+$", f"{name}={value}", block, flags=re.M)
        assert n == 1, f"no {name}= line in the block"
    for pattern, value in PLACEHOLDERS.items():
        block = re.sub(pattern, value, block)
    for path, there in PATHS.items():
        there = there.format(tmp=rig["tmp"])
        if path in block:
            Path(there).mkdir(parents=True, exist_ok=True)
            block = block.replace(path, there)
    out = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], env=rig["env"], capture_output=True,
                         text=True, timeout=_TIMEOUT, check=False, cwd=rig["tmp"])
    assert out.returncode == 0, f"{block}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"
    return out.stdout


def _waiting_page(rig: dict[str, Any], session: str) -> None:
    """Start ``session`` and wait until its browser shows a QR on the simulator."""
    assert _wactl(rig, "connect", session, "--no-wait").returncode == 0
    result = _wactl(rig, "watch", session, "--until", "waiting_qr", "--timeout", "90")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_chromium
@pytest.mark.slow
def test_every_shell_example_runs_as_written(rig: dict[str, Any]) -> None:
    require_tool("jq", "jq")
    require_tool("curl", "curl")
    ran = set()
    blocks = {(name, block.splitlines()[0]): block for name, block in shell_blocks()}
    runnable = {key: block for key, block in blocks.items() if key not in HOST_ONLY}

    def block_of(name: str, first: str) -> str:
        ran.add((name, first))
        return runnable[(name, first)]

    # simulator.md: a phone scanning a page's QR, then a pairing code on another.
    _waiting_page(rig, "doc-scan")
    out = _run_block(rig, block_of("simulator.md", "# A phone scanning the QR of a page that is open and shows one (the list also holds"))
    assert '"device"' in out, out
    _waiting_page(rig, "doc-code")
    out = _run_block(rig, block_of("simulator.md", "P=$(curl -s $SIM/__sim__/pages | python3 -c 'import json,sys; print([p for p in json.load(sys.stdin) if p[\"open\"] and p[\"screen\"] == \"qr\"][-1][\"id\"])')"))
    assert '"device"' in out, out
    out = _run_block(rig, block_of("simulator.md", "curl -s $SIM/__sim__/devices"))
    devices = json.loads(out)
    linked = [d for d in devices if d["page"]]
    assert linked, devices
    out = _run_block(rig, block_of("simulator.md", "D=d-3f9a1c2b"), D=linked[0]["id"])
    for line in out.replace("}{", "}\n{").splitlines():
        assert "error" not in json.loads(line), out

    # cli.md: scripting examples. The first waits for a phone.
    rig["phone"].scanning.set()
    try:
        out = _run_block(rig, block_of("cli.md", 'wactl connect "$id" --png "/srv/qr/$id.png" --timeout 120'))
        assert out.strip().splitlines()[-1] == "connected", out
        assert (rig["tmp"] / "srv-qr" / "doc-id.png").read_bytes().startswith(b"\x89PNG")
        # README: the basic commands; alice waits for the phone, bob for a typed code.
        out = _run_block(rig, block_of("README.md", "wactl connect alice            # QR in the terminal, redrawn on refresh; exit 0 once connected"))
    finally:
        rig["phone"].scanning.clear()
    # messages.md and simulator.md: alice is connected; a message out, one in from the phone.
    out = _run_block(rig, block_of("messages.md", 'wactl send alice 12025550108 "hello" --idempotency-key order-4711'))
    assert "hello" in out, out
    devices = json.loads(_run_block(rig, block_of("simulator.md", "curl -s $SIM/__sim__/devices")))
    alice = [d for d in devices if d["page"]][-1]["id"]
    out = _run_block(rig, block_of("simulator.md", "# D: a linked device (GET /__sim__/devices)"), D=alice)
    assert '"ping"' in out and '"read"' in out, out
    _run_block(rig, block_of("cli.md", 'if ! err=$(wactl --json connect "$id" --no-wait 2>&1 >/dev/null); then'))
    assert _wactl(rig, "disconnect", "doc-scan").returncode == 0
    assert _wactl(rig, "watch", "doc-scan", "--until", "stopped", "--timeout", "60").returncode == 0
    out = _run_block(rig, block_of("cli.md", "wactl list --json --state failed --state logged_out | jq -r '.[] | \"\\(.session) \\(.reason)\"'"))
    assert all(re.fullmatch(r"\S+ \S+", line) for line in out.splitlines()), out  # "session reason"
    out = _run_block(rig, block_of("troubleshooting.md", "wactl list --state starting --state authenticating --state reconnecting"))
    assert "wa_event_loop_lag" in out, out

    # The stream example runs until interrupted (Ctrl-C): interrupt its wactl once a
    # session has moved, and read what jq printed of it.
    block = block_of("cli.md", "wactl watch --json | jq -c 'select(.type == \"state\") | [.status.session, .transition.to_state]'")
    watch = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", block], env=rig["env"], stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        time.sleep(2)  # the stream is open: only later transitions are printed
        assert _wactl(rig, "connect", "doc-watch", "--no-wait").returncode == 0
        assert _wactl(rig, "watch", "doc-watch", "--until", "waiting_qr", "--timeout", "90").returncode == 0
        (streamer,) = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(watch.pid), "-f", "wactl"],
                                                           capture_output=True, text=True, timeout=10).stdout.split()]
        os.kill(streamer, signal.SIGINT)
        printed, _ = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            os.killpg(watch.pid, signal.SIGKILL)
            watch.wait(10)
    assert ["doc-watch", "waiting_qr"] in [json.loads(line) for line in printed.splitlines()], printed

    assert set(runnable) - ran == set(), "shell examples that no test runs"
