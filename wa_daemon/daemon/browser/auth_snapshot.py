"""A session's login as bytes that can move to another host (docs/cluster.md, "Auth snapshots").

Sans I/O apart from reading and writing the profile's files, so it runs in a worker
thread. A snapshot is::

    b"WAAUTH" | version (1 byte) | compression (1 byte) | sha256 of the payload (32 bytes) | payload

where the payload is the compressed bytes of a deterministic tar (sorted names,
mtime 0, owner 0, modes 0o600/0o700) of the profile's auth-bearing directories
(:data:`AUTH_DIRS`, measured on the module page: docs/cluster.md). :func:`unpack`
trusts nothing: a wrong magic, version, checksum or size, or a member that is not a
plain file or directory under :data:`AUTH_DIRS`, raises :class:`SnapshotError` and
writes nothing.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import trio

__all__ = ["AUTH_DIRS", "SCRIPTED_LOGIN", "ProfileAuth", "SnapshotError", "pack", "pack_files", "restore", "unpack"]

MAGIC = b"WAAUTH"
VERSION = 1
ZLIB, LZMA = 1, 2
_HEADER = len(MAGIC) + 2 + 32

# Where Chromium keeps what a page stores (profile-relative). WhatsApp Web keeps its
# keys in IndexedDB and a few items in localStorage; whatsapp-web.js's RemoteAuth
# keeps the same two (plus nothing the page needs). Cookies, caches, Service Worker
# scripts and Session Storage are not needed to log in again (measured).
AUTH_DIRS = ("Default/IndexedDB", "Default/Local Storage")

# The scripted driver's stand-in for a login: one file where a page would keep it.
SCRIPTED_LOGIN = "Default/Local Storage/scripted-login"

# LevelDB's lock file is held by a running browser and means nothing to another one;
# its LOG files are diagnostics.
_SKIP = frozenset({"LOCK", "LOG", "LOG.old"})

# A decompressed snapshot may be at most this many times its cap (a "zip bomb" stops here).
EXPANSION = 20


class SnapshotError(Exception):
    """A snapshot that cannot be used; the message says why (never its contents)."""


def _files(profile: Path, dirs: Iterable[str]) -> list[tuple[str, bytes]]:
    """(profile-relative name, content) of every regular file under ``dirs``, sorted.
    Reads each file once, whole: a running browser may append meanwhile, and what was
    read is what goes in (LevelDB replays its log up to the last whole record)."""
    found: list[tuple[str, bytes]] = []
    for top in dirs:
        root = profile / top
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                if name in _SKIP:
                    continue
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue  # a compaction removed it between the listing and the read
                found.append((path.relative_to(profile).as_posix(), data))
    found.sort()
    return found


def pack_files(files: list[tuple[str, bytes]], compression: int = ZLIB) -> bytes:
    """A snapshot of ``files`` (profile-relative names, contents)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        dirs = sorted({str(p) for name, _ in files for p in PurePosixPath(name).parents if str(p) != "."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, 0
            tar.addfile(info)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, 0
            tar.addfile(info, io.BytesIO(data))
    body = raw.getvalue()
    payload = zlib.compress(body, 9) if compression == ZLIB else lzma.compress(body, preset=6)
    return MAGIC + bytes([VERSION, compression]) + hashlib.sha256(payload).digest() + payload


def pack(profile: Path, compression: int = ZLIB) -> bytes | None:
    """The snapshot of ``profile``'s login; None when it has none of :data:`AUTH_DIRS`."""
    files = _files(profile, AUTH_DIRS)
    return pack_files(files, compression) if files else None


def _decompress(kind: int, payload: bytes, limit: int) -> bytes:
    try:
        if kind == ZLIB:
            d = zlib.decompressobj()
            body = d.decompress(payload, limit + 1)
            whole = d.eof and not d.unconsumed_tail
        elif kind == LZMA:
            dl = lzma.LZMADecompressor()
            body = dl.decompress(payload, limit + 1)
            whole = dl.eof
        else:
            raise SnapshotError(f"unknown compression {kind}")
    except (zlib.error, lzma.LZMAError) as exc:
        raise SnapshotError(f"the payload does not decompress: {exc}") from None
    if len(body) > limit:
        raise SnapshotError(f"it decompresses to more than {limit} bytes")
    if not whole:
        raise SnapshotError("the payload is truncated")
    return body


def _member_name(member: tarfile.TarInfo) -> str:
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or name.startswith("/") or "\\" in name or "\x00" in name:
        raise SnapshotError(f"member {name[:80]!r} points outside the profile")
    clean = path.as_posix()
    if not (member.isfile() or member.isdir()):
        raise SnapshotError(f"member {name[:80]!r} is not a plain file or directory")
    inside = any(clean.startswith(top + "/") for top in AUTH_DIRS)
    above = member.isdir() and any(clean == top or top.startswith(clean + "/") for top in AUTH_DIRS)
    if not (inside or above):
        raise SnapshotError(f"member {name[:80]!r} is not auth data")
    return clean


def unpack(data: bytes, max_bytes: int) -> list[tuple[str, bytes]]:
    """The files of a snapshot (profile-relative names, contents), checked throughout."""
    if not isinstance(data, bytes):
        raise SnapshotError(f"a snapshot is bytes, not {type(data).__name__}")
    if len(data) > max_bytes:
        raise SnapshotError(f"{len(data)} bytes, over the cap of {max_bytes}")
    if len(data) < _HEADER or not data.startswith(MAGIC):
        raise SnapshotError("not an auth snapshot (no WAAUTH header)")
    version, kind = data[len(MAGIC)], data[len(MAGIC) + 1]
    if version != VERSION:
        raise SnapshotError(f"format version {version}, this daemon reads {VERSION}")
    digest, payload = data[len(MAGIC) + 2 : _HEADER], data[_HEADER:]
    if hashlib.sha256(payload).digest() != digest:
        raise SnapshotError("checksum mismatch (corrupted)")
    body = _decompress(kind, payload, max_bytes * EXPANSION)
    files: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tar:
            for member in tar:
                name = _member_name(member)
                if member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    files.append((name, f.read()))
    except tarfile.TarError as exc:
        raise SnapshotError(f"not a valid tar: {exc}") from None
    return files


def restore(files: list[tuple[str, bytes]], profile: Path) -> None:
    """Replace ``profile`` with a fresh one holding exactly ``files``: written beside it
    first, then swapped in, so a failure leaves no half profile."""
    fresh = profile.with_name(profile.name + ".restoring")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True, mode=0o700)
    base = fresh.resolve()
    for name, data in files:
        target = (fresh / name).resolve()
        if base not in target.parents:  # unpack() checked already; a second lock on the door
            shutil.rmtree(fresh, ignore_errors=True)
            raise SnapshotError(f"member {name[:80]!r} points outside the profile")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        target.write_bytes(data)
        target.chmod(0o600)
    shutil.rmtree(profile, ignore_errors=True)
    fresh.rename(profile)


class ProfileAuth:
    """The Chromium driver's export_auth and import_auth (browser/base.py, Driver)."""

    live: dict[str, Any]

    def profile_of(self, session_id: str) -> Path:
        raise NotImplementedError

    async def export_auth(self, session_id: str) -> bytes | None:
        # A live profile is read as it is: the page's IndexedDB transaction has committed
        # by `connected`, and LevelDB replays its log up to the last whole record (measured).
        return await trio.to_thread.run_sync(pack, self.profile_of(session_id))

    async def import_auth(self, session_id: str, data: bytes, max_bytes: int) -> None:
        if session_id in self.live:
            raise SnapshotError(f"session {session_id!r} has a running browser here")
        files = await trio.to_thread.run_sync(unpack, data, max_bytes)
        await trio.to_thread.run_sync(restore, files, self.profile_of(session_id))
