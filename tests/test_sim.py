"""The WhatsApp Web simulator: its model on a mock clock, then its HTTP side on loopback."""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from wa_daemon.sim import LINK_PREFIX, InvalidState, NotFound, SimEngine, SimModel, SimOptions, serve_simulator
from wa_daemon.sim.model import CODE_ALPHABET, CODE_LENGTH
from wa_daemon.sim.options import LOCALES
from wa_daemon.sim.records import BadRequest, Page
from wa_daemon.sim.refs import qr_rows
from wa_daemon.sim.server import page_html

from .helpers import CHROMIUM

DESKTOP_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
HEADLESS_UA = DESKTOP_UA.replace("Chrome/", "HeadlessChrome/")
IO_TIMEOUT = 20  # seconds of real time for any test touching sockets or processes


# ------------------------------------------------------------------ model, under MockClock


async def start_engine(nursery: trio.Nursery, **options: Any) -> SimEngine:
    engine = SimEngine(SimOptions(**options))
    await nursery.start(engine.run)
    return engine


def open_attached(engine: SimEngine, token: str | None = None) -> Page:
    """A page load whose event stream is open, as a live browser tab's is."""
    page = engine.open_page(token)
    engine.attach(page.id)
    return page


async def follow(engine: SimEngine, page_id: str, until: str) -> list[tuple[float, dict[str, Any]]]:
    """Every view of the page, with the time it appeared, up to the first with screen ``until``."""
    seen: list[tuple[float, dict[str, Any]]] = []
    version = -1
    while True:
        view = await engine.wait_view(page_id, version)
        assert view is not None, "page closed"
        version = view["version"]
        seen.append((trio.current_time(), view))
        if view["screen"] == until:
            return seen


def qr_timeline(seen: list[tuple[float, dict[str, Any]]], t0: float) -> list[tuple[float, str, Any]]:
    return [(round(t - t0, 6), v["screen"], v["ttl"]) for t, v in seen]


