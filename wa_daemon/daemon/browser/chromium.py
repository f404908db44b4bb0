"""The Chromium driver: the daemon owns each Chromium process; pyppeteer only speaks CDP.

We start Chromium ourselves (not ``pyppeteer.launch``, whose launcher polls with
blocking ``urlopen``, installs signal handlers and orphans the browser from an
atexit hook that fails under trio-asyncio), in a new process group with the
parent-death signal set, read the DevTools endpoint it prints, and attach
pyppeteer with ``pyppeteer.connect`` through trio-asyncio. Exit is noticed at
once from a pidfd, not by polling; closing always ends with the whole process
group killed and reaped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ...protocol import HealthCheck
from ...proxy import Proxy
from ..ops.log import get_logger
from . import messaging
from .adapter import (
    BINDING,
    POST_LOGOUT_MARKER,
    PageReader,
    adapter_script,
    call_script,
    click_script,
    needed_modules,
    pairing_code_script,
)
from .aio import _aio, _quiet_library_logs
from .aio import open_browser_loop as open_browser_loop  # the daemon and the probe open it from here
from .auth_snapshot import ProfileAuth
from .base import (
    BrowserGone,
    LaunchError,
    LaunchOptions,
    LoggedOut,
    MessageEvent,
    PageEvent,
    PageInfo,
    PairingError,
    SendError,
    SentText,
    unwrapped_group,
)
from .contract import DEFAULT as DEFAULT_CONTRACT
from .contract import PageContract
from .pinning import VersionPin
from .process import (
    CHROMIUM_FLAGS,
    chromium_version,
    clear_singletons,
    desktop_user_agent,
    drain_stderr,
    group_members,
    kill_group,
    kill_orphans,
    read_devtools_endpoint,
    set_parent_death_signal,
)
from .proxying import ProxyAuth, chromium_flags, launch_failure
from .sandbox import Confinement, Sandbox

log = get_logger("chromium")

_EVENT_BUFFER = 1024

# How long a logout through the page may take to be confirmed by WhatsApp's logout event.
LOGOUT_CONFIRM_TIMEOUT = 10.0

@dataclass
class ChromiumConfig:
    executable: str
    state_dir: Path
    url: str
    launch_timeout: float = 30.0
    hang_check_interval: float = 10.0
    hang_check_timeout: float = 10.0
    extra_args: tuple[str, ...] = ()
    user_agent: str | None = None
    app_lost_grace: float = 30.0
    contract: PageContract = DEFAULT_CONTRACT
    web_version: str | None = None  # pin this WhatsApp Web version (pinning.py)
    web_version_cache: Path | None = None  # None: <state_dir>/web-cache
    browser_user: str | None = None  # a root daemon starts its browsers as this user (sandbox.py)


# pyppeteer's error for an evaluate whose document went away mid-call (a navigation).
_NAVIGATED = "Execution context was destroyed"


class ChromiumBrowser:
    """One Chromium of one session. Its helper tasks (exit watch, stderr drain, hang
    check, app-lost watch) run in ``nursery``, which ChromiumDriver.open owns."""

    def __init__(
        self, driver: ChromiumDriver, session_id: str, profile: Path, url: str, nursery: trio.Nursery,
        proxy: Proxy | None = None,
        on_message: Callable[[MessageEvent], None] | None = None,
    ) -> None:
        self.driver = driver
        self._on_message = on_message
        self._nursery = nursery
        self.url = url
        self.proxy = proxy
        self.proxy_auth = ProxyAuth(proxy) if proxy is not None and proxy.has_credentials else None
        self.session_id = session_id
        self.profile = profile
        # Chromium's own temp files (its singleton socket directory, shared memory) go
        # to a directory of this launch under the driver's tmp_base: a killed Chromium
        # never removes them, so the exit watcher removes the whole directory.
        self.tmp: Path | None = None
        self.log = log.bind(session=session_id)
        self._send, self._recv = trio.open_memory_channel[PageEvent](_EVENT_BUFFER)
        # The exit watch and the stderr drain must outlive a cancellation of the block
        # that owns the browser: close() needs them to see Chromium go. Their shielded
        # scopes are cancelled by close() itself, once the browser is reaped.
        self._lifelines: set[trio.CancelScope] = set()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.exited = trio.Event()
        self.returncode: int | None = None
        self.browser: Any = None  # pyppeteer Browser
        self.page: Any = None
        self._closing = False
        self._gone = False
        self.reader = PageReader(driver.config.contract)
        self.pin: VersionPin | None = None
        self.info: PageInfo | None = None  # the page's last word about itself
        self._ready = trio.Event()  # the page can be driven (modules, or the DOM fallback)
        self._logged_out = trio.Event()
        self._app_lost = trio.Event()

    @property
    def events(self) -> trio.MemoryReceiveChannel[PageEvent]:
        return self._recv

    @property
    def process_group(self) -> int | None:
        return self.pid or None  # the browser leads its own session and group

    # ------------------------------------------------------------------ process

    def _spawn(self, argv: list[str]) -> None:
        # Popen from the event loop's own thread: the parent-death signal fires when the
        # *thread* that forked exits, so a worker thread (trio's open_process) would
        # kill Chromium as soon as its thread is recycled.
        assert self.tmp is not None
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: one killpg ends every child
            preexec_fn=set_parent_death_signal,  # prctl only: takes no lock, safe between fork and exec
            close_fds=True,
            **self.driver.confinement.spawn_options(self.tmp),  # environment, uid, groups, umask
        )
        self.pid = self.proc.pid

    async def _watch_exit(self) -> None:
        """Notice the exit at once (pidfd), reap it, and clean the group and the locks."""
        assert self.proc is not None
        pidfd = os.pidfd_open(self.pid)
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        self.returncode = self.proc.wait()
        # Told at once: the session can begin its reconnect while the rest is cleaned.
        # `exited` (what close() and a relaunch on this profile wait for) comes only
        # once the whole group is gone.
        kind = "crashed" if self.returncode and self.returncode < 0 else "exited"
        self._emit_gone(kind, f"chromium exited with status {self.returncode}")
        # Renderers and zygotes outlive a killed browser for a moment: end them all
        # before anyone may reuse the profile.
        if not await kill_group(self.pid):
            self.log.error("chromium_group_survived", pgid=self.pid, pids=group_members(self.pid))
        clear_singletons(self.profile)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.tmp.parent.rmdir()  # only when no other browser uses it
        self.exited.set()

    async def _until_closed(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        scope = trio.CancelScope(shield=True)
        self._lifelines.add(scope)
        try:
            with scope:
                await fn(*args)
        finally:
            self._lifelines.discard(scope)

    # ------------------------------------------------------------------ launch

    async def launch(self, user_agent: str) -> None:
        cfg = self.driver.config
        sandbox = self.driver.sandbox
        if sandbox.unreachable:
            raise LaunchError(sandbox.unreachable)
        try:  # in a thread: a profile handed to browser_user for the first time is chowned file by file
            self.tmp = await trio.to_thread.run_sync(self.driver.confinement.launch_dirs, self.session_id)
        except OSError as exc:
            raise LaunchError(f"cannot prepare the profile and temp directories: {exc}") from None
        clear_singletons(self.profile)
        argv = [
            cfg.executable,
            *CHROMIUM_FLAGS,
            *sandbox.flags,
            *cfg.extra_args,
            *chromium_flags(self.proxy),  # after chromium_args: the session's own proxy wins
            f"--user-agent={user_agent}",
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        try:
            self._spawn(argv)
        except OSError as exc:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise LaunchError(f"cannot start {cfg.executable}: {exc.strerror or exc}") from None
        assert self.proc is not None and self.proc.stderr is not None
        stderr_fd = os.dup(self.proc.stderr.fileno())
        self.proc.stderr.close()
        os.set_blocking(stderr_fd, False)
        stderr = trio.lowlevel.FdStream(stderr_fd)
        nursery = self._nursery
        nursery.start_soon(self._until_closed, self._watch_exit)
        try:
            with trio.fail_after(cfg.launch_timeout):
                endpoint = await read_devtools_endpoint(stderr)
            nursery.start_soon(self._until_closed, drain_stderr, stderr)
            with trio.fail_after(cfg.launch_timeout):
                await self._attach(endpoint, user_agent)
            with trio.move_on_after(cfg.launch_timeout):
                await self._ready.wait()
            if not self._ready.is_set():
                raise LaunchError(self._not_ready_message(cfg.launch_timeout))
        except BaseException as exc:
            await self.close()
            if isinstance(exc, trio.TooSlowError):
                raise LaunchError(f"chromium not ready within {cfg.launch_timeout:g} s") from None
            if isinstance(exc, Exception) and not isinstance(exc, LaunchError):
                raise LaunchError(f"cannot attach to chromium: {type(exc).__name__}: {exc}") from None
            raise
        nursery.start_soon(self._hang_check)
        nursery.start_soon(self._app_watch)

    async def _attach(self, endpoint: str, user_agent: str) -> None:
        import pyppeteer  # the browser stack is imported only when a browser is started

        _quiet_library_logs()
        self.browser = await _aio(pyppeteer.connect, browserWSEndpoint=endpoint, defaultViewport=None)
        self.browser.on("disconnected", lambda *_: self._emit_gone("cdp_lost", "the DevTools connection dropped"))
        pages = await _aio(self.browser.pages)
        self.page = pages[0] if pages else await _aio(self.browser.newPage)
        page = self.page
        page.on("error", lambda *_: self._emit_gone("crashed", "the page crashed"))
        page.on("close", lambda *_: self._emit_gone("crashed", "the page was closed"))
        page.on("framenavigated", self._on_navigated)
        await _aio(page.setUserAgent, user_agent)
        await _aio(page.exposeFunction, BINDING, self._on_report)
        await _aio(page.evaluateOnNewDocument, adapter_script(self.driver.config.contract))
        await _aio(page.exposeFunction, messaging.MESSAGE_BINDING, self._on_messages)
        await _aio(page.evaluateOnNewDocument, messaging.messaging_script(self.driver.config.contract))
        cfg = self.driver.config
        if cfg.web_version is not None:
            self.pin = VersionPin(self.url, self.driver.web_cache_dir, cfg.web_version)
            await _aio(self.pin.attach, await _aio(page.target.createCDPSession))
            self.log.info("web_version_pin", web_version=cfg.web_version, cached=self.pin.pinned)
        if self.proxy is not None:
            self.log.info("browser_proxy", proxy=self.proxy.masked)  # the password masked
        if self.proxy_auth is not None:
            await _aio(self.proxy_auth.attach, await _aio(page.target.createCDPSession))
            self.browser.on("targetcreated", self.proxy_auth.on_target)  # its other pages and workers
        try:
            response = await _aio(page.goto, self.url, waitUntil="domcontentloaded", timeout=0)
        except Exception as exc:  # pyppeteer raises plain exceptions for net errors
            failure = launch_failure(self.proxy, self.proxy_auth, str(exc))
            raise failure or LaunchError(f"cannot open {self.url}: {exc}") from None
        failure = launch_failure(self.proxy, self.proxy_auth, status=getattr(response, "status", None))
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------ page → events

    def _emit(self, event: PageEvent) -> None:
        if self._gone:
            return
        try:
            self._send.send_nowait(event)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.log.error("page_event_dropped", event=type(event).__name__)

    def _emit_gone(self, kind: str, message: str) -> None:
        if self._closing or self._gone:
            return
        self.log.warning("browser_gone", kind=kind, message=message)
        self._emit(BrowserGone(kind, message))
        self._gone = True
        self._send.close()

    def _on_navigated(self, frame: Any) -> None:
        if self.page is not None and frame is self.page.mainFrame and POST_LOGOUT_MARKER in (frame.url or ""):
            self._logged_out.set()
            self._emit(LoggedOut())

    def _on_report(self, key: str) -> None:
        """Called by the page adapter (through the CDP binding) when what it reads changed."""
        try:
            snap = json.loads(key)
        except (TypeError, ValueError):
            return
        if not isinstance(snap, dict):
            return
        reader = self.reader
        had_app = reader.app
        for event in reader.feed(snap):
            if isinstance(event, PageInfo):
                self.info = event
            if isinstance(event, LoggedOut):
                self._logged_out.set()
            self._emit(event)
        if reader.ready:
            self._ready.set()
        if not had_app and reader.app and self.pin is not None and self.info is not None:
            self._nursery.start_soon(self._remember_version, self.pin, self.info.version)
        if had_app and not reader.app and not reader.holds:
            # A reload passes through here too (startup, loading, app): only an app
            # that stays away means the page lost WhatsApp.
            self._app_lost.set()

    def _on_messages(self, raw: str) -> None:
        """A batch of messages and acks from the page (browser/messaging.py), to the inbox."""
        if self._on_message is not None and not self._gone:
            for event in messaging.parse_report(raw):
                self._on_message(event)

    async def _remember_version(self, pin: VersionPin, version: str | None) -> None:
        try:
            path = await trio.to_thread.run_sync(pin.remember, version)
        except OSError as exc:
            self.log.warning("web_version_cache_failed", error=str(exc))
            return
        if path is not None:
            self.log.info("web_version_cached", web_version=version, path=str(path))

    def _not_ready_message(self, timeout: float) -> str:
        snap = self.reader.prev
        missing = [m for m in snap.get("missing") or [] if m in needed_modules(self.driver.config.contract, pairing=False)]
        if snap.get("modules") == "pending" or not snap:
            what = "WhatsApp Web's module system (window.require) never appeared"
        else:
            what = "WhatsApp Web's modules are missing: " + ", ".join(missing or snap.get("missing") or ["?"])
        return f"{what} within {timeout:g} s, and the page shows no QR and no app (see `wa-daemon probe`)"

    async def _hang_check(self) -> None:
        """A renderer that stops answering a trivial evaluate is as lost as a crashed one."""
        cfg = self.driver.config
        while True:
            await trio.sleep(cfg.hang_check_interval)
            try:
                with trio.fail_after(cfg.hang_check_timeout):
                    await _aio(self.page.evaluate, "1", force_expr=True)
            except trio.TooSlowError:
                self._emit_gone("hung", f"the page did not answer within {cfg.hang_check_timeout:g} s")
                return
            except Exception as exc:  # "Target closed", "Session closed"...
                if _NAVIGATED in str(exc):
                    # The page navigated under the evaluate (the phone's logout sends it to
                    # ?post_logout=1): alive. Reporting a loss here would hide the logout.
                    continue
                self._emit_gone("cdp_lost", f"{type(exc).__name__}: {exc}")
                return

    async def _app_watch(self) -> None:
        grace = self.driver.config.app_lost_grace
        while True:
            await self._app_lost.wait()
            self._app_lost = trio.Event()
            await trio.sleep(grace)
            if not self.reader.app and not self.reader.holds:
                self._emit_gone("connection_lost", f"the app has not been shown for {grace:g} s")
                return

    # ------------------------------------------------------------------ actions

    async def _page_call(self, script: str, *args: Any) -> bool:
        if self.page is None or self._gone:
            return False
        try:
            with trio.fail_after(self.driver.config.hang_check_timeout):
                return bool(await _aio(self.page.evaluate, script, *args))
        except Exception as exc:  # a dead page is reported by the exit/hang watchers
            self.log.warning("page_call_failed", error=f"{type(exc).__name__}: {exc}")
            return False

    async def _module_call(self, hook_name: str, method: str) -> bool:
        hook = getattr(self.driver.config.contract.modules, hook_name)
        return await self._page_call(call_script(hook.module, hook.path, method))

    async def reload_qr(self) -> None:
        names = self.driver.config.contract.names
        if self.reader.modules_ok:
            await self._module_call("cmd", names.cmd_refresh_qr)
        else:
            await self._page_call(click_script(self.driver.config.contract.dom.qr_reload))

    async def take_over(self) -> None:
        if self.reader.modules_ok:
            await self._module_call("socket", self.driver.config.contract.names.socket_takeover)
        else:
            # The DOM offers no language-free "Use here": the conflict stays, and the
            # session's conflict handling decides (docs/states.md).
            self.log.warning("takeover_unavailable", why="WhatsApp's modules are missing")

    async def request_pairing_code(self, phone_number: str) -> str:
        contract = self.driver.config.contract
        if not self.reader.modules_ok or self.page is None or self._gone:
            raise PairingError("WhatsApp Web's modules are missing: no linking API to ask for a code")
        try:
            with trio.fail_after(self.driver.config.hang_check_timeout):
                code = await _aio(self.page.evaluate, pairing_code_script(contract), phone_number)
        except trio.TooSlowError:
            raise PairingError("the page gave no pairing code in time") from None
        except Exception as exc:  # the page's own error: never carries the code
            raise PairingError(f"the page refused a pairing code: {type(exc).__name__}: {str(exc)[:200]}") from None
        text = str(code or "").strip().upper().replace("-", "")
        if not re.fullmatch(r"[0-9A-Z]{8}", text):
            raise PairingError(f"the page gave a pairing code of an unexpected shape ({len(text)} characters)")
        return text

    async def _evaluate(self, script: str, *args: Any) -> Any:
        if self.page is None or self._gone:
            raise SendError("the browser has no page")
        try:
            with trio.fail_after(self.driver.config.hang_check_timeout):
                return await _aio(self.page.evaluate, script, *args)
        except trio.TooSlowError:
            raise SendError("the page did not answer in time") from None
        except Exception as exc:  # the page's own error: its text, never the message's
            raise SendError(f"the page refused: {type(exc).__name__}: {str(exc)[:200]}") from None

    async def new_message_id(self) -> str:
        return await messaging.new_message_id(self._evaluate, self.driver.config.contract)
    async def send_text(self, to: str, text: str, message_id: str) -> SentText:
        return await messaging.send_text(self._evaluate, self.driver.config.contract, to, text, message_id)

    async def logout(self) -> bool:
        # Log out through WhatsApp's own module, which unlinks the device on the phone
        # (a failed logout would leave it linked, taking one of the phone's 4 slots),
        # and wait for WhatsApp's logout event as the confirmation.
        confirmed = False
        if self.reader.modules_ok:
            if await self._module_call("socket", self.driver.config.contract.names.socket_logout):
                with trio.move_on_after(LOGOUT_CONFIRM_TIMEOUT):
                    await self._logged_out.wait()
            confirmed = self._logged_out.is_set()
        if not confirmed:
            self.log.warning("logout_unconfirmed", modules=self.reader.modules_ok)
        await self.close()
        return confirmed

    async def close(self) -> None:
        """Politely close, then SIGTERM and SIGKILL the group; always reaped. Never raises."""
        self._closing = True
        with trio.CancelScope(shield=True):
            if self.browser is not None and not self.exited.is_set():
                # A polite close lets Chromium flush the profile (cookies, storage)
                # before it exits; signals come only if it does not exit by itself.
                with trio.move_on_after(5):
                    with contextlib.suppress(Exception):
                        await _aio(self.browser.close)
                    await self.exited.wait()
            if self.proc is not None:
                for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
                    if self.exited.is_set():
                        break
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(self.pid, sig)
                    with trio.move_on_after(grace):
                        await self.exited.wait()
                if not self.exited.is_set():  # the watcher never ran (spawn failed half-way)
                    self.proc.kill()
                    self.proc.wait()
            if self.browser is not None:
                # Ends pyppeteer's websocket tasks, which would otherwise outlive the browser.
                with trio.move_on_after(1), contextlib.suppress(Exception):
                    await _aio(self.browser.disconnect)
            for scope in list(self._lifelines):
                scope.cancel()
            self._nursery.cancel_scope.cancel()  # the helper tasks: the browser is gone
            self._send.close()
            self.driver.live.pop(self.session_id, None)


@dataclass
class ChromiumDriver(ProfileAuth):
    config: ChromiumConfig
    name: str = "chromium"
    live: dict[str, ChromiumBrowser] = field(default_factory=dict)
    launches: int = 0
    _user_agent: str | None = None
    _confinement: Confinement | None = None

    @property
    def sessions_dir(self) -> Path:
        return self.config.state_dir / "sessions"

    @property
    def tmp_base(self) -> Path:
        """Where each browser's TMPDIR is made: in the system temp dir, one per state dir,
        so a daemon starting after a crash can remove what its killed browsers left."""
        tag = hashlib.sha256(str(self.config.state_dir.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"wa-chromium-{tag}"

    @property
    def web_cache_dir(self) -> Path:
        return self.config.web_version_cache or self.config.state_dir / "web-cache"

    def profile_of(self, session_id: str) -> Path:
        return self.sessions_dir / session_id / "profile"

    @property
    def confinement(self) -> Confinement:
        if self._confinement is None:
            cfg = self.config
            self._confinement = Confinement(cfg.state_dir, self.tmp_base, cfg.browser_user, cfg.extra_args)
        return self._confinement

    @property
    def sandbox(self) -> Sandbox:
        return self.confinement.sandbox

    def health_checks(self) -> list[HealthCheck]:
        return [self.confinement.health_check()]

    def start(self) -> None:
        """Start-up housekeeping: the state directory exists, no orphan holds a profile;
        the sandbox is decided and said."""
        self.confinement.announce()
        kill_orphans(self.sessions_dir)
        shutil.rmtree(self.tmp_base, ignore_errors=True)  # left by browsers of a killed daemon
        # Importing pyppeteer takes ~130 ms: pay it here, before anything is served,
        # not on the event loop at the first launch.
        import pyppeteer  # noqa: F401

    async def user_agent(self) -> str:
        if self._user_agent is None:
            if self.config.user_agent:
                self._user_agent = self.config.user_agent
            else:
                # `chromium --version` takes a moment: not on the event loop.
                version = await trio.to_thread.run_sync(chromium_version, self.config.executable)
                self._user_agent = desktop_user_agent(version)
        return self._user_agent

    @contextlib.asynccontextmanager
    async def open(self, options: LaunchOptions) -> AsyncIterator[ChromiumBrowser]:
        """A Chromium for the block: launched on entry (LaunchError when it cannot be),
        closed and reaped, with its helper tasks ended, when the block ends."""
        sid = options.session_id
        if sid in self.live:
            raise LaunchError(f"profile of session {sid!r} is in use by a running browser")
        self.launches += 1
        user_agent = await self.user_agent()
        async with unwrapped_group():
            async with trio.open_nursery() as nursery:
                url = options.url or self.config.url
                browser = ChromiumBrowser(
                    self, sid, self.profile_of(sid), url, nursery, options.proxy, options.on_message
                )
                self.live[sid] = browser
                try:
                    await browser.launch(user_agent)
                    yield browser
                finally:
                    await browser.close()  # shielded; ends the helper tasks
                    self.live.pop(sid, None)

    async def wipe_auth(self, session_id: str) -> None:
        profile = self.profile_of(session_id)
        await trio.to_thread.run_sync(lambda: shutil.rmtree(profile, ignore_errors=True))
