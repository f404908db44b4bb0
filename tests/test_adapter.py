"""The page adapter's pure half: snapshots in, page events out, no browser; and the contract file."""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from wa_daemon.daemon.browser.adapter import (
    BINDING,
    FIRST_QR_TTL,
    NEXT_QR_TTL,
    PageReader,
    adapter_script,
    needed_modules,
    pairing_code_script,
)
from wa_daemon.daemon.browser.base import (
    AppShown,
    Conflict,
    Loading,
    LoggedOut,
    LoginRequired,
    PageInfo,
    PhoneOffline,
    QrExpired,
    QrShown,
    Refused,
)
from wa_daemon.daemon.browser.contract import DEFAULT, ContractError, load_contract

from .helpers import needs_chromium

QR = "2@ref1,c3RhdGlj,aWRlbnRpdHk=,YWR2,WEB"


def snap(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "modules": "ok", "found": [], "missing": [], "version": "2.3000.1", "state": "OPENING", "synced": False,
        "qr": None, "ref_ttl": None, "progress": None, "logouts": 0, "logout_reason": None,
        "mode": None, "info": None, "online": None, "dom": {},
    }
    base.update(fields)
    return base


def without_info(events: list[Any]) -> list[Any]:
    return [e for e in events if not isinstance(e, PageInfo)]


