"""The daemon as one object: binds the socket, owns the nurseries, shuts down in order."""

from __future__ import annotations

import contextlib
import random
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import structlog
import trio

from ..paths import default_socket_path, default_state_dir
from .config import Config
from .drivers.base import Driver
from .drivers.scripted import ScriptedDriver
from .manager import SessionManager
from .registry import MemoryRegistry, Registry, SqliteRegistry
from .server import BoundSocket, Server, bind_unix_socket

log = structlog.get_logger("wa_daemon")


def make_driver(config: Config, nursery: trio.Nursery) -> Driver:
    if config.driver == "scripted":
        return ScriptedDriver(nursery, config.scripted)
    from .drivers.chromium import ChromiumConfig, ChromiumDriver

    driver = ChromiumDriver(
        nursery,
        ChromiumConfig(
            executable=config.chromium_path,
            state_dir=state_dir_of(config),
            url=config.whatsapp_url,
            launch_timeout=config.launch_timeout,
            hang_check_interval=config.hang_check_interval,
            hang_check_timeout=config.hang_check_timeout,
            app_lost_grace=config.app_lost_grace,
            extra_args=tuple(config.chromium_args),
            user_agent=config.user_agent,
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


class Daemon:
    def __init__(self, config: Config, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.socket_path = Path(config.socket_path) if config.socket_path else default_socket_path()
        self._rng = rng
        self._stop = trio.Event()
        self.manager: SessionManager | None = None
        self.server: Server | None = None
        self.driver: Driver | None = None

    def request_stop(self) -> None:
        self._stop.set()

    def _browser_loop(self) -> AbstractAsyncContextManager[Any]:
        """The asyncio loop pyppeteer runs on, inside trio; only the Chromium driver needs it."""
        if self.config.driver != "chromium":
            return contextlib.nullcontext()
        from .drivers.chromium import open_browser_loop

        return open_browser_loop()

    async def run(self, *, bound: BoundSocket | None = None, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`request_stop`; then stop accepting, stop every session,
        end every stream, let in-flight calls answer, and return."""
        cfg = self.config
        bound = bound or bind_unix_socket(self.socket_path)
        try:
            async with self._browser_loop(), trio.open_nursery() as sessions:
                self.driver = make_driver(cfg, sessions)
                registry = make_registry(cfg)
                manager = self.manager = SessionManager(
                    cfg, self.driver, sessions, registry=registry, rng=self._rng
                )
                manager.restore()
                server = self.server = Server(manager)
                async with trio.open_nursery() as connections:
                    async with trio.open_nursery() as front:
                        front.start_soon(server.accept_loop, bound, connections)
                        front.start_soon(manager.cleanup_loop)
                        log.info("daemon_ready", socket=str(self.socket_path), driver=self.driver.name)
                        task_status.started(self)
                        await self._stop.wait()
                        front.cancel_scope.cancel()
                    log.info("daemon_stopping", sessions=len(manager.sessions))
                    bound.close()  # nobody new can connect from here on
                    server.draining = True
                    with trio.move_on_after(cfg.shutdown_timeout) as cs:
                        await manager.shutdown()
                        while server.inflight:
                            await trio.sleep(0.01)
                    if cs.cancelled_caught:
                        log.error("shutdown_timeout", timeout=cfg.shutdown_timeout, inflight=server.inflight)
                    server.close_connections()
                sessions.cancel_scope.cancel()
        finally:
            bound.close()
            if self.manager is not None:
                self.manager.registry.close()
        log.info("daemon_stopped")
