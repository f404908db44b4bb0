"""Typed daemon configuration. Every number the daemon acts on is a field here."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import msgspec

from ...protocol import DEFAULT_MAX_FRAME, WebUrl
from ...proxy import parse_proxy

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)]
NonNegSeconds = Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)]
Count = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Fraction = Annotated[float, msgspec.Meta(ge=0, lt=1)]
Level = Literal["debug", "info", "warning", "error"]
HostId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")]

# The daemon's loggers, one per component: ``log_levels`` sets a level for each,
# and every module gets its logger by naming one (``ops.log.get_logger``).
Component = Literal["daemon", "server", "manager", "session", "chromium", "http", "messages", "cluster"]
LOG_COMPONENTS: tuple[Component, ...] = get_args(Component)


# Keys read once at start-up (the socket, the driver and what its browsers are
# launched with, the size of the launch queue, the metrics listener): a reload
# that changes one logs `config_needs_restart` and keeps the running value.
RESTART_KEYS = (
    "socket_path",
    "state_dir",
    "driver",
    "scripted",
    "registry",
    "whatsapp_url",
    "chromium_path",
    "chromium_args",
    "browser_user",
    "user_agent",
    "launch_timeout",
    "hang_check_interval",
    "hang_check_timeout",
    "app_lost_grace",
    "page_contract",
    "web_version",
    "web_version_cache",
    "max_concurrent_launches",
    "socket_group",
    "metrics_listen",
    "metrics_socket",
    "redis_url",
    "redis_password_file",
    "host_id",
    "lease_ttl",
)


class ScriptedConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Behaviour of the scripted in-memory driver (``--driver scripted``).

    Its QR schedule mirrors WhatsApp Web: a first ref of 60 s, then five more of
    20 s, then a reload button.
    """

    launch_delay: NonNegSeconds = 0.2
    first_qr_ttl: PositiveSeconds = 60.0
    qr_ttl: PositiveSeconds = 20.0
    qr_refs_per_cycle: Count = 6
    auth_delay: NonNegSeconds = 1.0  # "loading" screen between scan and app
    pairing_code_ttl: PositiveSeconds = 180.0  # a pairing code's life on the page
    auto_scan_after: NonNegSeconds | None = None  # scan the first QR by itself after this delay
    fail_launch: bool = False


