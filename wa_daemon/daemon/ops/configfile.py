"""Where the configuration comes from: a TOML file, then environment variables,
then command-line flags, each overriding the one before; decoded into
:class:`~.config.Config` with errors that name the key, the line and what was
expected."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ...proxy import masked
from ..browser.contract import ContractError, load_contract
from ..browser.sandbox import SandboxError, resolve_user
from .config import Config, redact_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the daemon's extra installs tomli there
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/wa-daemon/config.toml")

# Environment variables that override a key. Only the keys a deployment sets per
# host (paths, the driver, the level) are here: limits and timings belong in the file.
ENV_KEYS: dict[str, str] = {
    "WA_DAEMON_SOCKET": "socket_path",
    "WA_DAEMON_STATE_DIR": "state_dir",
    "WA_DAEMON_DRIVER": "driver",
    "WA_DAEMON_LOG_LEVEL": "log_level",
    "WA_DAEMON_WHATSAPP_URL": "whatsapp_url",
    "WA_DAEMON_CHROMIUM_PATH": "chromium_path",
    "WA_DAEMON_METRICS_LISTEN": "metrics_listen",
    "WA_DAEMON_METRICS_SOCKET": "metrics_socket",
    "WA_DAEMON_BROWSER_USER": "browser_user",
}
ENV_CONFIG = "WA_DAEMON_CONFIG"  # the file, when --config is not given


class ConfigError(Exception):
    """The configuration does not validate; the message says where and why."""


@dataclass(frozen=True)
class ConfigSource:
    """Everything needed to build the configuration again (SIGHUP does)."""

    path: Path | None = None  # None: DEFAULT_CONFIG_PATH if it exists
    explicit: bool = False  # a missing file is an error only when someone named it
    overrides: Mapping[str, Any] = field(default_factory=dict)  # command-line flags, nested for tables
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    @classmethod
    def from_args(
        cls, path: str | None, overrides: Mapping[str, Any], env: Mapping[str, str] | None = None
    ) -> ConfigSource:
        env = dict(os.environ if env is None else env)
        if path is None and env.get(ENV_CONFIG):
            path = env[ENV_CONFIG]
        if path is None:
            return cls(DEFAULT_CONFIG_PATH, False, overrides, env)
        return cls(Path(path), True, overrides, env)

    def load(self) -> Config:
        data: dict[str, Any] = {}
        text = ""
        if self.path is not None:
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                if self.explicit:
                    raise ConfigError(f"{self.path}: no such file") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{self.path}: cannot read: {exc}") from None
            if text:
                try:
                    data = tomllib.loads(text)
                except tomllib.TOMLDecodeError as exc:
                    raise ConfigError(f"{self.path}: not valid TOML: {exc}") from None
        from_file = _flatten(data)
        for var, key in ENV_KEYS.items():
            value = self.env.get(var)
            if value:
                data[key] = value
        _merge(data, self.overrides)
        try:
            config = msgspec.convert(data, Config)
        except msgspec.ValidationError as exc:
            raise ConfigError(self._explain(str(exc), from_file, text)) from None
        try:
            # Read here so a broken contract file is a configuration error at start,
            # at check-config and at reload, not a surprise at the first launch.
            load_contract(config.page_contract)
        except ContractError as exc:
            raise ConfigError(str(exc)) from None
        if config.browser_user is not None:
            try:  # an unknown user is a configuration error, not a failure at the first launch
                resolve_user(config.browser_user)
            except SandboxError as exc:
                raise ConfigError(str(exc)) from None
        return config

    def _explain(self, message: str, from_file: set[str], text: str) -> str:
        key, what = _key_of(message)
        if key is None:
            return f"configuration: {what}"
        # The source that won is the one to blame: flags, then environment, then file.
        env_var = next((v for v, k in ENV_KEYS.items() if k == key and self.env.get(v)), None)
        if _covers(_flatten(self.overrides), key):
            origin = "command line"
        elif env_var is not None:
            origin = f"environment {env_var}"
        elif _covers(from_file, key) and self.path is not None:
            line = find_line(text, key)
            origin = f"{self.path}, line {line}" if line else str(self.path)
        else:
            origin = "configuration"
        return f"{origin}: key {key!r}: {what}"


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _flatten(data: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Dotted names of every key present, tables included."""
    out: set[str] = set()
    for key, value in data.items():
        name = prefix + key
        out.add(name)
        if isinstance(value, Mapping):
            out |= _flatten(value, name + ".")
    return out


def _covers(keys: set[str], key: str) -> bool:
    return key in keys or any(key.startswith(k + ".") for k in keys)


_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"unknown field `(?P<name>[^`]+)`")
_OWN = re.compile(r"^(?P<key>[a-z_][a-z0-9_.]*): (?P<what>.*)$", re.S)  # Config.__post_init__'s "key: why"


def _key_of(message: str) -> tuple[str | None, str]:
    """(dotted key, what is wrong) from a msgspec validation message."""
    m = _AT.match(message)
    assert m is not None  # the pattern matches any text
    what, path = m["what"], m["path"] or ""
    parts = [p for p in re.split(r"\.|\[[^\]]*\]", path) if p]
    unknown = _UNKNOWN.search(what)
    if unknown:
        return ".".join([*parts, unknown["name"]]), "unknown key"
    if parts:
        return ".".join(parts), what[0].lower() + what[1:] if what else what
    own = _OWN.match(what)
    if own:
        return own["key"], own["what"]
    return None, what


_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\s*(#.*)?$")
_ASSIGN = re.compile(r"^\s*([A-Za-z0-9_\-\".]+?)\s*=")


def find_line(text: str, key: str) -> int | None:
    """The 1-based line where dotted ``key`` (or the nearest enclosing key) is set.

    A small scanner for the shapes a configuration file has: ``key = value``
    and ``[table]`` headers. A key set inside an inline table or a multi-line
    value is found at the line of its enclosing key.
    """
    found: dict[str, int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE.match(line)
        if header and not line.lstrip().startswith("[["):
            table = header[1].replace('"', "").replace(" ", "")
            found.setdefault(table, number)
            continue
        assign = _ASSIGN.match(line)
        if assign:
            name = assign[1].replace('"', "")
            found.setdefault(f"{table}.{name}" if table else name, number)
    parts = key.split(".")
    while parts:
        line_no = found.get(".".join(parts))
        if line_no is not None:
            return line_no
        parts.pop()
    return None


def render(config: Config) -> str:
    """The configuration as TOML, every key included (unset ones as comments:
    TOML has no null), the proxy's password masked."""
    import tomli_w

    data = msgspec.to_builtins(config)
    data["proxy"] = masked(config.proxy) or config.proxy  # a password is not for a terminal
    if config.redis_url is not None:
        data["redis_url"] = redact_url(config.redis_url)  # printed: never the password
    lines: list[str] = []
    tables: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            tables[key] = value
        elif value is None:
            lines.append(f"# {key} = (unset)")
        else:
            lines.append(tomli_w.dumps({key: value}).rstrip("\n"))
    for name, table in tables.items():
        lines += ["", f"[{name}]"]
        for key, value in table.items():
            lines.append(f"# {key} = (unset)" if value is None else tomli_w.dumps({key: value}).rstrip("\n"))
    return "\n".join(lines) + "\n"
