"""The daemon as one object: binds the socket, owns the nurseries, shuts down in order."""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from .._version import __version__
from ..paths import default_socket_path, default_state_dir
from .browser.base import Driver
from .browser.scripted import ScriptedDriver
from .messages.inbox import Inbox
from .messages.service import Messaging
from .metrics_listeners import serve_socket, serve_tcp
from .monitor import DaemonMonitor
from .ops.config import RESTART_KEYS, Config
from .ops.configfile import ConfigError, ConfigSource
from .ops.log import configure, get_logger
from .ops.systemd import Notifier
from .rpc.listener import BoundSocket, bind_unix_socket
from .rpc.server import Server
from .sessions.manager import SessionManager
from .sessions.registry import MemoryRegistry, Registry, SqliteRegistry

if TYPE_CHECKING:
    from .cluster.node import ClusterNode
    from .rpc.router import Router

log = get_logger("daemon")


def make_driver(config: Config) -> Driver:
    if config.driver == "scripted":
        return ScriptedDriver(config.scripted)
    from .browser.chromium import ChromiumConfig, ChromiumDriver
    from .browser.contract import load_contract

    driver = ChromiumDriver(
        ChromiumConfig(
            executable=config.chromium_path,
            state_dir=state_dir_of(config),
            url=config.whatsapp_url,
            launch_timeout=config.launch_timeout,
            hang_check_interval=config.hang_check_interval,
            hang_check_timeout=config.hang_check_timeout,
            app_lost_grace=config.app_lost_grace,
            extra_args=tuple(config.chromium_args),
            browser_user=config.browser_user,
            user_agent=config.user_agent,
            contract=load_contract(config.page_contract),
            web_version=config.web_version,
            web_version_cache=Path(config.web_version_cache) if config.web_version_cache else None,
        ),
    )
    driver.start()
    return driver


def state_dir_of(config: Config) -> Path:
    return Path(config.state_dir) if config.state_dir else default_state_dir()


def make_registry(config: Config) -> Registry:
    kind = config.registry
    if kind == "auto":
        kind = "sqlite" if config.driver == "chromium" or config.state_dir else "memory"
    if kind == "memory":
        return MemoryRegistry()
    return SqliteRegistry(state_dir_of(config) / "registry.sqlite3")


