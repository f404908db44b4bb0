"""Auth snapshots (browser/auth_snapshot.py): what goes in, and everything a hostile or
corrupted snapshot may try, refused before a byte reaches the profile."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zlib
from pathlib import Path

import pytest

from wa_daemon.daemon.browser import auth_snapshot as snap
from wa_daemon.daemon.browser.auth_snapshot import SnapshotError

CAP = 1 << 20


def profile_with_login(root: Path) -> Path:
    profile = root / "profile"
    idb = profile / "Default/IndexedDB/http_127.0.0.1_8080.indexeddb.leveldb"
    idb.mkdir(parents=True)
    (idb / "000003.log").write_bytes(b"token" * 50)
    (idb / "CURRENT").write_text("MANIFEST-000001\n")
    (idb / "LOCK").write_bytes(b"")
    (idb / "LOG").write_text("diagnostics")
    ls = profile / "Default/Local Storage/leveldb"
    ls.mkdir(parents=True)
    (ls / "000003.log").write_bytes(b"wa-sim-auth")
    (profile / "Default/Cookies").write_bytes(b"cookies are not needed")
    (profile / "Default/Cache").mkdir()
    (profile / "Default/Cache/data_0").write_bytes(b"x" * 1000)
    return profile


def forged(members: list[tarfile.TarInfo], contents: dict[str, bytes] | None = None) -> bytes:
    """A snapshot with a valid header and checksum around whatever tar we like."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            data = (contents or {}).get(m.name, b"")
            m.size = len(data) if m.isfile() else 0
            tar.addfile(m, io.BytesIO(data) if m.isfile() else None)
    payload = zlib.compress(raw.getvalue())
    return snap.MAGIC + bytes([snap.VERSION, snap.ZLIB]) + hashlib.sha256(payload).digest() + payload


def test_a_snapshot_holds_the_auth_dirs_only_and_restores_into_a_fresh_profile(tmp_path: Path) -> None:
    profile = profile_with_login(tmp_path)
    data = snap.pack(profile)
    assert data is not None and data == snap.pack(profile)  # deterministic: same bytes every time
    names = [n for n, _ in snap.unpack(data, CAP)]
    assert names == sorted(names)
    assert "Default/Local Storage/leveldb/000003.log" in names
    assert "Default/IndexedDB/http_127.0.0.1_8080.indexeddb.leveldb/000003.log" in names
    assert not [n for n in names if n.endswith(("LOCK", "LOG", "Cookies", "data_0"))]
    target = tmp_path / "other" / "profile"
    target.mkdir(parents=True)
    (target / "stale-file").write_text("from an older login on this host")
    snap.restore(snap.unpack(data, CAP), target)
    assert not (target / "stale-file").exists()  # a fresh profile, not a merge
    assert (target / "Default/Local Storage/leveldb/000003.log").read_bytes() == b"wa-sim-auth"
    assert not (target.parent / "profile.restoring").exists()
    assert snap.pack(tmp_path / "no-such-profile") is None


def test_lzma_and_zlib_both_read_back(tmp_path: Path) -> None:
    files = [("Default/IndexedDB/a", b"abc" * 100)]
    for kind in (snap.ZLIB, snap.LZMA):
        assert snap.unpack(snap.pack_files(files, kind), CAP) == files


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


GOOD = snap.pack_files([("Default/IndexedDB/x", b"1")])


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "no WAAUTH header"),
        (b"garbage" * 20, "no WAAUTH header"),
        (GOOD[:-3], "checksum mismatch"),
        (GOOD[:-1] + bytes([GOOD[-1] ^ 1]), "checksum mismatch"),
        (GOOD[:6] + b"\x09" + GOOD[7:], "format version 9"),
        (GOOD[:7] + b"\x07" + GOOD[8:], "unknown compression 7"),
        (b"x" * (CAP + 1), "over the cap"),
        (forged([tarfile.TarInfo("../../etc/passwd")], {"../../etc/passwd": b"root"}), "outside the profile"),
        (forged([tarfile.TarInfo("Default/IndexedDB/../../../x")], {}), "outside the profile"),
        (forged([tarfile.TarInfo("/etc/cron.d/x")]), "outside the profile"),
        (forged([tarfile.TarInfo("Default/Preferences")]), "is not auth data"),
        (forged([tarfile.TarInfo("Default/IndexedDB")]), "is not auth data"),  # a file where a dir belongs
        (forged([_link("Default/IndexedDB/l", "/etc/passwd", tarfile.SYMTYPE)]), "not a plain file"),
        (forged([_link("Default/IndexedDB/h", "/etc/passwd", tarfile.LNKTYPE)]), "not a plain file"),
        (forged([_link("Default/IndexedDB/d", "", tarfile.CHRTYPE)]), "not a plain file"),
    ],
)
def test_hostile_or_corrupted_snapshots_are_refused(tmp_path: Path, data: bytes, why: str) -> None:
    profile = tmp_path / "profile"
    with pytest.raises(SnapshotError, match=why):
        snap.restore(snap.unpack(data, CAP), profile)
    assert not profile.exists() and list(tmp_path.iterdir()) == []


def test_a_decompression_bomb_stops_at_its_limit() -> None:
    bomb = zlib.compress(b"\0" * (snap.EXPANSION * 4096 + 10), 9)
    data = snap.MAGIC + bytes([snap.VERSION, snap.ZLIB]) + hashlib.sha256(bomb).digest() + bomb
    assert len(data) < 4096
    with pytest.raises(SnapshotError, match="decompresses to more than"):
        snap.unpack(data, 4096)


def test_not_bytes_and_truncated_payloads_are_refused() -> None:
    with pytest.raises(SnapshotError, match="not str"):
        snap.unpack("WAAUTH", CAP)  # type: ignore[arg-type]
    cut = zlib.compress(b"a" * 5000)[:-8]
    data = snap.MAGIC + bytes([snap.VERSION, snap.ZLIB]) + hashlib.sha256(cut).digest() + cut
    with pytest.raises(SnapshotError, match="truncated"):
        snap.unpack(data, CAP)
    junk = b"not a tar at all" * 40
    payload = zlib.compress(junk)
    data = snap.MAGIC + bytes([snap.VERSION, snap.ZLIB]) + hashlib.sha256(payload).digest() + payload
    with pytest.raises(SnapshotError, match="not a valid tar"):
        snap.unpack(data, CAP)


def test_directories_above_the_auth_dirs_are_allowed(tmp_path: Path) -> None:
    data = forged([_dir("Default"), _dir("Default/IndexedDB"), tarfile.TarInfo("Default/IndexedDB/a")], {"Default/IndexedDB/a": b"1"})
    snap.restore(snap.unpack(data, CAP), tmp_path / "p")
    assert (tmp_path / "p/Default/IndexedDB/a").read_bytes() == b"1"