class MessageRetention(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How long the inbox keeps each session's messages (docs/messages.md): both limits
    apply; None lifts one. Enforced every ``interval`` in the background."""

    max_age: Annotated[float, msgspec.Meta(gt=0, le=3650 * 86400)] | None = 30 * 86400.0  # since it was stored
    max_count: Annotated[int, msgspec.Meta(ge=1, le=100_000_000)] | None = 100_000  # per session, the newest kept
    interval: PositiveSeconds = 3600.0


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    socket_path: str | None = None  # None: paths.default_socket_path()
    state_dir: str | None = None  # None: paths.default_state_dir()
    driver: Literal["chromium", "scripted"] = "chromium"
    scripted: ScriptedConfig = msgspec.field(default_factory=ScriptedConfig)

    # the Chromium driver
    whatsapp_url: WebUrl = "https://web.whatsapp.com/"
    chromium_path: str = "/usr/bin/chromium"
    chromium_args: list[str] = []  # appended to the built-in flags (browser/chromium.py)
    # a daemon running as root starts its browsers as this unprivileged user (a name or
    # a uid), so that Chromium's own sandbox can run (docs/security.md); None: as the daemon
    browser_user: str | None = None
    user_agent: str | None = None  # None: a desktop Chrome UA of the installed version
    launch_timeout: PositiveSeconds = 30.0
    hang_check_interval: PositiveSeconds = 10.0
    hang_check_timeout: PositiveSeconds = 10.0
    app_lost_grace: PositiveSeconds = 30.0  # the app gone (not for a QR or a conflict) this long: reconnect
    # the proxy of sessions whose connect gave none (wa_daemon/proxy.py forms); None or "": direct
    proxy: str | None = None

    # "auto": SQLite in the state directory with the Chromium driver or an explicit
    # state_dir, memory otherwise (scripted runs leave nothing behind)
    registry: Literal["auto", "sqlite", "memory"] = "auto"

    # admission
    max_sessions: Count = 50
    max_concurrent_launches: Count = 2
    connect_min_interval: NonNegSeconds = 5.0
    operation_timeout: PositiveSeconds = 60.0  # waiting for a session's lock longer is `busy`
    max_connections: Count = 1024  # client connections at once; one more gets `limit_exceeded` and is closed
    max_sessions_per_uid: Count | None = None  # sessions one non-admin uid may own; None: only max_sessions

    # authorization (docs/security.md): besides root and the daemon's own uid,
    # these see and touch every session; anybody else only the sessions it created
    admin_uids: list[Annotated[int, msgspec.Meta(ge=0)]] = []
    admin_group: str | None = None  # a group name or number: its members are admins

    # linking by phone number (connect with phone_number): a new code every
    # pairing_code_interval, at most pairing_code_max_refreshes new codes, and the
    # phase ends (failed, code_timeout) after pairing_code_timeout
    pairing_code_interval: PositiveSeconds = 180.0
    pairing_code_max_refreshes: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 5
    pairing_code_timeout: PositiveSeconds = 1200.0

    # the page contract (module ids, names, states) over the built-in one: a TOML or
    # JSON file (docs/page-adapter.md); None: the built-in contract
    page_contract: str | None = None
    # serve WhatsApp Web of this version from web_version_cache (docs/page-adapter.md):
    # the cache fills from sessions that reached connected; None: the live version
    web_version: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+(\.[0-9]+){1,3}(-[A-Za-z0-9]+)?\Z")] | None = None
    web_version_cache: str | None = None  # None: <state_dir>/web-cache

    # QR
    qr_debounce: NonNegSeconds = 2.0
    qr_timeout: PositiveSeconds = 180.0
    qr_max_refreshes: Count | None = None  # None: only qr_timeout ends the QR phase

    # reconnection: delay n (1-based) = base * factor**(n-1), capped, +-jitter
    reconnect_max_attempts: Annotated[int, msgspec.Meta(ge=0, le=100)] = 3
    reconnect_base_delay: NonNegSeconds = 5.0
    reconnect_factor: Annotated[float, msgspec.Meta(ge=1, le=100)] = 3.0
    reconnect_max_delay: NonNegSeconds = 300.0
    reconnect_jitter: Fraction = 0.2
    reconnect_reset_after: PositiveSeconds = 600.0

    # inactive cleanup
    cleanup_interval: PositiveSeconds = 600.0
    inactive_after: PositiveSeconds = 1800.0
    connected_idle_timeout: PositiveSeconds | None = None

    # sessions
    takeover_on_conflict: bool = True  # answer "open in another window" with "Use here"
    phone_offline_grace: PositiveSeconds = 120.0  # phone unreachable this long: reconnect
    history_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    browser_stop_timeout: PositiveSeconds = 10.0
    # PSS of a session's Chromium tree above this (bytes): the browser is recycled
    # (closed and relaunched on its saved auth). None: no limit
    session_memory_limit: Annotated[int, msgspec.Meta(ge=1 << 20)] | None = None

    # messages (docs/messages.md): a send waits this long for a session on its way to
    # connected; sends of one session are at least send_min_interval apart (WhatsApp's
    # spam detection watches how fast an account sends); the inbox keeps message_retention
    send_wait: PositiveSeconds = 60.0
    send_min_interval: NonNegSeconds = 1.0
    message_retention: MessageRetention = msgspec.field(default_factory=MessageRetention)

    # RPC
    max_frame: Annotated[int, msgspec.Meta(ge=1024, le=64 << 20)] = DEFAULT_MAX_FRAME
    max_inflight_per_connection: Count = 128
    hello_timeout: PositiveSeconds = 10.0  # a connection that has not said hello by then is closed
    send_timeout: PositiveSeconds = 30.0  # a client that stops reading its replies is closed after this
    # a greeted connection that sends nothing this long, with no request or watch in flight, is closed
    idle_connection_timeout: PositiveSeconds | None = 3600.0
    max_watches_per_connection: Count = 16  # watch streams open at once per connection; one more: `limit_exceeded`
    watch_qr_interval: NonNegSeconds = 3.0
    watch_queue_size: Annotated[int, msgspec.Meta(ge=4, le=100_000)] = 64
    shutdown_timeout: PositiveSeconds = 30.0

    # the socket's group when the daemon binds it itself (socket activation: SocketGroup=)
    socket_group: str | None = None

    # monitoring
    metrics_listen: str | None = None  # "127.0.0.1:9464": serve /metrics over HTTP; loopback only
    # per-session series on metrics_listen too, for any local user to read (docs/security.md);
    # false: the daemon-wide aggregates only
    metrics_listen_sessions: bool = False
    # a Unix socket serving /metrics and /health, each peer answered as the RPC
    # `metrics` method answers it (its uid's sessions, or all for an admin); None: off
    metrics_socket: str | None = None
    resource_sample_interval: PositiveSeconds = 15.0  # per-session Chromium PSS/CPU sampling
    health_max_loop_lag: PositiveSeconds = 1.0
    health_min_free_bytes: Annotated[int, msgspec.Meta(ge=0)] = 512 << 20
    health_max_failing_fraction: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5

    # several hosts, one fleet (docs/cluster.md): None keeps one host with its own registry
    redis_url: str | None = None  # redis://, rediss:// or unix://; a password may be in it
    redis_password_file: str | None = None  # the password in a file (read at start, never logged)
    host_id: HostId | None = None  # unique in the fleet; None: the hostname
    lease_ttl: Annotated[float, msgspec.Meta(ge=2, le=3600)] = 15.0  # the same on every host
    # on SIGTERM, hand this host's sessions to the others before exiting (docs/cluster.md)
    drain_on_stop: bool = False
    route_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0  # a routed mutation's bound (cluster.md)
    # the largest auth snapshot stored in (and taken from) Redis; bigger ones are not stored
    auth_snapshot_max_bytes: Annotated[int, msgspec.Meta(ge=64, le=512 << 20)] = 16 << 20

    log_level: Level = "info"
    log_levels: dict[str, Level] = {}  # per component, e.g. {chromium = "debug"}

    def __post_init__(self) -> None:
        unknown = sorted(set(self.log_levels) - set(LOG_COMPONENTS))
        if unknown:
            raise ValueError(
                f"log_levels.{unknown[0]}: unknown component; expected one of {', '.join(LOG_COMPONENTS)}"
            )
        if self.metrics_listen is not None:
            parse_listen(self.metrics_listen)
        if self.metrics_socket is not None:
            check_socket_path("metrics_socket", self.metrics_socket)
            if self.socket_path is not None and os.path.normpath(self.socket_path) == os.path.normpath(
                self.metrics_socket
            ):
                raise ValueError("metrics_socket: the RPC socket's path (socket_path); choose another")
        if self.socket_group is not None and not self.socket_group.strip():
            raise ValueError("socket_group: empty group name")
        if self.admin_group is not None and not self.admin_group.strip():
            raise ValueError("admin_group: empty group name")
        if self.browser_user is not None and not self.browser_user.strip():
            raise ValueError("browser_user: empty user name")
        if self.proxy:
            parse_proxy(self.proxy)  # its message names the key and never quotes the value
        if self.redis_url is not None:
            check_redis_url(self.redis_url, self.redis_password_file)
        elif self.redis_password_file is not None:
            raise ValueError("redis_password_file: set without redis_url")
        if self.drain_on_stop and self.redis_url is None:
            raise ValueError("drain_on_stop: set without redis_url (a host on its own has nobody to drain to)")

    def level_of(self, component: str) -> str:
        return self.log_levels.get(component, self.log_level)

    def replace(self, **changes: Any) -> Config:
        """A validated copy with ``changes`` applied."""
        return from_mapping({**msgspec.to_builtins(self), **changes})

    def reconnect_delay(self, attempt: int, jitter: float = 1.0) -> float:
        """The delay before reconnect ``attempt`` (1-based), scaled by ``jitter``, then capped."""
        delay = self.reconnect_base_delay * self.reconnect_factor ** (attempt - 1) * jitter
        return float(min(delay, self.reconnect_max_delay))


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) of a loopback address.

    Metrics say how many sessions exist and what they do; they are served to this
    host only. A Prometheus elsewhere scrapes through a proxy that adds its own
    authentication.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"metrics_listen: expected HOST:PORT, got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            raise ValueError(f"metrics_listen: {host!r} is not an IP address or localhost") from None
        if not loopback:
            raise ValueError(f"metrics_listen: {host!r} is not a loopback address (127.0.0.0/8, ::1)")
    return host, int(port_text)


REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: str, password_file: str | None) -> None:
    """A URL coredis can connect to, with the password in one place at most."""
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(f"redis_url: expected redis://, rediss:// or unix://, got {parts.scheme or 'no'} scheme")
    if parts.scheme == "unix":
        if parts.netloc.rpartition("@")[2] or not parts.path.startswith("/"):
            raise ValueError("redis_url: unix:// needs an absolute socket path (unix:///run/redis/redis.sock)")
    elif not parts.hostname:
        raise ValueError("redis_url: no host")
    else:
        try:
            parts.port  # noqa: B018 -- raises on a port that is not a number in range
        except ValueError:
            raise ValueError("redis_url: the port is not a number from 0 to 65535") from None
    if password_file is not None:
        if parts.password:
            raise ValueError("redis_password_file: redis_url carries a password too; keep one")
        if not os.path.isabs(password_file):
            raise ValueError(f"redis_password_file: expected an absolute path, got {password_file!r}")


def redact_url(url: str) -> str:
    """``url`` with its password replaced, for anything printed or logged."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


# sun_path holds 108 bytes, the terminating NUL included.
MAX_SOCKET_PATH = 107


def check_socket_path(key: str, path: str) -> None:
    """An absolute path a Unix socket can be bound at."""
    if not os.path.isabs(path):
        raise ValueError(f"{key}: expected an absolute path, got {path!r}")
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ValueError(f"{key}: longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have")


def from_mapping(data: dict[str, Any]) -> Config:
    """Validate a plain mapping into a Config; errors name the offending key."""
    return msgspec.convert(data, Config)