@contextlib.asynccontextmanager
async def open_fleet(config: Config) -> AsyncIterator[ClusterNode | None]:
    """This host's part of the fleet with ``redis_url``; None on a host of its own."""
    if config.redis_url is None:
        yield None
        return
    from .cluster.node import ClusterNode
    from .cluster.store import open_store

    async with open_store(config) as store:
        log.info("cluster_joining", host=config.host_id or socket.gethostname(), lease_ttl=config.lease_ttl)
        yield ClusterNode(config, store)


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        source: ConfigSource | None = None,
        notifier: Notifier | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.source = source  # where a reload reads the configuration again
        self.notifier = notifier or Notifier({})  # main() passes the one from the environment
        self.socket_path = Path(config.socket_path) if config.socket_path else default_socket_path()
        self._rng = rng
        self._stop = trio.Event()
        self.manager: SessionManager | None = None
        self.server: Server | None = None
        self.driver: Driver | None = None
        self.monitor: DaemonMonitor | None = None
        self.node: ClusterNode | None = None  # with redis_url: this host's part of the fleet
        self.metrics_addresses: list[str] = []  # where metrics_listen is bound (HOST:PORT)
        self.messaging: Messaging | None = None
        self._reload_lock = trio.Lock()

    def request_stop(self) -> None:
        self._stop.set()

    def _browser_loop(self) -> AbstractAsyncContextManager[Any]:
        """The asyncio loop pyppeteer runs on, inside trio; only the Chromium driver needs it."""
        if self.config.driver != "chromium":
            return contextlib.nullcontext()
        from .browser.chromium import open_browser_loop

        return open_browser_loop()

    async def run(self, *, bound: BoundSocket | None = None, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`request_stop`; then stop accepting, stop every session,
        end every stream, let in-flight calls answer, and return."""
        cfg = self.config
        bound = bound or bind_unix_socket(self.socket_path, group=cfg.socket_group)
        try:
            async with self._browser_loop(), open_fleet(cfg) as node, trio.open_nursery() as sessions:
                self.driver = make_driver(cfg)
                registry = node.registry if node is not None else make_registry(cfg)
                router: Router | None = None  # several hosts: mutations reach the session's owner
                manager = self.manager = SessionManager(
                    cfg, self.driver, sessions, registry=registry, placement=node, rng=self._rng
                )
                if node is not None:
                    # In the sessions' nursery: it renews and fences until the last browser is closed.
                    self.node = node
                    node.attach(manager, manager.metrics.registry)
                    node.driver = self.driver
                    from .rpc.router import open_router

                    router = await open_router(node, cfg, manager.metrics.registry)
                    await sessions.start(node.run)
                manager.metrics.build_info(__version__, self.driver.name)
                sandbox = self.driver.sandbox
                manager.metrics.browser_sandbox(sandbox.mode if sandbox is not None else None)
                self.monitor = DaemonMonitor(manager, _used_state_dir(cfg))
                manager.restore()
                inbox = Inbox(state_dir_of(cfg) / "inbox.sqlite3" if isinstance(registry, SqliteRegistry) else None)
                messaging = self.messaging = Messaging(cfg, manager, inbox)
                server = self.server = Server(manager, health=self.monitor.health, messages=messaging)
                if router is not None:
                    server.router = router
                    router.services = server.services
                # The owner's side of routing lives as long as the connections: commands
                # other hosts route here are answered through a drain and the shutdown.
                commands = trio.CancelScope()
                async with trio.open_nursery() as connections:
                    if router is not None:
                        connections.start_soon(_within, commands, router.serve)
                    async with trio.open_nursery() as front:
                        front.start_soon(server.accept_loop, bound, connections)
                        front.start_soon(manager.cleanup_loop)
                        front.start_soon(messaging.retention_loop)
                        front.start_soon(self.monitor.run)
                        # Started, not just spawned: bound before daemon_ready says so.
                        if cfg.metrics_listen:
                            self.metrics_addresses = await front.start(
                                serve_tcp, cfg.metrics_listen, manager, self.monitor.health
                            )
                        if cfg.metrics_socket:
                            await front.start(serve_socket, Path(cfg.metrics_socket), manager, self.monitor.health)
                        if self.notifier.enabled:
                            front.start_soon(self._report_status)
                            if self.notifier.watchdog_interval:
                                front.start_soon(self._watchdog, self.notifier.watchdog_interval)
                        log.info(
                            "daemon_ready",
                            socket=str(bound.path),
                            socket_activated=bound.activated,
                            driver=self.driver.name,
                            sessions=len(manager.session_ids()),
                        )
                        self.notifier.ready(self._status_line())
                        task_status.started(self)
                        await self._stop.wait()
                        front.cancel_scope.cancel()
                    self.notifier.stopping()
                    log.info("daemon_stopping", sessions=len(manager.session_ids()))
                    bound.close()  # nobody new can connect from here on
                    server.draining = True
                    stop_by = trio.current_time() + cfg.shutdown_timeout
                    if node is not None and self.config.drain_on_stop:
                        await self._drain_on_stop(node, cfg.shutdown_timeout / 2)
                    with trio.move_on_at(stop_by) as cs:
                        await manager.shutdown()
                        if self.node is not None:
                            await self.node.save_snapshots()  # the browsers are closed: profiles are whole
                        while server.inflight:
                            await trio.sleep(0.01)
                    if cs.cancelled_caught:
                        log.error("shutdown_timeout", timeout=cfg.shutdown_timeout, inflight=server.inflight)
                    commands.cancel()
                    server.close_connections()
                sessions.cancel_scope.cancel()
        finally:
            bound.close()
            if self.manager is not None:
                self.manager.registry.close()
            if self.messaging is not None:
                self.messaging.inbox.close()
        log.info("daemon_stopped")

    async def _drain_on_stop(self, node: ClusterNode, budget: float) -> None:
        """Hand the sessions to the other hosts first (drain_on_stop), within ``budget``:
        half the stop deadline, the other half closes what is left."""
        with trio.move_on_after(budget) as cs:
            await node.drain_on_stop()
        log.info("drained_on_stop", complete=not cs.cancelled_caught, left=len(node.leases.held))

    # ------------------------------------------------------------------ systemd

    def _status_line(self) -> str:
        if self.manager is None:
            return "starting"
        counts = self.manager.counts_by_state()
        parts = [f"{n} {state.value}" for state, n in sorted(counts.items(), key=lambda kv: -kv[1])]
        total = sum(counts.values())
        return f"{total} session{'s' if total != 1 else ''}" + (": " + ", ".join(parts) if parts else "")

    async def _report_status(self) -> None:
        """STATUS= for `systemctl status`, sent when the counts change (checked every second)."""
        last = ""
        while True:
            line = self._status_line()
            if line != last:
                self.notifier.status(line)
                last = line
            await trio.sleep(1.0)

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 every ``interval`` (half of WatchdogSec=), but only while the
        event loop keeps its own heartbeat: a loop stalled for longer than half an
        interval misses the ping, and two misses in a row let systemd restart us."""
        assert self.monitor is not None
        max_lag = interval / 2
        while True:
            await trio.sleep(interval)
            if self.monitor.loop.responsive(max_lag):
                self.notifier.watchdog()
            else:
                log.warning("watchdog_withheld", lag=round(self.monitor.loop.lag, 3), max_lag=max_lag)

    # ------------------------------------------------------------------ reload

    async def reload(self) -> bool:
        """Read the configuration again (SIGHUP). Keys that need a restart keep
        their running value; an invalid configuration changes nothing."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                return await self._reload()
            finally:
                self.notifier.ready(self._status_line())

    async def _reload(self) -> bool:
        metrics = self.manager.metrics if self.manager is not None else None
        old = self.config
        try:
            if self.source is None:
                raise ConfigError("no configuration source to read again")
            new = await trio.to_thread.run_sync(self.source.load)
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc), kept="the running configuration")
            if metrics is not None:
                metrics.config_reloads.labels("error").inc()
            return False
        pinned = [key for key in RESTART_KEYS if getattr(new, key) != getattr(old, key)]
        if pinned:
            log.warning("config_needs_restart", keys=pinned, note="these keys keep their running values")
            running = msgspec.to_builtins(old)
            new = new.replace(**{key: running[key] for key in pinned if key in running})
        changed = [f for f in new.__struct_fields__ if getattr(new, f) != getattr(old, f)]
        self.config = new
        if self.manager is not None:
            self.manager.reconfigure(new)
        if self.server is not None:
            self.server.reconfigure(new)
        if self.messaging is not None:
            self.messaging.reconfigure(new)
        if self.node is not None:
            self.node.reconfigure(new)
        configure(new.log_level, new.log_levels)
        if metrics is not None:
            metrics.config_reloads.labels("ok").inc()
        log.info("config_reloaded", changed=changed)
        return True


def _used_state_dir(config: Config) -> Path | None:
    """The state directory, when something lives there (SQLite or Chromium profiles)."""
    if config.driver == "chromium" or config.registry == "sqlite" or config.state_dir:
        return state_dir_of(config)
    return None


async def _within(scope: trio.CancelScope, fn: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await fn()