def feed_all(reader: PageReader, *snaps: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for s in snaps:
        out += without_info(reader.feed(s))
    return out


def test_startup_splash_is_not_loading_and_a_fresh_profile_goes_to_a_login() -> None:
    r = PageReader(DEFAULT)
    # The static splash of every real shell: a <progress> inside #wa_web_initial_startup.
    splash = {"modules": "pending", "dom": {"startup": True, "loading": False, "ref": None, "app": False}}
    assert feed_all(r, splash) == []
    assert not r.ready
    events = feed_all(r, snap(state="OPENING"), snap(state="UNPAIRED"), snap(state="UNPAIRED", qr=QR))
    assert events == [LoginRequired(False), QrShown(QR, FIRST_QR_TTL)]
    assert r.ready and not r.app


def test_qr_refs_rotate_expire_and_refresh() -> None:
    r = PageReader(DEFAULT)
    second = QR.replace("ref1", "ref2")
    events = feed_all(
        r,
        snap(state="UNPAIRED", qr=QR),
        snap(state="UNPAIRED", qr=second),
        snap(state="UNPAIRED_IDLE", qr=second),
        snap(state="UNPAIRED", qr=QR.replace("ref1", "ref3")),
    )
    assert events == [
        LoginRequired(False),
        QrShown(QR, FIRST_QR_TTL),
        QrShown(second, NEXT_QR_TTL),
        LoginRequired(True),
        QrExpired(),
        LoginRequired(False),
        QrShown(QR.replace("ref1", "ref3"), FIRST_QR_TTL),
    ]


def test_whatsapps_ref_ttl_wins_over_the_guess() -> None:
    r = PageReader(DEFAULT)
    assert feed_all(r, snap(state="UNPAIRED", qr=QR, ref_ttl=45000))[1] == QrShown(QR, 45.0)


def test_scan_loading_and_synced() -> None:
    r = PageReader(DEFAULT)
    events = feed_all(
        r,
        snap(state="UNPAIRED", qr=QR),
        snap(state="PAIRING"),
        snap(state="CONNECTED", progress=0),
        snap(state="CONNECTED", progress=50),
        snap(state="CONNECTED", progress=50, synced=True),
    )
    assert events[2:] == [Loading(None), Loading(0), Loading(50), AppShown()]
    assert r.app


def test_restored_login_never_asks_for_a_login() -> None:
    r = PageReader(DEFAULT)
    events = feed_all(r, snap(state="OPENING"), snap(state="CONNECTED"), snap(state="CONNECTED", synced=True))
    assert events == [Loading(None), AppShown()]


def test_conflict_and_takeover_show_the_app_again() -> None:
    r = PageReader(DEFAULT)
    feed_all(r, snap(state="CONNECTED", synced=True))
    assert feed_all(r, snap(state="CONFLICT", synced=True)) == [Conflict()]
    assert r.holds and not r.app
    assert feed_all(r, snap(state="CONNECTED", synced=True)) == [AppShown()]


@pytest.mark.parametrize(
    ("fields", "offline"),
    [({"state": "TIMEOUT", "synced": True}, True), ({"info": "OFFLINE"}, True), ({"online": False}, True),
     ({"info": "NORMAL", "online": True}, False)],
)
def test_connectivity(fields: dict[str, Any], offline: bool) -> None:
    r = PageReader(DEFAULT)
    feed_all(r, snap(state="CONNECTED", synced=True))
    events = feed_all(r, snap(**{"state": "CONNECTED", "synced": True, **fields}))
    assert (PhoneOffline(True) in events) is offline
    assert r.app or r.holds  # an outage has its own grace (phone_offline_grace), not app_lost_grace
    if offline:
        assert feed_all(r, snap(state="CONNECTED", synced=True)) == [AppShown()] * (fields.get("state") == "TIMEOUT") + [
            PhoneOffline(False)
        ]


@pytest.mark.parametrize(
    ("state", "kind"),
    [("PROXYBLOCK", "blocked"), ("TOS_BLOCK", "blocked"), ("SMB_TOS_BLOCK", "blocked"), ("DEPRECATED_VERSION", "deprecated")],
)
def test_refusals(state: str, kind: str) -> None:
    r = PageReader(DEFAULT)
    events = r.feed(snap(state=state))
    assert Refused(kind, state) in events
    info = next(e for e in events if isinstance(e, PageInfo))
    assert info.web_state == state and not info.unknown


def test_an_unknown_state_is_reported_and_changes_nothing() -> None:
    r = PageReader(DEFAULT)
    feed_all(r, snap(state="CONNECTED", synced=True))
    events = r.feed(snap(state="FROBNICATED", synced=True))
    assert events == [PageInfo("FROBNICATED", True, "2.3000.1", ())]
    assert r.holds  # not a lost page either: the app-lost watch leaves it alone
    # Coming back from it is not a new login or app: the app was never lost for the session.
    assert without_info(r.feed(snap(state="CONNECTED", synced=True))) == [AppShown()]


def test_logout_events_carry_whatsapps_reason() -> None:
    r = PageReader(DEFAULT)
    feed_all(r, snap(state="CONNECTED", synced=True))
    assert feed_all(r, snap(state="CONNECTED", synced=True, logouts=1, logout_reason="user_initiated")) == [
        LoggedOut("user_initiated")
    ]
    assert feed_all(r, snap(state="CONNECTED", synced=True, logouts=2, logout_reason=None)) == [LoggedOut(None)]


def test_page_info_reports_version_and_missing_items_on_change_only() -> None:
    r = PageReader(DEFAULT)
    first = r.feed(snap(missing=["WAWebNetworkStatus.default"]))
    assert PageInfo("OPENING", False, "2.3000.1", ("WAWebNetworkStatus.default",)) in first
    assert r.feed(snap(missing=["WAWebNetworkStatus.default"])) == []


def test_dom_fallback_reads_language_free_signals_only() -> None:
    r = PageReader(DEFAULT)
    legacy = {"modules": "missing", "missing": ["WAWebSocketModel.Socket"], "dom": {"startup": True}}
    assert r.feed(legacy) == []  # what has not loaded (yet) is no PageInfo: the launch names it if it never does
    assert not r.ready  # the splash alone is nothing to drive
    events = feed_all(
        r,
        {**legacy, "dom": {"ref": "2@a,b,c,d"}},
        {**legacy, "dom": {"ref": None, "reload": True}},
        {**legacy, "dom": {"loading": True, "percent": 25}},
        {**legacy, "dom": {"app": True}},
    )
    assert events == [
        LoginRequired(False),
        QrShown("2@a,b,c,d", FIRST_QR_TTL),
        QrExpired(),
        Loading(25),
        AppShown(),
    ]


def test_modules_arriving_after_the_fallback_are_read_from_scratch() -> None:
    r = PageReader(DEFAULT)
    feed_all(r, {"modules": "pending", "dom": {"app": True}})
    feed_all(r, snap(state="CONNECTED"))
    assert not r.app and not r.holds  # loading again: the app-lost watch times this
    assert feed_all(r, snap(state="CONNECTED", synced=True)) == [AppShown()]


def test_contract_file_overrides_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "contract.toml"
    f.write_text('[modules.socket]\nmodule = "WAWebSocketModelV2"\n[states]\nblocked = ["NEW_BLOCK"]\n')
    c = load_contract(f)
    assert c.modules.socket.module == "WAWebSocketModelV2" and c.modules.socket.path == "Socket"
    assert c.states.blocked == ["NEW_BLOCK"] and c.states.login == DEFAULT.states.login
    assert "WAWebSocketModelV2" in adapter_script(c)
    assert Refused("blocked", "NEW_BLOCK") in PageReader(c).feed(snap(state="NEW_BLOCK"))
    j = tmp_path / "c.json"
    j.write_text('{"names": {"linking_start": "startAltLinkingFlowV2"}}')
    assert "startAltLinkingFlowV2" in pairing_code_script(load_contract(j))
    for text, needle in [("[modules.sockt]\nmodule='x'\n", "sockt"), ("[modules\n", "TOML"), ("version = 3\n", "version")]:
        f.write_text(text)
        with pytest.raises(ContractError, match=needle):
            load_contract(f)
    with pytest.raises(ContractError, match="cannot read"):
        load_contract(tmp_path / "absent.toml")


def test_needed_modules() -> None:
    assert needed_modules(DEFAULT, pairing=False)[:3] == ["WAWebSocketModel.Socket", "WAWebConnModel.Conn", "WAWebCmd.Cmd"]
    assert "WAWebAltDeviceLinkingApi" in needed_modules(DEFAULT, pairing=True)


def test_the_contract_doc_names_every_key_with_its_built_in_value() -> None:
    import msgspec

    text = (Path(__file__).parent.parent / "docs" / "page-adapter.md").read_text()
    table = text[text.index("| section | keys"):]
    for section, values in msgspec.to_builtins(DEFAULT).items():
        if isinstance(values, str):
            assert f"`{section}` (`{values}`" in table
            continue
        for key, value in values.items():
            if section == "dom":
                assert f"`{key}`" in table
            elif section == "modules":
                shown = f"`{key}` (`{value['module']}`" + (f", `{value['path']}`)" if value["path"] else ")")
                assert shown in table, shown
            else:
                shown = f"`{key}` (" + ", ".join(f"`{v}`" for v in (value if isinstance(value, list) else [value])) + ")"
                assert shown in table, shown


def test_version_cache_files(tmp_path: Path) -> None:
    import os

    from wa_daemon.daemon.browser.pinning import KEEP_VERSIONS, VersionPin, read_cached, write_cached

    with pytest.raises(ValueError):
        write_cached(tmp_path, "../evil", b"x")
    path = write_cached(tmp_path / "c", "2.3000.1", b"<html>1</html>")
    assert path.read_bytes() == b"<html>1</html>" and path.stat().st_mode & 0o777 == 0o600
    for i in range(KEEP_VERSIONS + 3):
        p = write_cached(tmp_path / "c", f"2.3000.{100 + i}", b"x")
        os.utime(p, (1000 + i, 1000 + i))
    assert len(list((tmp_path / "c").glob("*.html"))) == KEEP_VERSIONS
    assert not list((tmp_path / "c").glob(".tmp-*"))
    pin = VersionPin("http://h/", tmp_path / "d", "2.3000.5")
    assert not pin.pinned and pin.remember("2.3000.5") is None  # nothing loaded yet
    pin.loaded = b"<html>live</html>"
    assert pin.remember("not a version") is None
    assert pin.remember("2.3000.5") is not None and read_cached(tmp_path / "d", "2.3000.5") == b"<html>live</html>"
    assert VersionPin("http://h/", tmp_path / "d", "2.3000.5").pinned


# ---------------------------------------------------------------------------- the script in Chromium

_MODULES_LATE_PAGE = """<!doctype html><html><head>
<script>
  // The adapter's periodic retry never fires here: only its traps can find the modules.
  window.setInterval = function () { return 0; };
  window.__reports = [];
  window["%(binding)s"] = function (key) { window.__reports.push(JSON.parse(key)); };
</script>
<script>(%(adapter)s)();</script>
<script>
  // As the simulator and the real page do: require first, the modules a moment later
  // with no script load of their own, Debug.VERSION with them.
  const defined = Object.create(null);
  window.__d = function (id, deps, factory) { defined[id] = factory; };
  window.require = function (id) {
    if (!(id in defined)) throw new Error("unknown module " + id);
    const module = { exports: {} };
    defined[id](window, window.require, null, window.require, module, module.exports);
    return module.exports;
  };
  const model = (attrs) => Object.assign({ on: function () {} }, attrs);
  setTimeout(function () {
    __d("WAWebSocketModel", [], (g, r, d, n, m) => { m.exports = { Socket: model({ state: "OPENING" }) }; });
    __d("WAWebConnModel", [], (g, r, d, n, m) => { m.exports = { Conn: model({ ref: null }) }; });
    __d("WAWebCmd", [], (g, r, d, n, m) => { m.exports = { Cmd: model({}) }; });
    window.Debug = { VERSION: "2.3000.1" };
    setTimeout(function () { document.body.textContent = JSON.stringify(window.__reports); }, 50);
  }, 50);
</script></head><body></body></html>"""


@needs_chromium
def test_modules_that_arrive_without_a_script_load_are_found_with_the_version(tmp_path: Path, chromium: str) -> None:
    # A page whose modules come after require, with no script load event (the
    # simulator's, and a bundle inlined by the real page): the adapter must find
    # them when Debug.VERSION is assigned, not at its next retry (which was up to
    # 0.5 s of every session's first QR).
    page = tmp_path / "page.html"
    page.write_text(_MODULES_LATE_PAGE % {"binding": BINDING, "adapter": adapter_script(DEFAULT)})
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=60,
    )
    body = re.search(r"<body>(.*)</body>", out.stdout, re.S)
    assert body is not None, out.stderr[-2000:]
    reports = json.loads(html.unescape(body.group(1)))
    hooked = [r for r in reports if r["modules"] == "ok"]
    assert hooked, f"the modules were never found: {[r['modules'] for r in reports]}"
    assert hooked[0]["state"] == "OPENING" and hooked[0]["version"] == "2.3000.1"
