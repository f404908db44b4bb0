"""Which directories of a Chromium profile carry the login, and what a snapshot of them costs.

Real Chromium on the simulator's module page (``wa-daemon-sim``, in this process). One
session is linked through the simulator (its QR scanned by the simulator's device) and
stopped cleanly; then, for every candidate set of profile directories, a fresh profile
holding only those is started by a fresh daemon: does it reach ``connected`` without a QR?
Also a snapshot taken while the browser runs (``--live``: right after ``connected`` and
``--live-delay`` s later). Sizes (zlib and lzma), pack and restore times per session.

    python bench/auth_snapshot.py            # about a minute
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

from wa_daemon import AsyncClient
from wa_daemon.daemon.app import Daemon
from wa_daemon.daemon.browser import auth_snapshot
from wa_daemon.daemon.ops.config import from_mapping
from wa_daemon.sim import SimEngine, SimOptions, serve_simulator

CANDIDATES: dict[str, tuple[str, ...]] = {
    "nothing": (),
    "IndexedDB + Local Storage (chosen)": auth_snapshot.AUTH_DIRS,
    "IndexedDB only": ("Default/IndexedDB",),
    "Local Storage only": ("Default/Local Storage",),
    "everything but IndexedDB and Local Storage": ("*rest*",),
}


def settings(root: Path, url: str) -> dict[str, Any]:
    return {
        "driver": "chromium", "whatsapp_url": url + "/", "state_dir": str(root / "state"),
        "socket_path": str(root / "d.sock"), "qr_debounce": 0.2,
    }


async def reach(wa: AsyncClient, sid: str, *states: str, timeout: float = 60) -> None:
    async with wa.watch(sid, until=states, timeout=timeout) as events:
        async for _ in events:
            pass


async def session_of(root: Path, url: str, then: Any) -> Any:
    daemon = Daemon(from_mapping(settings(root, url)))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        try:
            async with AsyncClient(daemon.socket_path) as wa:
                return await then(wa, daemon)
        finally:
            daemon.request_stop()


def copy_dirs(src: Path, dst: Path, dirs: tuple[str, ...]) -> None:
    dst.mkdir(parents=True)
    if dirs == ("*rest*",):
        for item in (src / "Default").iterdir():
            if item.name not in ("IndexedDB", "Local Storage"):
                target = dst / "Default" / item.name
                target.parent.mkdir(exist_ok=True)
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)  # type: ignore[operator]
        for item in src.iterdir():
            if item.name != "Default" and not item.name.startswith("Singleton"):
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, dst / item.name)  # type: ignore[operator]
        return
    for d in dirs:
        if (src / d).exists():
            shutil.copytree(src / d, dst / d)


async def main(args: argparse.Namespace) -> None:
    engine = SimEngine(SimOptions(time_scale=0.05))
    tmp = Path(tempfile.mkdtemp(prefix="wa-auth-"))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_simulator, engine.options, engine=engine))
        live: dict[str, bytes] = {}

        async def link(wa: AsyncClient, daemon: Daemon) -> None:
            await wa.connect("s")
            await reach(wa, "s", "waiting_qr")
            engine.scan((await wa.qr("s")).data)
            await reach(wa, "s", "connected")
            profile = daemon.driver.profile_of("s")  # type: ignore[union-attr]
            live["at connected"] = auth_snapshot.pack(profile) or b""
            await trio.sleep(args.live_delay)
            live[f"{args.live_delay:g} s after connected"] = auth_snapshot.pack(profile) or b""

        await session_of(tmp / "origin", url, link)
        profile = tmp / "origin/state/sessions/s/profile"
        whole = sum(f.stat().st_size for f in profile.rglob("*") if f.is_file() and not f.is_symlink())
        print(f"profile: {whole} bytes in all; Default/ holds", sorted(p.name for p in (profile / "Default").iterdir()))
        chosen = 0
        for name, dirs in CANDIDATES.items():
            size = sum(f.stat().st_size for d in dirs if d != "*rest*" for f in (profile / d).rglob("*") if f.is_file())
            chosen = max(chosen, size)
            print(f"  {name}: {size if dirs != ('*rest*',) else whole - chosen} bytes on disk")

        async def outcome(wa: AsyncClient, daemon: Daemon) -> str:
            await wa.connect("s")
            await reach(wa, "s", "connected", "waiting_qr")
            states = [t.to_state for t in await wa.history("s")]
            return "connected, no QR" if "waiting_qr" not in states and "connected" in states else "QR"

        print("\nfresh profile restored from:")
        for i, (name, dirs) in enumerate(CANDIDATES.items()):
            root = tmp / f"try{i}"
            copy_dirs(profile, root / "state/sessions/s/profile", dirs)
            started = time.monotonic()
            got = await session_of(root, url, outcome)
            print(f"  {name}: {got} ({time.monotonic() - started:.1f} s)")

        print("\nsnapshot of the stopped profile:")
        files = auth_snapshot._files(profile, auth_snapshot.AUTH_DIRS)
        raw = sum(len(d) for _, d in files)
        for label, kind in (("zlib -9", auth_snapshot.ZLIB), ("lzma -6", auth_snapshot.LZMA)):
            started = time.perf_counter()
            snap = auth_snapshot.pack_files(files, kind)
            packed = time.perf_counter() - started
            started = time.perf_counter()
            auth_snapshot.restore(auth_snapshot.unpack(snap, 1 << 24), tmp / "restored/profile")
            restored = time.perf_counter() - started
            print(f"  {label}: {len(files)} files, {raw} bytes -> {len(snap)} bytes; "
                  f"pack {packed * 1000:.1f} ms, check + restore {restored * 1000:.1f} ms")

        print("\nsnapshot taken while the browser runs:")
        for i, (label, snap) in enumerate(live.items()):
            root = tmp / f"live{i}"
            auth_snapshot.restore(auth_snapshot.unpack(snap, 1 << 24), root / "state/sessions/s/profile")
            print(f"  {label} ({len(snap)} bytes): {await session_of(root, url, outcome)}")
        nursery.cancel_scope.cancel()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live-delay", type=float, default=3.0)
    trio.run(main, parser.parse_args())
