"""``wa-daemon probe``: does WhatsApp Web still offer what a session needs?

One Chromium, started exactly as the daemon starts its browsers (same flags,
same page adapter, a temporary profile), loads the page and reports each item
of the page contract as found or missing: the module system, every module,
the web version, WhatsApp's socket state, and a QR payload of the right shape.
It is the operator's canary after a WhatsApp update (docs/page-adapter.md).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..ops.config import Config
from .adapter import needed_modules, optional_modules
from .base import LaunchError, LaunchOptions
from .contract import PageContract, load_contract

EXIT_OK = 0
EXIT_MISSING = 1  # the page loaded but lacks something a session needs
EXIT_NO_PAGE = 3  # no browser, or no page at all


@dataclass
class Item:
    item: str
    kind: str  # module, global, state, qr
    found: bool
    required: bool
    detail: str = ""


@dataclass
class Report:
    url: str
    ok: bool = False
    web_version: str | None = None
    web_state: str | None = None
    error: str | None = None
    items: list[Item] = field(default_factory=list)

    def missing(self) -> list[str]:
        return [i.item for i in self.items if i.required and not i.found]


def qr_shape(qr: Any) -> tuple[bool, str]:
    """Whether a QR text has WhatsApp's five-field shape; the detail never shows the text."""
    if not isinstance(qr, str) or not qr:
        return False, "no QR payload"
    fields = qr.split(",")
    if len(fields) != 5:
        return False, f"{len(fields)} comma-separated fields, expected 5 (ref,staticKey,identityKey,advSecret,platform)"
    ref, static, identity, adv, platform = fields
    problems = []
    if not ref.startswith("2@"):
        problems.append("the ref does not start with '2@'")
    for name, value in (("staticKey", static), ("identityKey", identity)):
        try:
            if len(base64.b64decode(value, validate=True)) != 32:
                problems.append(f"{name} is not 32 bytes")
        except (binascii.Error, ValueError):
            problems.append(f"{name} is not base64")
    if not adv:
        problems.append("advSecret is empty")
    if not platform:
        problems.append("platform is empty")
    if problems:
        return False, "; ".join(problems)
    return True, f"five fields, platform {platform}"


def judge(snapshot: dict[str, Any], contract: PageContract, url: str) -> Report:
    """The report for what the page adapter last saw. Pure."""
    report = Report(url=url)
    found = set(snapshot.get("found") or [])
    missing = set(snapshot.get("missing") or [])
    system = snapshot.get("modules") in ("ok", "missing")
    report.items.append(
        Item("window.require", "global", system, True, "" if system else "WhatsApp's module system never appeared")
    )
    required = needed_modules(contract, pairing=False) + needed_modules(contract, pairing=True)
    for label in dict.fromkeys(required + optional_modules(contract)):
        ok = label in found and label not in missing
        report.items.append(Item(label, "module", ok, label in required))
    version = snapshot.get("version")
    report.web_version = str(version) if version else None
    report.items.append(Item(contract.version, "global", bool(version), False, report.web_version or "absent"))
    state = snapshot.get("state")
    report.web_state = str(state) if state else None
    known = {s for group in (contract.states.__struct_fields__) for s in getattr(contract.states, group)}
    report.items.append(
        Item(
            "socket state", "state", bool(state) and state in known, True,
            f"{state} ({'known' if state in known else 'not in the contract'})" if state else "never read",
        )
    )
    if state in contract.states.login or not state:
        ok, detail = qr_shape(snapshot.get("qr"))
    else:
        ok, detail = False, f"the page is in {state}, not asking for a login"
    report.items.append(Item("QR payload", "qr", ok, True, detail))
    report.ok = not report.missing()
    return report


async def run_probe(config: Config, url: str, timeout: float) -> Report:
    from .chromium import ChromiumConfig, ChromiumDriver, open_browser_loop

    contract = load_contract(config.page_contract)
    state_dir = Path(tempfile.mkdtemp(prefix="wa-probe-"))
    if config.browser_user:
        os.chmod(state_dir, 0o711)  # browser_user passes through to its profile, as in a state directory
    try:
        async with open_browser_loop():
            driver = ChromiumDriver(
                ChromiumConfig(
                    executable=config.chromium_path,
                    state_dir=state_dir,
                    url=url,
                    launch_timeout=min(config.launch_timeout, timeout),
                    extra_args=tuple(config.chromium_args),
                    browser_user=config.browser_user,
                    user_agent=config.user_agent,
                    contract=contract,
                ),
            )
            driver.start()
            try:
                async with driver.open(LaunchOptions("probe", url)) as browser:
                    # A fresh profile ends at a login: wait for its QR (or for the timeout).
                    with trio.move_on_after(timeout):
                        while True:
                            snap = browser.reader.prev
                            if snap.get("modules") == "ok" and snap.get("state") and (
                                snap.get("state") not in contract.states.waiting + contract.states.login
                                or snap.get("qr")
                            ):
                                break
                            await trio.sleep(0.1)
                    return judge(browser.reader.prev, contract, url)
            except LaunchError as exc:
                report = judge({}, contract, url)
                report.ok, report.error = False, str(exc)
                return report
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wa-daemon probe",
        description="Load WhatsApp Web in one Chromium started like the daemon's and report, per page contract "
        "item, found or missing. Exit 0 when everything a session needs is there, 1 when something is missing, "
        "3 when no page could be loaded.",
    )
    p.add_argument("--config", metavar="FILE", help="the daemon's configuration file (its chromium_path, "
                   "chromium_args, user_agent, page_contract and whatsapp_url are used)")
    p.add_argument("--url", help="the page (default: the configuration's whatsapp_url)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="how long to wait for the page (default 60)")
    return p


def render(report: Report) -> str:
    lines = [f"{report.url}: {'ok' if report.ok else 'MISSING ' + ', '.join(report.missing()) or 'failed'}"]
    if report.error:
        lines.append(f"error: {report.error}")
    lines.append(f"web version: {report.web_version or '-'}   socket state: {report.web_state or '-'}")
    for i in report.items:
        mark = "found  " if i.found else ("MISSING" if i.required else "absent ")
        need = "required" if i.required else "optional"
        lines.append(f"  {mark}  {i.item:<40} {need:<8} {i.detail}".rstrip())
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from ..ops.configfile import ConfigError, ConfigSource
    from ..ops.log import configure

    args = parser().parse_args(argv)
    try:
        config = ConfigSource.from_args(args.config, {}).load()
    except ConfigError as exc:
        print(f"wa-daemon probe: invalid configuration: {exc}", file=sys.stderr)
        return 78
    if args.timeout <= 0:
        print("wa-daemon probe: --timeout must be > 0", file=sys.stderr)
        return 2
    # Log lines (the browser_sandbox_off warning of a root without browser_user) go to
    # stderr: stdout is the report, JSON with --json.
    configure("warning", config.log_levels, stream=sys.stderr)
    url = args.url or config.whatsapp_url
    if shutil.which(config.chromium_path) is None:
        print(f"wa-daemon probe: no Chromium at {config.chromium_path}", file=sys.stderr)
        return EXIT_NO_PAGE
    report = trio.run(run_probe, config, url, args.timeout)
    if args.json:
        print(json.dumps(asdict(report) | {"missing": report.missing()}, indent=2))
    else:
        print(render(report))
    if report.error is not None and not any(i.found for i in report.items):
        return EXIT_NO_PAGE
    return EXIT_OK if report.ok else EXIT_MISSING