async def test_rotation_schedule_and_reload(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        engine = await start_engine(nursery)
        t0 = trio.current_time()
        page = open_attached(engine)
        seen = await follow(engine, page.id, until="reload")
        assert qr_timeline(seen, t0) == [
            (0, "qr", 60.0),
            (60, "qr", 20.0),
            (80, "qr", 20.0),
            (100, "qr", 20.0),
            (120, "qr", 20.0),
            (140, "qr", 20.0),
            (160, "reload", None),
        ]
        refs = [v["ref"] for _, v in seen[:-1]]
        assert len(set(refs)) == 6
        assert seen[-1][1]["ref"] == refs[-1], "the expired page keeps its last data-ref"
        assert seen[-1][1]["qr"] is None

        # The reload button waits as long as it takes.
        await trio.sleep(1000)
        assert engine.view(page.id)["screen"] == "reload"
        t1 = trio.current_time()
        engine.reload(page.id)
        view = engine.view(page.id)
        assert (view["screen"], view["ttl"]) == ("qr", 60.0)
        assert view["ref"] not in refs
        await trio.sleep(59.9)
        assert engine.view(page.id)["ref"] == view["ref"]
        await trio.sleep(0.2)
        assert engine.view(page.id)["ref"] != view["ref"]
        with pytest.raises(InvalidState):
            engine.reload(page.id)  # no reload button while a ref is shown
        await follow(engine, page.id, until="reload")
        assert trio.current_time() - t1 == pytest.approx(160)
        nursery.cancel_scope.cancel()


async def test_time_scale(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        engine = await start_engine(nursery, time_scale=0.05, loading_time=4)
        t0 = trio.current_time()
        page = open_attached(engine)
        seen = await follow(engine, page.id, until="reload")
        times = [t - t0 for t, _ in seen]
        assert times == pytest.approx([0, 3, 4, 5, 6, 7, 8])
        assert [v["ttl"] for _, v in seen[:-1]] == pytest.approx([3, 1, 1, 1, 1, 1])

        engine.reload(page.id)
        t1 = trio.current_time()
        engine.scan(engine.view(page.id)["ref"])
        seen = await follow(engine, page.id, until="app")
        assert [(round(t - t1, 6), v["screen"], v["percent"]) for t, v in seen] == [
            (0, "loading", 0),
            (0.05, "loading", 25),
            (0.1, "loading", 50),
            (0.15, "loading", 75),
            (0.2, "app", None),
        ]
        nursery.cancel_scope.cancel()


def test_ref_formats() -> None:
    def fields_are_keys(fields: list[str]) -> None:
        assert fields[0].startswith("2@") and len(fields[0]) > 10
        for field in fields[1:4]:
            assert len(base64.b64decode(field, validate=True)) == 32

    # --ref-format shapes the legacy page's data-ref; the module page always shows five fields.
    for fmt, n_fields in (("plain", 4), ("platform", 5), ("url", 4)):
        model = SimModel(SimOptions(ref_format=fmt, page="legacy"))  # type: ignore[arg-type]
        page = model.open_page(None, now=0.0)
        assert page.ref is not None
        shown = page.ref.shown
        if fmt == "url":
            assert shown.startswith(LINK_PREFIX)
            shown = shown[len(LINK_PREFIX) :]
        else:
            assert "://" not in shown
        fields = shown.split(",")
        assert len(fields) == n_fields, shown
        fields_are_keys(fields)
        if fmt == "platform":
            assert fields[4] == "WEB"
        assert page.ref.plain == ",".join(fields[:4])
        # The QR encodes exactly what data-ref holds.
        assert model.view(page)["qr"] == list(qr_rows(page.ref.shown))

    with pytest.raises(ValueError):
        SimOptions(ref_format="json")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SimOptions(ref_platform="a,b")


@pytest.mark.parametrize("fmt", ["plain", "platform", "url"])
@pytest.mark.parametrize("present", ["shown", "plain", "full"])
@pytest.mark.parametrize("page_kind", ["modules", "legacy"])
def test_scan_accepts_the_shown_ref_and_its_plain_form(fmt: str, present: str, page_kind: str) -> None:
    model = SimModel(SimOptions(ref_format=fmt, page=page_kind))  # type: ignore[arg-type]
    page = model.open_page(None, now=0.0)
    assert page.ref is not None
    device = model.scan(getattr(page.ref, present), now=1.0)
    assert device.page_id == page.id
    assert page.screen == "loading"


async def test_scan_links_the_page_showing_the_ref(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        engine = await start_engine(nursery, loading_time=3)
        other = open_attached(engine)
        page = open_attached(engine)
        await trio.sleep(65)  # second ref of the cycle
        ref = engine.view(page.id)["ref"]
        device = engine.scan(ref)
        assert device.page_id == page.id
        view = engine.view(page.id)
        assert (view["screen"], view["percent"], view["ref"], view["qr"]) == ("loading", 0, None, None)
        assert view["auth"] == {"device": device.id, "token": device.token}
        assert engine.device(device.id)["state"] == "loading"
        assert engine.view(other.id)["screen"] == "qr", "only the page showing the ref is linked"

        with pytest.raises(NotFound):
            engine.scan(ref)  # used up
        await follow(engine, page.id, until="app")
        assert trio.current_time() == pytest.approx(68)
        listed = engine.devices()
        assert [(d["id"], d["state"], d["page"], d["phone"]) for d in listed] == [
            (device.id, "linked", page.id, "online")
        ]
        assert listed[0]["linked_at"].endswith("+00:00")
        nursery.cancel_scope.cancel()


async def test_unknown_and_expired_refs_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        engine = await start_engine(nursery)
        page = open_attached(engine)
        first = engine.view(page.id)["ref"]
        for junk in ("", "2@nope", "2@nope,a,b,c", first + "x", LINK_PREFIX + "2@nope,a,b,c"):
            with pytest.raises(NotFound):
                engine.scan(junk)
        await trio.sleep(60)
        with pytest.raises(NotFound):
            engine.scan(first)  # rotated out
        await follow(engine, page.id, until="reload")
        with pytest.raises(NotFound):
            engine.scan(engine.view(page.id)["ref"])  # still in data-ref, but expired
        assert engine.devices() == []
        nursery.cancel_scope.cancel()


async def test_saved_auth_skips_the_qr(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        engine = await start_engine(nursery)
        page = open_attached(engine)
        device = engine.scan(engine.view(page.id)["ref"])
        await follow(engine, page.id, until="app")
        engine.detach(page.id)  # the browser closes
        await trio.sleep(engine.options.page_grace + 1)
        assert engine.pages() == []
        assert engine.device(device.id)["page"] is None

        issued = engine.model.refs_issued
        again = open_attached(engine, token=device.token)  # the same profile, restarted
        seen = await follow(engine, again.id, until="app")
        assert [v["screen"] for _, v in seen] == ["loading"] * 4 + ["app"]
        assert engine.model.refs_issued == issued, "no QR was ever shown"
        assert engine.device(device.id)["page"] == again.id

        stranger = open_attached(engine, token="not-a-token")
        view = engine.view(stranger.id)
        assert (view["screen"], view["clear_auth"], view["auth"]) == ("qr", True, None)
        nursery.cancel_scope.cancel()


async def linked(engine: SimEngine) -> tuple[Page, str, str]:
    page = open_attached(engine)
    device = engine.scan(engine.view(page.id)["ref"])
    await follow(engine, page.id, until="app")
    return page, device.id, device.token


async def test_logout_from_the_phone(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        engine = await start_engine(nursery)
        page, device_id, token = await linked(engine)
        engine.logout(device_id)
        view = engine.view(page.id)
        assert (view["screen"], view["clear_auth"], view["auth"]) == ("logged_out", True, None)
        assert engine.devices() == []
        with pytest.raises(NotFound):
            engine.logout(device_id)
        # What the page does next (/?post_logout=1) is a new load whose token is dead.
        after = open_attached(engine, token=token)
        assert engine.view(after.id)["screen"] == "qr"
        assert engine.view(after.id)["clear_auth"] is True
        nursery.cancel_scope.cancel()


async def test_logout_from_the_page_menu(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        engine = await start_engine(nursery)
        page, device_id, _ = await linked(engine)
        engine.page_logout(page.id)
        assert engine.view(page.id)["screen"] == "logged_out"
        assert engine.devices() == []
        nursery.cancel_scope.cancel()


async def test_conflict_and_use_here(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        engine = await start_engine(nursery)
        page, device_id, token = await linked(engine)
        engine.conflict(device_id)
        assert engine.view(page.id)["screen"] == "conflict"
        assert engine.device(device_id) | {"linked_at": None} == {
            "id": device_id,
            "state": "conflict",
            "linked_at": None,
            "page": None,
            "phone": "online",
            "number": None,
        }
        with pytest.raises(InvalidState):
            engine.conflict(device_id)  # no page holds the session now
        with pytest.raises(InvalidState):
            engine.hang(device_id)
        engine.take_over(page.id)
        assert engine.view(page.id)["screen"] == "app"
        assert engine.device(device_id)["state"] == "linked"
        with pytest.raises(InvalidState):
            engine.take_over(page.id)

        # A second window of the same profile takes the session; the first shows the conflict.
        second = open_attached(engine, token=token)
        assert engine.view(page.id)["screen"] == "conflict"
        await follow(engine, second.id, until="app")
        assert engine.device(device_id) | {"linked_at": None} == {
            "id": device_id,
            "state": "linked",
            "linked_at": None,
            "page": second.id,
            "phone": "online",
            "number": None,
        }
        engine.take_over(page.id)
        assert engine.view(second.id)["screen"] == "conflict"
        assert engine.device(device_id)["page"] == page.id
        nursery.cancel_scope.cancel()


async def test_phone_offline_then_back(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        engine = await start_engine(nursery, time_scale=0.5)
        page, device_id, _ = await linked(engine)
        engine.offline(device_id, duration=30)  # simulated seconds: 15 s at this scale
        assert engine.device(device_id)["state"] == "offline"
        assert engine.device(device_id)["phone"] == "offline"
        view = engine.view(page.id)
        assert (view["screen"], view["offline"]) == ("app", True)
        await trio.sleep(14.9)
        assert engine.view(page.id)["offline"] is True
        await trio.sleep(0.2)
        assert engine.view(page.id)["offline"] is False
        assert engine.device(device_id)["state"] == "linked"

        engine.offline(device_id)  # until told otherwise
        await trio.sleep(10_000)
        assert engine.device(device_id)["state"] == "offline"
        engine.online(device_id)
        assert engine.device(device_id)["state"] == "linked"
        assert engine.view(page.id)["offline"] is False
        nursery.cancel_scope.cancel()


async def test_hung_page(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        engine = await start_engine(nursery)
        page, device_id, token = await linked(engine)
        engine.hang(device_id)
        assert engine.view(page.id)["hung"] is True
        assert engine.device(device_id)["state"] == "hung"
        # The daemon kills the browser; the page's stream ends; a relaunch gets a live page.
        engine.detach(page.id)
        await trio.sleep(engine.options.page_grace + 1)
        assert engine.device(device_id)["state"] == "linked"
        fresh = open_attached(engine, token=token)
        await follow(engine, fresh.id, until="app")
        assert engine.view(fresh.id)["hung"] is False
        nursery.cancel_scope.cancel()


async def test_faults_need_a_known_device(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        engine = await start_engine(nursery)
        for fault in (engine.logout, engine.conflict, engine.offline, engine.online, engine.hang):
            with pytest.raises(NotFound):
                fault("d-nope")
        nursery.cancel_scope.cancel()


async def test_closed_page_frees_its_ref(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        engine = await start_engine(nursery, page_grace=5)
        page = open_attached(engine)
        ref = engine.view(page.id)["ref"]
        engine.detach(page.id)
        await trio.sleep(4)
        engine.attach(page.id)  # EventSource reconnected in time
        engine.detach(page.id)
        await trio.sleep(5.1)
        assert engine.pages() == []
        with pytest.raises(NotFound):
            engine.scan(ref)
        assert await engine.wait_view(page.id, -1) is None
        nursery.cancel_scope.cancel()


def test_model_is_pure_and_catches_up_without_a_timer() -> None:
    """No timer task ran: every call applies the deadlines up to its ``now`` first."""
    model = SimModel(SimOptions())
    page = model.open_page(None, now=0.0)
    model.attach(page.id, now=0.0)
    assert model.next_deadline() == 60.0
    first = page.ref
    assert first is not None
    with pytest.raises(NotFound):
        model.scan(first.shown, now=60.0)
    assert page.ref_index == 1 and model.next_deadline() == 80.0
    model.advance(1000.0)
    assert page.screen == "reload" and model.next_deadline() is None
    assert math.isinf(page.ref_deadline)


# ------------------------------------------------------------------ the module page's model, plain calls

PHONE = "12025550108"


def models(model: SimModel, page: Page) -> tuple[Any, ...]:
    """What the module page mirrors: Socket.state, hasSynced, Stream mode/info, progress, online."""
    view = model.view(page)
    return (
        view["state"],
        view["has_synced"],
        view["stream"]["mode"],
        view["stream"]["info"],
        view["progress"],
        not view["offline"],
    )


def fresh(**options: Any) -> tuple[SimModel, Page]:
    model = SimModel(SimOptions(**options))
    page = model.open_page(None, now=0.0)
    model.attach(page.id, now=0.0)
    return model, page


def test_module_states_fresh_profile_scan_and_sync() -> None:
    model, page = fresh(loading_time=4)
    assert models(model, page) == ("UNPAIRED", False, "QR", "NORMAL", 0, True)
    first = model.view(page)
    model.advance(60.0)  # the next ref: a new Conn.ref, the same registration keys
    second = model.view(page)
    assert second["conn_ref"] != first["conn_ref"] and second["keys"] == first["keys"]
    model.advance(160.0)
    assert models(model, page)[0] == "UNPAIRED_IDLE"
    assert model.view(page)["conn_ref"] is None
    model.reload(page.id, now=170.0)  # Cmd.refreshQR()
    assert models(model, page)[0] == "UNPAIRED"

    model.scan(model.view(page)["ref"], now=171.0)
    seen = [models(model, page)]
    for now in (172.0, 173.0, 174.0, 175.0):
        model.advance(now)
        seen.append(models(model, page))
    assert seen == [
        ("CONNECTED", False, "SYNCING", "SYNCING", 0, True),
        ("CONNECTED", False, "SYNCING", "SYNCING", 25, True),
        ("CONNECTED", False, "SYNCING", "SYNCING", 50, True),
        ("CONNECTED", False, "SYNCING", "SYNCING", 75, True),
        ("CONNECTED", True, "MAIN", "NORMAL", 100, True),
    ]


def test_five_field_qr_payload() -> None:
    model, page = fresh(ref_platform="MACOS")
    view = model.view(page)
    keys = view["keys"]
    assert set(keys) == {"static", "identity", "adv_secret", "platform"}
    five = ",".join([view["conn_ref"], keys["static"], keys["identity"], keys["adv_secret"], keys["platform"]])
    assert view["ref"] == five and five.endswith(",MACOS")
    assert view["conn_ref"].startswith("2@") and "," not in view["conn_ref"]
    assert all(len(base64.b64decode(keys[k], validate=True)) == 32 for k in ("static", "identity", "adv_secret"))
    assert view["qr"] == list(qr_rows(five)), "the canvas shows the five-field text"
    assert model.page_json(page)["ref"] == five
    other = model.open_page(None, now=0.0)
    assert model.view(other)["keys"] != keys, "keys belong to one page load"
    with pytest.raises(NotFound):
        model.scan(five.replace(",MACOS", ",WEB"), now=1.0)
    assert model.scan(five, now=1.0).page_id == page.id


def test_module_states_restore_conflict_offline() -> None:
    model, page = fresh(loading_time=0)
    device = model.scan(model.view(page)["ref"], now=1.0)
    assert models(model, page) == ("CONNECTED", True, "MAIN", "NORMAL", 100, True)

    again = model.open_page(device.token, now=2.0)  # restored login: never UNPAIRED
    assert models(model, again)[:2] == ("CONNECTED", True)
    assert models(model, page)[:3] == ("CONFLICT", True, "CONFLICT")
    model.take_over(page.id, now=3.0)  # Socket.takeover()
    assert models(model, page) == ("CONNECTED", True, "MAIN", "NORMAL", 100, True)

    model.offline(device.id, now=4.0, duration=10)
    assert models(model, page) == ("TIMEOUT", True, "OFFLINE", "OFFLINE", 100, False)
    model.advance(14.0)
    assert models(model, page) == ("CONNECTED", True, "MAIN", "NORMAL", 100, True)


def test_restored_login_loads_without_unpaired() -> None:
    model, page = fresh(loading_time=4)
    device = model.scan(model.view(page)["ref"], now=0.0)
    model.advance(4.0)
    restored = model.open_page(device.token, now=5.0)
    states = [models(model, restored)[:2]]
    for now in (6.0, 7.0, 8.0, 9.0):
        model.advance(now)
        states.append(models(model, restored)[:2])
    assert states == [("CONNECTED", False)] * 4 + [("CONNECTED", True)]


def test_logout_events_carry_source_and_reason() -> None:
    model, page = fresh(loading_time=0)
    device = model.scan(model.view(page)["ref"], now=0.0)
    second = model.open_page(device.token, now=1.0)  # page now in conflict
    model.page_logout(second.id, now=2.0)  # Socket.logout() on the second
    assert model.view(second)["logout"] == {"source": "page", "reason": "user_initiated"}
    assert model.view(page)["logout"] == {"source": "phone", "reason": "user_initiated"}
    assert model.view(second)["state"] is None, "the page keeps its state on its way out"
    with pytest.raises(InvalidState):
        model.page_logout(second.id, now=3.0)

    model, page = fresh(loading_time=0)
    device = model.scan(model.view(page)["ref"], now=0.0)
    with pytest.raises(BadRequest):
        model.logout(device.id, now=1.0, reason="Not A Reason")
    model.logout(device.id, now=1.0, reason="client_version_outdated")
    assert model.view(page)["logout"] == {"source": "phone", "reason": "client_version_outdated"}
    assert model.view(page)["clear_auth"] is True


def test_forced_states() -> None:
    model, page = fresh(loading_time=0)
    before = model.view(page)
    for name in ("DEPRECATED_VERSION", "TOS_BLOCK", "SMB_TOS_BLOCK", "PROXYBLOCK", "FROBNICATED", "X" * 40):
        model.force_state(page.id, name, now=1.0)
        view = model.view(page)
        assert (view["state"], view["forced"]) == (name, True)
        assert view["stream"] == before["stream"] and view["screen"] == "qr", "nothing else changes"
    for bad in ("tos_block", "", "X" * 41, "1ABC", "A-B"):
        with pytest.raises(BadRequest):
            model.force_state(page.id, bad, now=1.0)
    model.force_state(page.id, None, now=2.0)
    assert (model.view(page)["state"], model.view(page)["forced"]) == ("UNPAIRED", False)
    with pytest.raises(NotFound):
        model.force_state("p-nope", "TOS_BLOCK", now=2.0)

    device = model.scan(model.view(page)["ref"], now=3.0)
    model.force_device_state(device.id, "DEPRECATED_VERSION", now=4.0)
    assert model.view(page)["state"] == "DEPRECATED_VERSION"
    model.force_device_state(device.id, None, now=5.0)
    assert model.view(page)["state"] == "CONNECTED"
    model.conflict(device.id, now=6.0)
    with pytest.raises(InvalidState):  # no page holds the session
        model.force_device_state(device.id, "TOS_BLOCK", now=7.0)


def test_pairing_code_issue_replace_expire_and_pair() -> None:
    model, page = fresh(time_scale=0.5, code_ttl=100, loading_time=0)  # codes live 50 s
    ref = model.view(page)["ref"]
    pairing = model.request_code(page.id, PHONE, now=10.0)
    code = pairing.code
    assert len(code) == CODE_LENGTH and set(code) <= set(CODE_ALPHABET)
    view = model.view(page)
    assert (view["screen"], view["state"], view["ref"], view["qr"]) == ("code", "UNPAIRED", None, None)
    assert view["pairing"] == {"phone": PHONE, "code": code, "expires_in": 50.0}
    assert model.next_deadline() == 60.0
    with pytest.raises(NotFound):
        model.scan(ref, now=11.0)  # the QR is gone with the code screen

    replaced = model.request_code(page.id, PHONE, now=20.0).code  # asking again replaces it
    assert replaced != code  # 32**8 codes
    with pytest.raises(NotFound):
        model.pair(PHONE, code, now=21.0)
    model.advance(69.9)
    assert model.view(page)["pairing"]["code"] == replaced
    model.advance(70.0)
    view = model.view(page)
    assert (view["screen"], view["state"], view["pairing"]) == ("code_expired", "UNPAIRED_IDLE", None)
    with pytest.raises(NotFound):
        model.pair(PHONE, replaced, now=71.0)

    code = model.request_code(page.id, PHONE, now=72.0).code  # the daemon asks for a new one
    dashed = (code[:4] + "-" + code[4:]).lower()
    device = model.pair(PHONE, dashed, now=73.0)
    assert (device.page_id, device.number) == (page.id, PHONE)
    assert model.view(page)["state"] == "CONNECTED" and model.view(page)["pairing"] is None
    with pytest.raises(InvalidState):
        model.request_code(page.id, PHONE, now=74.0)


def test_pairing_code_wrong_other_number_and_malformed() -> None:
    model, page = fresh()
    code = model.request_code(page.id, PHONE, now=0.0).code
    wrong = "".join("2" if c != "2" else "3" for c in code)
    with pytest.raises(NotFound):
        model.pair(PHONE, wrong, now=1.0)
    with pytest.raises(NotFound):
        model.pair("4915112345678", code, now=1.0)  # another number's
    for phone, typed in (("+12025550108", code), ("123", code), ("1" * 16, code), (PHONE, "ABC"), (PHONE, "0OIU0OIU")):
        with pytest.raises(BadRequest):
            model.pair(phone, typed, now=1.0)
    for phone in ("", "12 025 550", "+12025550108", "abcdefgh"):
        with pytest.raises(BadRequest):
            model.request_code(page.id, phone, now=1.0)
    view = model.view(page)
    assert (view["screen"], view["pairing"]["code"], model.devices) == ("code", code, {}), "still unpaired, code valid"
    model.reload(page.id, now=2.0)  # "Link with QR code instead"
    assert (model.view(page)["screen"], model.view(page)["pairing"]) == ("qr", None)
    with pytest.raises(NotFound):
        model.pair(PHONE, code, now=3.0)


# ------------------------------------------------------------------ HTTP on loopback

# The first ref and a code last 10 s so a test's scan never races a rotation; loading takes 0.2 s.
STEADY = SimOptions(time_scale=0.01, first_qr_ttl=1000, loading_time=20, code_ttl=1000)
FAST = SimOptions(time_scale=0.01, loading_time=20)  # refs: 0.6 s then 0.2 s


@pytest.fixture
async def sim(nursery: trio.Nursery) -> tuple[str, SimEngine]:
    engine = SimEngine(STEADY)
    with trio.fail_after(IO_TIMEOUT):
        url = await nursery.start(partial(serve_simulator, STEADY, engine=engine))
    return url, engine


@pytest.fixture
async def client(sim: tuple[str, SimEngine]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim[0], headers={"user-agent": DESKTOP_UA}, timeout=IO_TIMEOUT) as c:
        yield c


async def sse_views(client: httpx.AsyncClient, page_id: str, send: trio.MemorySendChannel[dict[str, Any]]) -> None:
    """Read the page's event stream as EventSource would, forwarding each view."""
    async with send, client.stream("GET", f"/__sim__/pages/{page_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        buffer = ""
        async for chunk in response.aiter_text():
            buffer += chunk
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                lines = block.split("\n")
                if lines[0] == "event: view":
                    await send.send(json.loads(lines[1].removeprefix("data: ")))


async def next_view(views: trio.MemoryReceiveChannel[dict[str, Any]], screen: str, **fields: Any) -> dict[str, Any]:
    """The next view showing ``screen`` with ``fields`` (views that differ elsewhere are skipped)."""
    async for view in views:
        if view["screen"] == screen and all(view[k] == v for k, v in fields.items()):
            return view
    raise AssertionError(f"stream ended before screen {screen} {fields}")


async def open_page(client: httpx.AsyncClient, token: str | None = None) -> tuple[str, dict[str, Any]]:
    response = await client.post("/__sim__/pages", json={"token": token})
    assert response.status_code == 200
    body = response.json()
    return body["page"], body["view"]


@pytest.fixture
async def legacy_client(nursery: trio.Nursery) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a simulator serving the legacy page (--page legacy)."""
    options = dataclasses.replace(STEADY, page="legacy")
    with trio.fail_after(IO_TIMEOUT):
        url = await nursery.start(serve_simulator, options)
    async with httpx.AsyncClient(base_url=url, headers={"user-agent": DESKTOP_UA}, timeout=IO_TIMEOUT) as c:
        yield c


async def test_legacy_page_has_the_dom_login_contract(legacy_client: httpx.AsyncClient) -> None:
    client = legacy_client
    with trio.fail_after(IO_TIMEOUT):
        response = await client.get("/")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        html = response.text
        # Exact markup the Chromium driver relies on (rendered from these templates by sim.js).
        for markup in (
            '<div data-ref=""><canvas aria-label="Scan this QR code to link a device!" width="264" height="264">'
            "</canvas></div>",
            '<span><button type="button">Click to reload QR code</button></span>',
            '<progress value="0" max="100"></progress>',
            '<div id="pane-side"',
            '<span data-icon="search">',
            "WhatsApp is open in another window.",
            '<div role="button" tabindex="0" data-sim-action="use-here">Use here</div>',
            "Trying to reach phone",
            '<script src="/__sim__/static/legacy.js" defer></script>',
        ):
            assert markup in html, markup
        assert "<template" in html and "update your browser" not in html.lower()
        assert "modules.js" not in html and "wa_web_initial_startup" not in html
        assert (await client.get("/?post_logout=1")).text == html

        script = await client.get("/__sim__/static/legacy.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        for needle in ('"data-ref"', "div[data-ref]", "/?post_logout=1", "localStorage", "EventSource", "for (;;) {}"):
            assert needle in script.text, needle
        assert "require" not in script.text and "Debug" not in script.text
        assert (await client.get("/__sim__/static/sim.css")).status_code == 200
        assert (await client.get("/__sim__/static/index.html")).status_code == 404
        assert (await client.get("/__sim__/static/..%2Fserver.py")).status_code == 404


async def test_headless_user_agent_gets_the_update_page(client: httpx.AsyncClient) -> None:
    with trio.fail_after(IO_TIMEOUT):
        response = await client.get("/", headers={"user-agent": HEADLESS_UA})
        assert response.status_code == 200
        assert "Update your browser" in response.text
        assert "data-ref" not in response.text and "sim.js" not in response.text


async def test_scan_flow_over_http(client: httpx.AsyncClient) -> None:
    with trio.fail_after(IO_TIMEOUT):
        assert (await client.get("/__sim__/devices")).json() == []
        page_id, view = await open_page(client)
        assert view["screen"] == "qr"
        assert view["qr"] == list(qr_rows(view["ref"]))
        pages = (await client.get("/__sim__/pages")).json()
        assert [(p["id"], p["ref"]) for p in pages] == [(page_id, view["ref"])]

        async with trio.open_nursery() as nursery:
            send, views = trio.open_memory_channel[dict[str, Any]](100)
            nursery.start_soon(sse_views, client, page_id, send)
            ref = (await next_view(views, "qr"))["ref"]
            response = await client.post("/__sim__/scan", content=ref, headers={"content-type": "text/plain"})
            assert response.status_code == 200, response.text
            device_id = response.json()["device"]
            assert response.json()["page"] == page_id
            loading = await next_view(views, "loading")
            assert loading["auth"]["device"] == device_id
            token = loading["auth"]["token"]
            await next_view(views, "app")
            devices = (await client.get("/__sim__/devices")).json()
            assert [(d["id"], d["state"], d["page"]) for d in devices] == [(device_id, "linked", page_id)]
            assert (await client.get(f"/__sim__/devices/{device_id}")).json()["state"] == "linked"
            nursery.cancel_scope.cancel()

        for body in (ref, json.dumps({"ref": ref}), "2@nope,a,b,c"):
            response = await client.post("/__sim__/scan", content=body)
            assert response.status_code == 404, body
            assert "error" in response.json()
        assert (await client.post("/__sim__/scan", json={"nope": 1})).status_code == 400
        assert (await client.post("/__sim__/scan", content=b"")).status_code == 400
        assert (await client.get("/__sim__/scan")).status_code == 405

        # A Chromium restarted on the same profile: the stored token, straight to loading.
        again, view = await open_page(client, token)
        assert (view["screen"], view["ref"]) == ("loading", None)

        # JSON scan bodies work too.
        other, view = await open_page(client)
        response = await client.post("/__sim__/scan", json={"ref": view["ref"]})
        assert response.status_code == 200
        assert response.json()["page"] == other


async def test_event_stream_delivers_new_refs(nursery: trio.Nursery) -> None:
    with trio.fail_after(IO_TIMEOUT):
        url = await nursery.start(serve_simulator, FAST)
        async with httpx.AsyncClient(base_url=url, timeout=IO_TIMEOUT) as client:
            page_id, first = await open_page(client)
            async with trio.open_nursery() as readers:
                send, views = trio.open_memory_channel[dict[str, Any]](100)
                readers.start_soon(sse_views, client, page_id, send)
                refs: list[str] = []
                async for view in views:
                    if view["screen"] == "reload":
                        break
                    if not refs or refs[-1] != view["ref"]:
                        refs.append(view["ref"])
                assert refs[0] == first["ref"]
                # The stream sends the latest view, not a log: a slow reader may skip a ref.
                assert 2 <= len(refs) <= 6 and len(set(refs)) == len(refs)
                # The reload button, clicked through the page's API, starts a new cycle.
                response = await client.post(f"/__sim__/pages/{page_id}/reload")
                assert response.status_code == 200
                fresh = await next_view(views, "qr")
                assert fresh["ref"] not in refs and fresh["ttl"] == pytest.approx(0.6)
                assert (await client.post(f"/__sim__/pages/{page_id}/take-over")).status_code == 409
                readers.cancel_scope.cancel()
            assert (await client.get("/__sim__/pages/p-nope/events")).status_code == 404


async def test_faults_over_http(client: httpx.AsyncClient, sim: tuple[str, SimEngine]) -> None:
    with trio.fail_after(IO_TIMEOUT):
        page_id, view = await open_page(client)
        async with trio.open_nursery() as nursery:
            send, views = trio.open_memory_channel[dict[str, Any]](100)
            nursery.start_soon(sse_views, client, page_id, send)
            device_id = (await client.post("/__sim__/scan", content=view["ref"])).json()["device"]
            await next_view(views, "app")
            base = f"/__sim__/devices/{device_id}"

            response = await client.post(f"{base}/offline", json={"duration": 30})  # 0.3 s at this scale
            assert response.json()["state"] == "offline"
            await next_view(views, "app", offline=True)
            await next_view(views, "app", offline=False)
            assert (await client.post(f"{base}/offline?duration=nope")).status_code == 400
            assert (await client.post(f"{base}/offline")).json()["phone"] == "offline"
            assert (await client.post(f"{base}/online")).json()["state"] == "linked"

            assert (await client.post(f"{base}/conflict")).json()["state"] == "conflict"
            await next_view(views, "conflict")
            assert (await client.post(f"{base}/conflict")).status_code == 409
            assert (await client.post(f"/__sim__/pages/{page_id}/take-over")).status_code == 200
            await next_view(views, "app")

            assert (await client.post(f"{base}/hang")).json()["state"] == "hung"
            await next_view(views, "app", hung=True)

            assert (await client.post(f"{base}/logout")).status_code == 200
            logged_out = await next_view(views, "logged_out")
            assert logged_out["clear_auth"] is True and logged_out["auth"] is None
            assert (await client.get("/__sim__/devices")).json() == []
            assert (await client.post(f"{base}/logout")).status_code == 404
            nursery.cancel_scope.cancel()

        # The server notices the stream is gone (the page would close after page_grace).
        engine = sim[1]
        while engine.model.pages[page_id].streams:
            await engine.wait_changed()
        assert (await client.post("/__sim__/devices/d-nope/hang")).status_code == 404
        assert (await client.get("/__sim__/nope")).status_code == 404


async def test_module_page_shell(client: httpx.AsyncClient) -> None:
    with trio.fail_after(IO_TIMEOUT):
        response = await client.get("/")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        html = response.text
        assert '<html lang="en"' in html
        # The startup splash with its progress is the body's first content, as on every real shell.
        body = html[html.index("<body>") :]
        assert body.index('<div id="app"><div id="wa_web_initial_startup"') < body.index("<progress")
        assert '<progress value="0" max="100"></progress>' in body
        assert 'data-web-version="2.3000.1031980585"' in html and "data-ref" not in html
        assert '<script src="/__sim__/static/modules.js" defer' in html

        script = await client.get("/__sim__/static/modules.js")
        assert script.headers["content-type"].startswith("text/javascript")
        text = script.text
        # Plain assignments, so a hook trapping them sees them.
        for needle in ("window.__d = function", "window.require = function", "window.Debug = { VERSION"):
            assert needle in text, needle
        assert "defineProperty(window" not in text
        for module_id in (
            "WAWebSocketModel",
            "WAWebConnModel",
            "WAWebCmd",
            "WAWebOfflineHandler",
            "WAWebStreamModel",
            "WAWebNetworkStatus",
            "WAWebAltDeviceLinkingApi",
            "WABase64",
            "WAWebSignalStoreApi",
            "WAWebUserPrefsInfoStore",
            "WAWebUserPrefsMultiDevice",
            "WAWebAdvSignatureApi",
            "WAWebCompanionRegClientUtils",
        ):
            assert f'define("{module_id}"' in text, module_id
        for locale in LOCALES:
            assert re.search(rf'^    "?{re.escape(locale)}"?: {{$', text, re.M), f"no texts for {locale}"


def test_module_page_shell_options() -> None:
    # A list, as callers pass one: kept as a tuple.
    drop: Any = ["WAWebCmd", "WABase64"]
    options = SimOptions(locale="pt-BR", web_version="2.3000.1", drop_modules=drop)
    html = page_html(options).decode()
    assert '<html lang="pt-BR"' in html
    assert 'data-web-version="2.3000.1"' in html and 'data-drop-modules="WAWebCmd,WABase64"' in html
    assert options.drop_modules == ("WAWebCmd", "WABase64")
    assert b"legacy.js" in page_html(SimOptions(page="legacy"))
    assert SimOptions().weight == "light" and b'data-weight="light"' in page_html(SimOptions())
    assert b'data-weight="realistic"' in page_html(SimOptions(weight="realistic"))
    for bad in (
        {"weight": "heavy"},
        {"weight": "realistic", "page": "legacy"},  # the realistic app is the module page's
        {"locale": "fr"},
        {"page": "dom"},
        {"web_version": 'x"><script>'},
        {"web_version": ""},
        {"drop_modules": ["no spaces"]},
        {"drop_modules": "WAWebCmd"},
        {"code_ttl": 0},
    ):
        with pytest.raises(ValueError):
            SimOptions(**bad)


def test_command_line_options() -> None:
    from wa_daemon.sim.main import build_parser

    args = build_parser().parse_args(
        ["--page", "legacy", "--locale", "de", "--web-version", "2.3000.9", "--code-ttl", "30"]
        + ["--drop-module", "WAWebCmd", "--drop-module", "WABase64"]
    )
    assert (args.page, args.locale, args.web_version, args.code_ttl) == ("legacy", "de", "2.3000.9", 30.0)
    assert args.drop_module == ["WAWebCmd", "WABase64"]
    assert build_parser().parse_args([]).page == "modules"
    assert build_parser().parse_args([]).weight == "light"
    assert build_parser().parse_args(["--weight", "realistic"]).weight == "realistic"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--weight", "heavy"])


def test_command_line_rejects_a_realistic_legacy_page(capsys: pytest.CaptureFixture[str]) -> None:
    from wa_daemon.sim.main import main

    assert main(["--weight", "realistic", "--page", "legacy"]) == 2
    assert "needs the module page" in capsys.readouterr().err


async def test_pairing_code_over_http(client: httpx.AsyncClient) -> None:
    with trio.fail_after(IO_TIMEOUT):
        page_id, view = await open_page(client)
        base = f"/__sim__/pages/{page_id}/pairing-code"
        for body in ({"phone": "+1 202"}, {"phone": 12025550108}, {}, {"phone": PHONE, "notify": "yes"}):
            response = await client.post(base, json=body)
            assert response.status_code == 400, body
            assert "error" in response.json()
        assert (await client.post("/__sim__/pages/p-nope/pairing-code", json={"phone": PHONE})).status_code == 404
        response = await client.post(base, json={"phone": PHONE, "notify": False})
        assert response.status_code == 200
        code = response.json()["code"]
        assert response.json()["view"]["screen"] == "code"
        pairing = (await client.get(f"/__sim__/pages/{page_id}")).json()["pairing"]
        assert (pairing["phone"], pairing["code"]) == (PHONE, code)
        assert 0 < pairing["expires_in"] <= 10

        wrong = "".join("2" if c != "2" else "3" for c in code)
        for body, status in (
            ({"phone": PHONE, "code": wrong}, 404),
            ({"phone": "4915112345678", "code": code}, 404),
            ({"phone": PHONE}, 400),
            ({"phone": PHONE, "code": "??"}, 400),
            ({"code": code}, 400),
        ):
            response = await client.post("/__sim__/pair", json=body)
            assert response.status_code == status, body
            assert "error" in response.json()
        assert (await client.post("/__sim__/pair", content=b"not json")).status_code == 400
        assert (await client.get(f"/__sim__/pages/{page_id}")).json()["pairing"]["code"] == code

        response = await client.post("/__sim__/pair", json={"phone": PHONE, "code": f"{code[:4]}-{code[4:]}"})
        assert response.status_code == 200
        assert response.json()["page"] == page_id
        device = (await client.get(f"/__sim__/devices/{response.json()['device']}")).json()
        assert device["number"] == PHONE
        assert (await client.post(base, json={"phone": PHONE})).status_code == 409


async def test_forced_state_and_logout_reason_over_http(client: httpx.AsyncClient) -> None:
    with trio.fail_after(IO_TIMEOUT):
        page_id, view = await open_page(client)
        base = f"/__sim__/pages/{page_id}/state"
        for body in ({}, {"state": 1}, {"state": "lower"}):
            assert (await client.post(base, json=body)).status_code == 400, body
        response = await client.post(base, json={"state": "DEPRECATED_VERSION"})
        assert (response.json()["state"], response.json()["forced"]) == ("DEPRECATED_VERSION", True)
        pages = (await client.get("/__sim__/pages")).json()
        assert [p["state"] for p in pages] == ["DEPRECATED_VERSION"]
        assert (await client.post(base, json={"state": None})).json()["state"] == "UNPAIRED"

        # The phone scans the five fields the module page assembles.
        assert len(view["ref"].split(",")) == 5
        device_id = (await client.post("/__sim__/scan", content=view["ref"])).json()["device"]
        state = f"/__sim__/devices/{device_id}/state"
        assert (await client.post("/__sim__/devices/d-nope/state", json={"state": "TOS_BLOCK"})).status_code == 404
        response = await client.post(state, json={"state": "TOS_BLOCK"})
        assert response.status_code == 200 and response.json()["page_state"] == "TOS_BLOCK"
        assert (await client.post(state, json={"state": None})).json()["page_state"] == "CONNECTED"

        logout = f"/__sim__/devices/{device_id}/logout"
        assert (await client.post(logout, json={"reason": 7})).status_code == 400
        assert (await client.post(logout, json={"reason": "Bad Reason"})).status_code == 400
        response = await client.post(logout, json={"reason": "storage_quota_exceeded"})
        assert response.json() == {"device": device_id, "state": "logged_out", "reason": "storage_quota_exceeded"}
        view = (await client.get(f"/__sim__/pages/{page_id}")).json()
        assert view["logout"] == {"source": "phone", "reason": "storage_quota_exceeded"}


@pytest.mark.slow
async def test_command_prints_its_url_and_stops_on_sigterm(nursery: trio.Nursery) -> None:
    with trio.fail_after(IO_TIMEOUT):
        cmd = [sys.executable, "-m", "wa_daemon.sim.main", "--port", "0", "--time-scale", "0.05", "--quiet"]
        # run_process kills the command if the test is cancelled: no process outlives it.
        proc = await nursery.start(partial(trio.run_process, cmd, stdout=subprocess.PIPE, check=False))
        assert proc.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = await proc.stdout.receive_some(1)
            assert chunk, "the command exited before printing its URL"
            line += chunk
        url = line.decode().strip()
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=url, timeout=IO_TIMEOUT) as c:
            assert (await c.get("/__sim__/devices")).json() == []
            _, view = await open_page(c)
            assert view["ttl"] == pytest.approx(3.0)
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0


@pytest.mark.slow
def test_command_refuses_bad_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "wa_daemon.sim.main", "--time-scale", "0"],
        capture_output=True,
        text=True,
        timeout=IO_TIMEOUT,
        check=False,
    )
    assert out.returncode == 2
    assert "time_scale" in out.stderr


@pytest.mark.slow
def test_command_without_the_sim_extra_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['hypercorn'] = None  # as if not installed\n"
        "import wa_daemon.sim, wa_daemon.sim.model, wa_daemon.sim.main\n"
        "assert 'trio' not in sys.modules, 'the model and options need no trio'\n"
        "sys.exit(wa_daemon.sim.main.main(['--port', '0']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=IO_TIMEOUT, check=False)
    assert out.returncode == 1, out.stderr
    assert "pip install 'wa-daemon[sim]'" in out.stderr


# ------------------------------------------------------------------ real Chromium, when installed

# The daemon's launch flags (CHROMIUM_FLAGS in wa_daemon/daemon/browser/chromium.py), but for the
# DevTools endpoint: these tests speak over --remote-debugging-pipe.
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--no-first-run",
)
CHROMIUM_FLAGS += ("--no-default-browser-check", "--disable-background-networking", "--disable-component-update")
CHROMIUM_FLAGS += ("--disable-sync", "--disable-extensions", "--disable-default-apps", "--mute-audio")
CHROMIUM_FLAGS += ("--disable-blink-features=AutomationControlled", "--password-store=basic")
CHROMIUM_FLAGS += ("--disable-features=Translate,MediaRouter,OptimizationHints",)


class CdpError(Exception):
    pass


# Checked on every DOM change and, on the module page, on every change of its models
# (a forced Socket.state changes nothing else).
_WAIT_FOR = """new Promise(resolve => {
    const models = [];
    const check = () => {
        const v = (CONDITION);
        if (v) { observer.disconnect(); models.forEach(m => m.off('change', check)); resolve(v); }
    };
    const observer = new MutationObserver(check);
    observer.observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
    try {
        models.push(require('WAWebSocketModel').Socket, require('WAWebStreamModel').Stream,
                    require('WAWebConnModel').Conn, require('WAWebNetworkStatus').default);
        models.forEach(m => m.on('change', check));
    } catch (e) { models.length = 0; }  /* the legacy page, or modules not defined yet */
    check();
})"""


class Cdp:
    """Just enough of the DevTools protocol over --remote-debugging-pipe (NUL-framed JSON
    on fds 3 and 4): no websocket, no browser library, one call at a time."""

    def __init__(self, to_browser: trio.lowlevel.FdStream, from_browser: trio.lowlevel.FdStream) -> None:
        self._out, self._in = to_browser, from_browser
        self._buffer = b""
        self._id = 0
        self.session: str | None = None
        self.process: trio.Process | None = None
        self.tmp: Path | None = None  # its TMPDIR, removed by close_chromium

    async def aclose(self) -> None:
        await self._out.aclose()
        await self._in.aclose()

    async def call(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self.session and not browser:
            message["sessionId"] = self.session
        await self._out.send_all(json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = await self._in.receive_some(65536)
                assert chunk, "Chromium closed the DevTools pipe"
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise CdpError(reply["error"].get("message", ""))
                result: dict[str, Any] = reply["result"]
                return result

    async def open_tab(self, url: str, *, init_script: str | None = None) -> None:
        """A new tab on ``url``; ``init_script`` runs first in each of its documents."""
        target = await self.call("Target.createTarget", {"url": "about:blank"}, browser=True)
        attached = await self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, browser=True
        )
        self.session = attached["sessionId"]
        if init_script is not None:
            await self.call("Page.enable")
            await self.call("Page.addScriptToEvaluateOnNewDocument", {"source": init_script})
        await self.call("Page.navigate", {"url": url})

    async def js(self, expression: str) -> Any:
        reply = await self.call(
            "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}
        )
        assert "exceptionDetails" not in reply, reply
        return reply["result"].get("value")

    async def wait_for(self, condition: str) -> Any:
        """Resolve, inside the page, once ``condition`` (a JS expression) is truthy: checked on
        every DOM change, the way the daemon's driver will watch the page. A navigation
        destroys the promise with its document; then it is set up again in the new one."""
        while True:
            try:
                return await self.js(_WAIT_FOR.replace("CONDITION", condition))
            except CdpError as exc:
                message = str(exc).lower()
                if "context" not in message and "navigated" not in message:
                    raise
                await trio.sleep(0.05)  # the new document is not ready to evaluate in yet


# The modules drawn on CANVAS (SIZE modules a side, in a quiet zone of 4), each sampled at its centre.
READ_CANVAS_ROWS = """(() => {
    const canvas = CANVAS;
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const step = canvas.width / (SIZE + 8), rows = [];
    for (let y = 0; y < SIZE; y++) {
        let row = '';
        for (let x = 0; x < SIZE; x++) {
            const px = Math.floor((x + 4.5) * step), py = Math.floor((y + 4.5) * step);
            row += pixels[(py * canvas.width + px) * 4] < 128 ? '1' : '0';
        }
        rows.push(row);
    }
    return rows;
})()"""
READ_QR_CANVAS = """(() => {
    const holder = document.querySelector('div[data-ref]');
    const drawn = holder.querySelector(':scope > canvas[aria-label="Scan this QR code to link a device!"]');
    return {ref: holder.dataset.ref, rows: ROWS};
})()""".replace("ROWS", READ_CANVAS_ROWS.replace("CANVAS", "drawn"))


async def read_qr(cdp: Cdp) -> tuple[str, list[str]]:
    """The ref in data-ref and the QR modules on the canvas, from one moment."""
    while True:
        ref = await cdp.js("document.querySelector('div[data-ref]').dataset.ref")
        shown = await cdp.js(READ_QR_CANVAS.replace("SIZE", str(len(qr_rows(ref)))))
        if shown["ref"] == ref:  # else it rotated in between: read again
            return ref, shown["rows"]


async def launch_chromium(nursery: trio.Nursery, profile: Path, chromium: str = CHROMIUM) -> Cdp:
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    # The pipe must be fds 3 and 4 in Chromium; bash moves them there. Its ends are first
    # moved to 10 and up so neither can be fd 3 or 4 and be clobbered by the other's move.
    child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
    child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(to_browser_r)
    os.close(from_browser_w)
    args = [*CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}", f"--user-agent={DESKTOP_UA}"]
    shell = f'exec 3<&{child_in} 4>&{child_out} {child_in}<&- {child_out}>&-; exec "$0" "$@"'
    # Chromium's temp files (its singleton socket among them) in a directory of this
    # launch, removed on close, instead of one left in /tmp; short, for the socket path.
    tmp = Path(tempfile.mkdtemp(prefix="wa-chr-"))
    process = await nursery.start(
        partial(
            trio.run_process,
            ["bash", "-c", shell, chromium, *args],
            pass_fds=(child_in, child_out),
            env={**os.environ, "TMPDIR": str(tmp)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    )
    os.close(child_in)
    os.close(child_out)
    cdp = Cdp(trio.lowlevel.FdStream(to_browser_w), trio.lowlevel.FdStream(from_browser_r))
    cdp.process = process
    cdp.tmp = tmp
    return cdp


async def close_chromium(cdp: Cdp) -> None:
    await cdp.call("Browser.close", browser=True)
    await cdp.aclose()
    # Until it has exited, a new Chromium on the same profile would hand its URL to this one.
    assert cdp.process is not None
    await cdp.process.wait()
    if cdp.tmp is not None:
        shutil.rmtree(cdp.tmp, ignore_errors=True)


async def scan_shown_ref(cdp: Cdp, phone: httpx.AsyncClient) -> str:
    """Scan what the page shows, as a phone would: again if the ref rotated meanwhile."""
    while True:
        ref = await cdp.wait_for("document.querySelector('div[data-ref]:not(:has(button))')?.dataset.ref")
        response = await phone.post("/__sim__/scan", content=ref)
        if response.status_code == 200:
            device_id: str = response.json()["device"]
            return device_id
        assert response.status_code == 404


@pytest.mark.slow
async def test_real_chromium_follows_the_legacy_login_contract(tmp_path: Path, chromium: str) -> None:
    """The legacy page in a real headless Chromium: QR drawn, scan, restart on the same profile,
    conflict and "Use here", phone offline, logout to post_logout=1, reload button, hang."""
    # refs 0.6 s then 0.2 s; loading 1 s
    options = SimOptions(time_scale=0.01, loading_time=100, page="legacy")
    engine = SimEngine(options)
    profile = tmp_path / "profile"
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_simulator, options, engine=engine))
            async with httpx.AsyncClient(base_url=url, timeout=IO_TIMEOUT) as phone:
                cdp = await launch_chromium(nursery, profile, chromium)
                await cdp.open_tab(url + "/")
                ref = await cdp.wait_for("document.querySelector('div[data-ref]')?.dataset.ref")
                assert ref.startswith("2@") and len(ref.split(",")) == 4
                # The canvas shows a real QR of the ref: every module, sampled at its centre.
                drawn_ref, rows = await read_qr(cdp)
                assert rows == list(qr_rows(drawn_ref))
                # The ref rotates on the same element, as observers expect.
                await cdp.js("window.holder = document.querySelector('div[data-ref]'); window.was = holder.dataset.ref")
                await cdp.wait_for("document.querySelector('div[data-ref]').dataset.ref !== window.was")
                assert await cdp.js("window.holder === document.querySelector('div[data-ref]')")

                device_id = await scan_shown_ref(cdp, phone)
                percent = await cdp.wait_for(
                    "document.querySelector('progress') && String(document.querySelector('progress').value)"
                )
                assert int(percent) in (0, 25, 50, 75)
                await cdp.wait_for(
                    "document.querySelector('#pane-side') && document.querySelector('[data-icon=\"search\"]')"
                )
                assert await cdp.js("JSON.parse(localStorage.getItem('wa-sim-auth')).device") == device_id

                # A restarted Chromium on the same profile goes straight to the app.
                await close_chromium(cdp)
                issued = engine.model.refs_issued
                cdp = await launch_chromium(nursery, profile, chromium)
                await cdp.open_tab(url + "/")
                await cdp.wait_for("document.querySelector('#pane-side')")
                assert engine.model.refs_issued == issued
                base = f"/__sim__/devices/{device_id}"

                await phone.post(f"{base}/conflict")
                await cdp.wait_for("document.body.innerText.includes('WhatsApp is open in another window')")
                assert await cdp.js("document.querySelector('#pane-side')") is None
                await cdp.js(
                    "[...document.querySelectorAll('div[role=button]')]"
                    ".find(b => b.textContent === 'Use here').click(); 1"
                )
                await cdp.wait_for("document.querySelector('#pane-side')")
                assert (await phone.get(base)).json()["state"] == "linked"

                await phone.post(f"{base}/offline")
                await cdp.wait_for("document.body.innerText.includes('Trying to reach phone')")
                await phone.post(f"{base}/online")
                await cdp.wait_for("!document.body.innerText.includes('Trying to reach phone')")

                await phone.post(f"{base}/logout")
                await cdp.wait_for(
                    "location.search.includes('post_logout=1') && document.querySelector('div[data-ref]')?.dataset.ref"
                )
                assert await cdp.js("localStorage.getItem('wa-sim-auth')") is None

                # Let the cycle run out (0.6 s + 5 × 0.2 s), then click the reload button.
                await cdp.wait_for("document.querySelector('div[data-ref] > span > button')")
                last = await cdp.js("document.querySelector('div[data-ref]').dataset.ref")
                await cdp.js("document.querySelector('div[data-ref] > span > button').click(); 1")
                await cdp.wait_for(
                    f"!document.querySelector('div[data-ref] > span > button') && "
                    f"document.querySelector('div[data-ref]').dataset.ref !== {json.dumps(last)}"
                )

                # Hang: link again, then the renderer stops answering.
                device_id = await scan_shown_ref(cdp, phone)
                await cdp.wait_for("document.querySelector('#pane-side')")
                await phone.post(f"/__sim__/devices/{device_id}/hang")
                while True:  # the hang reaches the page over its event stream a moment later
                    with trio.move_on_after(1) as timed_out:
                        await cdp.js("1")
                    if timed_out.cancelled_caught:
                        break
                    await trio.sleep(0.05)
                assert (await phone.get(f"/__sim__/devices/{device_id}")).json()["state"] == "hung"
            nursery.cancel_scope.cancel()  # kills Chromium: its renderer will not close politely
    if cdp.tmp is not None:
        shutil.rmtree(cdp.tmp, ignore_errors=True)  # killed, not closed: its TMPDIR is ours to remove


@pytest.mark.slow
async def test_headless_chromium_default_user_agent_gets_the_update_page(
    nursery: trio.Nursery, tmp_path: Path, chromium: str
) -> None:
    with trio.fail_after(60):
        url = await nursery.start(serve_simulator, SimOptions())
        result = await trio.run_process(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={tmp_path}",
                "--dump-dom",
                url + "/",
            ],
            capture_stdout=True,
            capture_stderr=True,
        )
    assert "Update your browser" in result.stdout.decode()


# What a module-layer driver does at document start: trap the assignment of `require`
# and `__d` (as wa-js's loader does), and follow Socket, Cmd and progress once
# WAWebSocketModel is defined. The Cmd logout events go to sessionStorage, which
# outlives the navigation to /?post_logout=1.
RECORDER = """(() => {
    const rec = window.__rec = {states: [], progress: [], synced: [], splash: null, debugBefore: null};
    let req, define;
    const follow = () => {
        const Socket = req('WAWebSocketModel').Socket, Cmd = req('WAWebCmd').Cmd;
        const Offline = req('WAWebOfflineHandler').OfflineMessageHandler;
        rec.states.push(Socket.state);
        Socket.on('change:state', (model, state) => rec.states.push(state));
        Socket.on('change:hasSynced', (model, synced) => rec.synced.push([synced, Socket.state]));
        Cmd.on('offline_progress_update_from_bridge', () => rec.progress.push(Offline.getOfflineDeliveryProgress()));
        for (const name of ['logout', 'logout_from_bridge']) {
            Cmd.on(name, reason => sessionStorage.setItem('rec-logout', name + ':' + reason));
        }
    };
    Object.defineProperty(window, 'require', {configurable: true, get: () => req, set: value => {
        req = value;
        rec.splash = !!document.querySelector('#app > #wa_web_initial_startup progress[value="0"][max="100"]');
        rec.debugBefore = typeof window.Debug;
    }});
    Object.defineProperty(window, '__d', {configurable: true, get: () => define, set: value => {
        define = function (id) {
            const result = value.apply(this, arguments);
            if (id === 'WAWebSocketModel') Promise.resolve().then(follow);
            return result;
        };
    }});
})()"""

# The QR text exactly as whatsapp-web.js assembles it (AuthStore.js and Client.js).
WWJS_QR = """(async () => {
    const AuthStore = {};
    AuthStore.Conn = window.require('WAWebConnModel').Conn;
    AuthStore.Base64Tools = window.require('WABase64');
    AuthStore.RegistrationUtils = {
        ...window.require('WAWebCompanionRegClientUtils'),
        ...window.require('WAWebAdvSignatureApi'),
        ...window.require('WAWebUserPrefsInfoStore'),
        ...window.require('WAWebSignalStoreApi'),
    };
    const registrationInfo = await AuthStore.RegistrationUtils.waSignalStore.getRegistrationInfo();
    const noiseKeyPair = await AuthStore.RegistrationUtils.waNoiseInfo.get();
    const staticKeyB64 = AuthStore.Base64Tools.encodeB64(noiseKeyPair.staticKeyPair.pubKey);
    const identityKeyB64 = AuthStore.Base64Tools.encodeB64(registrationInfo.identityKeyPair.pubKey);
    const advSecretKey = await AuthStore.RegistrationUtils.getADVSecretKey();
    const platform = AuthStore.RegistrationUtils.DEVICE_PLATFORM;
    return AuthStore.Conn.ref + ',' + staticKeyB64 + ',' + identityKeyB64 + ',' + advSecretKey + ',' + platform;
})()"""

# whatsapp-web.js's requestPairingCode, one round.
WWJS_PAIRING_CODE = """(async () => {
    const L = window.require('WAWebAltDeviceLinkingApi');
    L.setPairingType('ALT_DEVICE_LINKING');
    await L.initializeAltDeviceLinking();
    return L.startAltLinkingFlow(PHONE, true);
})()"""

SOCKET = "require('WAWebSocketModel').Socket"
STREAM = "require('WAWebStreamModel').Stream"
QR_CANVAS = "document.querySelector('#app canvas[aria-label]')"


@pytest.mark.slow
async def test_real_chromium_module_page(tmp_path: Path, chromium: str) -> None:
    """The module page in a real headless Chromium, read as whatsapp-web.js reads it: splash
    first, OPENING -> UNPAIRED, the five-field QR scanned, loading to hasSynced; faults;
    Socket.logout(); then a pairing code and its link."""
    options = STEADY
    phone_number = "12025550108"
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_simulator, options)
            async with httpx.AsyncClient(base_url=url, timeout=IO_TIMEOUT) as phone:
                cdp = await launch_chromium(nursery, tmp_path / "profile", chromium)
                await cdp.open_tab(url + "/", init_script=RECORDER)
                await cdp.wait_for(f"window.__rec && __rec.states.length >= 2 && {QR_CANVAS}")
                rec = await cdp.js("window.__rec")
                assert rec["splash"] is True, "the startup splash and its progress come first"
                assert rec["debugBefore"] == "undefined"
                assert rec["states"][:2] == ["OPENING", "UNPAIRED"]
                assert await cdp.js("document.getElementById('wa_web_initial_startup')") is None
                assert await cdp.js("Debug.VERSION") == options.web_version
                assert await cdp.js("document.querySelector('[data-ref]')") is None
                assert await cdp.js(f"[{STREAM}.mode, {STREAM}.info]") == ["QR", "NORMAL"]

                qr = await cdp.js(WWJS_QR)
                fields = qr.split(",")
                assert len(fields) == 5 and fields[0].startswith("2@") and fields[4] == "WEB"
                assert all(len(base64.b64decode(f, validate=True)) == 32 for f in fields[1:4])
                rows = list(qr_rows(qr))
                size = str(len(rows))
                assert await cdp.js(READ_CANVAS_ROWS.replace("CANVAS", QR_CANVAS).replace("SIZE", size)) == rows

                response = await phone.post("/__sim__/scan", content=qr)
                assert response.status_code == 200, response.text
                device_id = response.json()["device"]
                await cdp.wait_for(f"{SOCKET}.hasSynced && document.querySelector('#pane-side')")
                rec = await cdp.js("window.__rec")
                assert rec["states"] == ["OPENING", "UNPAIRED", "PAIRING", "CONNECTED"]
                assert rec["synced"] == [[True, "CONNECTED"]]
                assert rec["progress"][-1] == 100 and rec["progress"] == sorted(rec["progress"])
                assert set(rec["progress"]) <= {0, 25, 50, 75, 100}
                assert await cdp.js(f"[{STREAM}.mode, {STREAM}.info]") == ["MAIN", "NORMAL"]
                base = f"/__sim__/devices/{device_id}"

                await phone.post(f"{base}/conflict")
                await cdp.wait_for(f"{SOCKET}.state === 'CONFLICT'")
                await cdp.js(f"{SOCKET}.takeover()")
                await cdp.wait_for(f"{SOCKET}.state === 'CONNECTED' && {SOCKET}.hasSynced")

                await phone.post(f"{base}/offline")
                await cdp.wait_for(f"{SOCKET}.state === 'TIMEOUT'")
                assert await cdp.js(f"[require('WAWebNetworkStatus').default.online, {STREAM}.info]") == [
                    False,
                    "OFFLINE",
                ]
                await phone.post(f"{base}/online")
                await cdp.wait_for(f"{SOCKET}.state === 'CONNECTED' && {STREAM}.info === 'NORMAL'")

                forced = await phone.post(f"{base}/state", json={"state": "TOS_BLOCK"})
                assert forced.json()["page_state"] == "TOS_BLOCK"
                await cdp.wait_for(f"{SOCKET}.state === 'TOS_BLOCK'")
                assert await cdp.js("!!document.querySelector('#pane-side')"), "nothing else changes"
                await phone.post(f"{base}/state", json={"state": None})
                await cdp.wait_for(f"{SOCKET}.state === 'CONNECTED'")

                # Socket.logout(): Cmd 'logout', then the page reloads to a new QR.
                await cdp.js(f"{SOCKET}.logout().then(() => 1)")
                await cdp.wait_for(
                    f"location.search.includes('post_logout=1') && window.__rec && __rec.states.includes('UNPAIRED') "
                    f"&& {QR_CANVAS}"
                )
                assert await cdp.js("sessionStorage.getItem('rec-logout')") == "logout:user_initiated"
                assert await cdp.js("localStorage.getItem('wa-sim-auth')") is None
                assert (await phone.get("/__sim__/devices")).json() == []

                # A pairing code instead of the QR; a wrong code leaves the page unpaired.
                code = await cdp.js(WWJS_PAIRING_CODE.replace("PHONE", json.dumps(phone_number)))
                assert len(code) == 8 and set(code) <= set("123456789ABCDEFGHJKLMNPQRSTVWXYZ")
                await cdp.wait_for(f"document.body.innerText.includes({json.dumps(code[:4] + '-' + code[4:])})")
                assert await cdp.js(f"{SOCKET}.state") == "UNPAIRED"
                assert await cdp.js(QR_CANVAS) is None
                wrong = "".join("2" if c != "2" else "3" for c in code)
                response = await phone.post("/__sim__/pair", json={"phone": phone_number, "code": wrong})
                assert response.status_code == 404
                response = await phone.post("/__sim__/pair", json={"phone": phone_number, "code": code.lower()})
                assert response.status_code == 200, response.text
                device_id = response.json()["device"]
                await cdp.wait_for(f"{SOCKET}.hasSynced && document.querySelector('#pane-side')")
                states = await cdp.js("__rec.states")
                assert states[-3:] == ["UNPAIRED", "PAIRING", "CONNECTED"]
                assert (await phone.get(f"/__sim__/devices/{device_id}")).json()["number"] == phone_number

                # The phone unlinks it: Cmd 'logout_from_bridge'.
                await phone.post(f"/__sim__/devices/{device_id}/logout")
                await cdp.wait_for("sessionStorage.getItem('rec-logout') === 'logout_from_bridge:user_initiated'")
                await close_chromium(cdp)
            nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_real_chromium_page_variants(tmp_path: Path, chromium: str) -> None:
    """--locale de, --page legacy and --drop-module, each a simulator of its own, in one browser."""
    steady = dataclasses.replace(STEADY, web_version="2.3000.1012345678")
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            german = await nursery.start(serve_simulator, dataclasses.replace(steady, locale="de"))
            legacy = await nursery.start(serve_simulator, dataclasses.replace(steady, page="legacy"))
            dropped = await nursery.start(
                serve_simulator, dataclasses.replace(steady, drop_modules=("WAWebSocketModel",))
            )
            cdp = await launch_chromium(nursery, tmp_path / "profile", chromium)

            await cdp.open_tab(german + "/")
            await cdp.wait_for(f"window.Debug && {QR_CANVAS}")
            assert await cdp.js("document.documentElement.lang") == "de"
            text = await cdp.js("document.body.innerText")
            assert "Öffne WhatsApp auf deinem Telefon" in text and "Open WhatsApp" not in text
            assert await cdp.js(f"{QR_CANVAS}.getAttribute('aria-label')") == (
                "Scanne diesen QR-Code, um ein Gerät zu verknüpfen!"
            )
            assert await cdp.js(f"{SOCKET}.state") == "UNPAIRED"
            assert await cdp.js("Debug.VERSION") == "2.3000.1012345678"

            await cdp.open_tab(legacy + "/")
            ref = await cdp.wait_for("document.querySelector('div[data-ref]')?.dataset.ref")
            assert ref.startswith("2@")
            assert await cdp.js("[typeof window.require, typeof window.__d, typeof window.Debug]") == [
                "undefined",
                "undefined",
                "undefined",
            ]

            await cdp.open_tab(dropped + "/")
            await cdp.wait_for(f"window.Debug && {QR_CANVAS}")
            error = await cdp.js("(() => { try { require('WAWebSocketModel'); } catch (e) { return e.message; } })()")
            assert "WAWebSocketModel" in error
            assert await cdp.js("typeof require('WAWebConnModel').Conn.ref") == "string"
            await close_chromium(cdp)
            nursery.cancel_scope.cancel()


# The realistic page's documented sizes (docs/simulator.md, "The realistic page").
REALISTIC_SIZES = {"chats": 300, "contacts": 1200, "messages": 30000}
REALISTIC_SHOWN_MESSAGES = 60
REALISTIC_MIN_HEAP = 60 * 1024 * 1024  # documented: about 95 MiB used; performance.memory is coarse
SIM_APP = "require('__debug').simApp"
# The chat shown first below the pinned ones (rows are placed with translateY), and the
# chat whose last message is the newest: after an arrival they are the same.
TOP_CHAT = """(() => {
    const chats = require('WAWebCollections').Chat.models;
    const newest = chats.reduce((a, b) => (b.t > a.t ? b : a));
    const firstUnpinned = chats.findIndex(c => !c.pin);
    const row = [...document.querySelectorAll('#pane-side [role=listitem]')]
        .find(r => r.style.transform === `translateY(${firstUnpinned * 72}px)`);
    return {newest: newest.pin ? null : newest.name, row: row && row.querySelector('.chat-title').textContent};
})()"""


@pytest.mark.slow
async def test_real_chromium_realistic_page(tmp_path: Path, chromium: str) -> None:
    """--weight realistic: after the scan the page builds a busy account (chats, contacts,
    messages in WAWebCollections; a virtualised chat list; the open chat), its heap grows to
    the documented size, and page timers keep it changing (messages arrive and move their
    chat to the top) without asking the simulator."""
    options = dataclasses.replace(STEADY, weight="realistic")
    engine = SimEngine(options)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_simulator, options, engine=engine))
            async with httpx.AsyncClient(base_url=url, timeout=IO_TIMEOUT) as phone:
                cdp = await launch_chromium(nursery, tmp_path / "profile", chromium)
                await cdp.open_tab(url + "/")
                await cdp.wait_for(f"window.Debug && {SOCKET}.state === 'UNPAIRED' && {QR_CANVAS}")
                # Nothing is built before the login: the collections exist and are empty.
                assert await cdp.js("require('WAWebCollections').Chat.length") == 0
                assert await cdp.js(f"{SIM_APP}.built") is False
                heap_before = await cdp.js("performance.memory ? performance.memory.usedJSHeapSize : null")
                response = await phone.post("/__sim__/scan", content=await cdp.js(WWJS_QR))
                assert response.status_code == 200, response.text
                await cdp.wait_for(f"{SOCKET}.hasSynced && {SIM_APP}.built")
                stats = await cdp.js(f"Object.assign({{}}, {SIM_APP})")
                assert {key: stats[key] for key in REALISTIC_SIZES} == REALISTIC_SIZES
                collections = "require('WAWebCollections')"
                assert await cdp.js(f"[{collections}.Chat.length, {collections}.Msg.length]") == [300, 30000]
                # A virtualised list: a pane as tall as every chat, rows only around the visible window.
                rows = await cdp.js("document.querySelectorAll('#pane-side [role=listitem]').length")
                assert 8 <= rows <= 40 and rows == stats["rows"]
                assert await cdp.js("document.querySelector('#pane-side .chat-list').style.height") == "21600px"
                assert (
                    await cdp.js("document.querySelectorAll('#pane-side img.avatar[src^=\"data:image/png\"]').length")
                    == rows
                )
                assert await cdp.js("document.querySelectorAll('#main .message').length") == REALISTIC_SHOWN_MESSAGES
                heap_after = await cdp.js("performance.memory ? performance.memory.usedJSHeapSize : null")
                if heap_after is not None:
                    assert heap_after >= REALISTIC_MIN_HEAP and heap_after > 10 * heap_before

                # Updates come from page timers: messages arrive, their chat goes to the top.
                version = engine.model.version
                arrived = stats["arrived"]
                await cdp.wait_for(f"{SIM_APP}.arrived >= {arrived + 2}")
                top = await cdp.js(TOP_CHAT)
                if top["newest"] is not None:  # else the newest went to a pinned chat, which stays put
                    assert top["row"] == top["newest"]
                assert await cdp.js(f"{collections}.Msg.length") == 30000  # the oldest give way, as on the real page
                assert engine.model.version == version, "updates must come from the page, not the server"
            nursery.cancel_scope.cancel()
