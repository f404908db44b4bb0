"""The configuration file, its layers and its errors; check-config; the doc agreeing with the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import tomllib

from wa_daemon.daemon.ops.config import (
    LOG_COMPONENTS,
    RESTART_KEYS,
    Config,
    MessageRetention,
    ScriptedConfig,
    parse_listen,
)
from wa_daemon.daemon.ops.configfile import ConfigError, ConfigSource, find_line, render

DOCS = Path(__file__).resolve().parent.parent / "docs"


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None, **overrides: Any) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return ConfigSource(path, True, overrides, env or {}).load()


def error(tmp_path: Path, text: str, env: dict[str, str] | None = None, **overrides: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env, **overrides)
    return str(info.value)


def test_file_values_are_typed(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        'max_sessions = 7\nqr_timeout = 60\nchromium_args = ["--lang=en"]\n'
        '[scripted]\nauto_scan_after = 1.5\n[log_levels]\nchromium = "debug"\n',
    )
    assert cfg.max_sessions == 7 and cfg.qr_timeout == 60.0 and cfg.chromium_args == ["--lang=en"]
    assert cfg.scripted.auto_scan_after == 1.5 and cfg.scripted.qr_ttl == ScriptedConfig().qr_ttl
    assert cfg.level_of("chromium") == "debug" and cfg.level_of("server") == "info"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("log_level = 'info'\nmax_sessions = 'many'\n", "line 2: key 'max_sessions': expected `int`, got `str`"),
        ("\n\nmax_sesions = 3\n", "line 3: key 'max_sesions': unknown key"),
        ("[scripted]\nlaunch_delay = 0.1\nbogus = 3\n", "line 3: key 'scripted.bogus': unknown key"),
        ("qr_timeout = -1\n", "line 1: key 'qr_timeout': expected `float` > 0.0"),
        ("[log_levels]\nchromium = 'loud'\n", "line 1: key 'log_levels': invalid enum value 'loud'"),
        ("[log_levels]\nsesion = 'debug'\n", "line 2: key 'log_levels.sesion': unknown component"),
        ("x = 1\nmetrics_listen = '0.0.0.0:9464'\n", "line 1: key 'x': unknown key"),
        ("metrics_listen = '0.0.0.0:9464'\n", "line 1: key 'metrics_listen': '0.0.0.0' is not a loopback address"),
        ("driver = 'firefox'\n", "line 1: key 'driver': invalid enum value 'firefox'"),
        ("metrics_socket = 'metrics.sock'\n", "line 1: key 'metrics_socket': expected an absolute path"),
        ("metrics_socket = '/run/" + "m" * 110 + "'\n", "line 1: key 'metrics_socket': longer than the 107 bytes"),
        ("socket_path = '/run/w.sock'\nmetrics_socket = '/run/w.sock'\n",
         "line 2: key 'metrics_socket': the RPC socket's path"),
        ("metrics_listen_sessions = 'yes'\n", "line 1: key 'metrics_listen_sessions': expected `bool`, got `str`"),
    ],
)
def test_errors_name_the_line_the_key_and_what_was_expected(tmp_path: Path, text: str, expected: str) -> None:
    message = error(tmp_path, text)
    assert message.startswith(str(tmp_path / "config.toml") + ", " + expected.split(":")[0]), message
    assert expected in message


def test_syntax_errors_and_missing_files(tmp_path: Path) -> None:
    assert "not valid TOML" in error(tmp_path, "max_sessions = [\n")
    assert "(at line 2, column 5)" in error(tmp_path, "a = 1\nb = = 2\n")
    with pytest.raises(ConfigError, match="no such file"):
        ConfigSource(tmp_path / "absent.toml", True, {}, {}).load()
    # The default path may be absent: all defaults then.
    assert ConfigSource(tmp_path / "absent.toml", False, {}, {}).load() == Config()


def test_layers_file_then_environment_then_flags(tmp_path: Path) -> None:
    text = 'log_level = "warning"\nstate_dir = "/from/file"\nmax_sessions = 3\n'
    env = {"WA_DAEMON_LOG_LEVEL": "error", "WA_DAEMON_STATE_DIR": "", "WA_DAEMON_SOCKET": "/env/s.sock"}
    cfg = load(tmp_path, text, env)
    assert cfg.log_level == "error"  # environment over file
    assert cfg.state_dir == "/from/file"  # an empty variable is unset
    assert cfg.socket_path == "/env/s.sock"
    cfg = load(tmp_path, text, env, log_level="debug", scripted={"qr_ttl": 5})
    assert cfg.log_level == "debug" and cfg.scripted.qr_ttl == 5 and cfg.max_sessions == 3  # flags over both
    # The error blames the layer that won.
    assert error(tmp_path, text, {"WA_DAEMON_LOG_LEVEL": "loud"}).startswith("environment WA_DAEMON_LOG_LEVEL: ")
    assert error(tmp_path, text, max_sessions="x").startswith("command line: key 'max_sessions'")


def test_metrics_socket_from_environment(tmp_path: Path) -> None:
    env = {"WA_DAEMON_METRICS_SOCKET": "/run/wa-daemon-metrics/metrics.sock"}
    cfg = load(tmp_path, "metrics_listen_sessions = true\n", env)
    assert cfg.metrics_socket == "/run/wa-daemon-metrics/metrics.sock" and cfg.metrics_listen_sessions is True
    assert error(tmp_path, "", {"WA_DAEMON_METRICS_SOCKET": "m.sock"}).startswith(
        "environment WA_DAEMON_METRICS_SOCKET: key 'metrics_socket': expected an absolute path")


def test_config_path_from_environment(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("max_sessions = 9\n")
    source = ConfigSource.from_args(None, {}, {"WA_DAEMON_CONFIG": str(tmp_path / "c.toml")})
    assert source.explicit and source.load().max_sessions == 9


def test_find_line_scanner() -> None:
    text = 'a = 1\n\n[scripted] # comment\n"qr_ttl" = 3\n[log_levels]\nchromium = "debug"\n'
    assert find_line(text, "a") == 1
    assert find_line(text, "scripted") == 3
    assert find_line(text, "scripted.qr_ttl") == 4
    assert find_line(text, "log_levels.chromium") == 6
    assert find_line(text, "log_levels.nothing") == 5  # falls back to the enclosing table
    assert find_line(text, "absent") is None


def test_rendered_configuration_reads_back_identical() -> None:
    cfg = Config(max_sessions=3, log_levels={"chromium": "debug"}, metrics_listen="127.0.0.1:9464",
                 chromium_args=["--lang=en"])
    text = render(cfg)
    assert msgspec.convert(tomllib.loads(text), Config) == cfg
    assert "# socket_path = (unset)" in text


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("localhost:80") == ("localhost", 80)
    for bad in ("9464", "127.0.0.1:x", "127.0.0.1:70000", "10.1.2.3:9464", "example.com:9464", "[::]:1"):
        with pytest.raises(ValueError, match="metrics_listen"):
            parse_listen(bad)


def _wa_daemon(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wa_daemon.daemon.main", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


def test_check_config_prints_the_effective_configuration(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('max_sessions = 12\n[log_levels]\nserver = "warning"\n')
    result = _wa_daemon("check-config", str(path), env={"PATH": "/usr/bin:/bin", "WA_DAEMON_LOG_LEVEL": "debug"})
    assert result.returncode == 0, result.stderr
    effective = msgspec.convert(tomllib.loads(result.stdout), Config)
    assert effective.max_sessions == 12 and effective.log_level == "debug"
    assert effective.log_levels == {"server": "warning"}

    defaults = _wa_daemon("check-config", "--defaults")
    assert defaults.returncode == 0 and msgspec.convert(tomllib.loads(defaults.stdout), Config) == Config()


def test_check_config_and_the_daemon_refuse_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("max_sessions = 0\n")
    for args in (["check-config", str(path)], ["--config", str(path), "--socket", str(tmp_path / "s")]):
        result = _wa_daemon(*args)
        assert result.returncode == 78, result
        assert f"{path}, line 1: key 'max_sessions': expected `int` >= 1" in result.stderr
        assert not (tmp_path / "s").exists()
    assert _wa_daemon("--config", str(tmp_path / "none.toml")).returncode == 78


# ------------------------------------------------------------------ the doc agrees with the code


def _doc_rows() -> dict[str, str]:
    """key -> default cell of every table row in docs/configuration.md."""
    rows: dict[str, str] = {}
    for line in (DOCS / "configuration.md").read_text().splitlines():
        m = re.match(r"^\| `([a-z_.]+)` \| [^|]+ \| ([^|]+) \|", line)
        if m:
            rows.setdefault(m[1], m[2].strip())
    return rows


def _as_doc(value: Any) -> set[str]:
    """The ways the doc may write ``value``."""
    if value is None:
        return {"None"}
    if isinstance(value, bool):
        return {str(value).lower()}
    if isinstance(value, int | float):
        return {f"{value:g}", str(value), f"{value}"}
    if isinstance(value, str):
        return {f"`{value}`"}
    return {f"`{msgspec.json.encode(value).decode()}`"}


def test_configuration_doc_defaults_match_the_structs() -> None:
    rows = _doc_rows()
    checked = 0
    for struct, prefix in ((Config(), ""), (ScriptedConfig(), "scripted."), (MessageRetention(), "message_retention.")):
        for field in msgspec.structs.fields(struct):
            if field.name in ("scripted", "message_retention"):
                continue
            key = prefix + field.name
            assert key in rows, f"{key} has no row in docs/configuration.md"
            assert rows[key] in _as_doc(getattr(struct, field.name)), (key, rows[key])
            checked += 1
    assert checked >= 50


def test_configuration_doc_lists_the_restart_keys() -> None:
    text = (DOCS / "configuration.md").read_text()
    section = text[text.index("These keys are read once at start-up") :]
    section = section[: section.index("\n\n")]
    assert re.findall(r"`([a-z_]+)`", section)[1:] == list(RESTART_KEYS)  # after `config_needs_restart`


def test_every_daemon_logger_is_a_log_levels_component() -> None:
    # A module that named its own logger could log under a name `log_levels` does
    # not know, and no configuration could quiet or raise it.
    root = Path(__file__).resolve().parent.parent / "wa_daemon" / "daemon"
    own = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "log.py" and "structlog.get_logger(" in p.read_text()
    ]
    assert own == [], "use ops.log.get_logger(component)"
    used = set()
    for p in root.rglob("*.py"):
        used |= set(re.findall(r'get_logger\("([a-z]+)"\)', p.read_text()))
    assert used and used <= set(LOG_COMPONENTS)


# ------------------------------------------------------------------ several hosts (docs/cluster.md)


def test_cluster_keys_default_to_one_host() -> None:
    cfg = Config()
    assert cfg.redis_url is None and cfg.host_id is None and cfg.lease_ttl == 15.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('redis_url = "http://h:6379"', "key 'redis_url': expected redis://, rediss:// or unix://, got http scheme"),
        ('redis_url = "redis://h:99999"', "key 'redis_url': the port is not a number from 0 to 65535"),
        ('redis_url = "redis://"', "key 'redis_url': no host"),
        ('redis_url = "unix://run/r.sock"', "key 'redis_url': unix:// needs an absolute socket path"),
        ('redis_url = "redis://:pw@h"\nredis_password_file = "/etc/pw"', "redis_url carries a password too"),
        ('redis_url = "redis://h"\nredis_password_file = "pw"', "key 'redis_password_file': expected an absolute path"),
        ('redis_password_file = "/etc/pw"', "key 'redis_password_file': set without redis_url"),
        ('host_id = "a b"', "key 'host_id': expected `str` matching regex"),
        ("lease_ttl = 1", "key 'lease_ttl': expected `float` >= 2.0"),
        ("drain_on_stop = true", "key 'drain_on_stop': set without redis_url"),
        ('redis_url = "redis://h"\ndrain_on_stop = 1', "key 'drain_on_stop': expected `bool`"),
    ],
)
def test_cluster_keys_refuse_bad_values(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error(tmp_path, text)


def test_cluster_keys_accepted(tmp_path: Path) -> None:
    for url in ("redis://h", "rediss://u:pw@redis.example:6380/2", "unix:///run/redis/redis.sock?db=1"):
        assert load(tmp_path, f'redis_url = "{url}"\nhost_id = "web-1.a_b"\nlease_ttl = 5').redis_url == url
    assert load(tmp_path, 'redis_url = "redis://h"\ndrain_on_stop = true').drain_on_stop


def test_check_config_never_prints_the_redis_password(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('redis_url = "rediss://fleet:s3cret-pw@redis.example:6380/0"\n')
    result = _wa_daemon("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert 'redis_url = "rediss://fleet:***@redis.example:6380/0"' in result.stdout
