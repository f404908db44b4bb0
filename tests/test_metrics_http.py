"""The metrics listeners' HTTP (h11) and who a scrape is answered as, without
sockets: memory streams and a virtual clock. The listeners on real sockets, with
real other uids, are in test_metrics_listeners.py."""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest
import trio
import trio.testing
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wa_daemon.daemon.metrics_listeners import exposition_as, tcp_caller
from wa_daemon.daemon.ops.config import RESTART_KEYS, Config, from_mapping
from wa_daemon.daemon.ops.metrics_http import CONTENT_TYPE, MAX_CONNECTIONS, MAX_HEAD, REQUEST_TIMEOUT, MetricsHttp
from wa_daemon.daemon.rpc.access import ADMIN, UNKNOWN, Caller
from wa_daemon.protocol import Health, HealthCheck

from .helpers import open_manager

OWNER_A, OWNER_B = 40001, 40002


async def _healthy() -> Health:
    return Health(True, [HealthCheck("event_loop", True, "lag 0.001 s")])


async def _unhealthy() -> Health:
    return Health(False, [HealthCheck("state_dir", False, "read-only")])


def _http(health: bool = True) -> MetricsHttp:
    return MetricsHttp(lambda _stream: lambda: "unused", _healthy if health else _unhealthy)


async def _exchange(
    http: MetricsHttp, *chunks: bytes, exposition: str = "wa_x 1.0\n", pause: float = 0.0
) -> tuple[bytes, float]:
    """Send ``chunks`` (``pause`` apart) until the server closes; what came back
    before it closed, and how long that took."""
    client, server = trio.testing.memory_stream_pair()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(http.exchange, server, lambda: exposition)
        for chunk in chunks:
            try:
                await client.send_all(chunk)
            except trio.BrokenResourceError:
                break  # the server answered (or gave up) and closed: read what it said
            await trio.sleep(pause)
        received = b""
        while data := await client.receive_some():
            received += data
    return received, trio.current_time() - start


def _status(response: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    assert match, response[:200]
    return int(match[1])


def _head_and_body(response: bytes) -> tuple[dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}, body


def get(target: str, method: str = "GET", *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode()


async def test_routes_and_methods(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        response, _ = await _exchange(_http(), get("/metrics?x=1"), exposition="wa_sessions 3.0\n")
        headers, body = _head_and_body(response)
        assert _status(response) == 200 and body == b"wa_sessions 3.0\n"
        assert headers["content-type"] == CONTENT_TYPE and headers["content-length"] == "16"
        assert headers["connection"] == "close"

        response, _ = await _exchange(_http(), get("/metrics", "HEAD"))
        headers, body = _head_and_body(response)
        assert _status(response) == 200 and body == b"" and headers["content-length"] == "9"

        response, _ = await _exchange(_http(), get("/health"))
        headers, body = _head_and_body(response)
        assert _status(response) == 200 and headers["content-type"] == "application/json"
        assert body == b'{"healthy": true, "checks": [{"name": "event_loop", "ok": true, "message": "lag 0.001 s"}]}'
        response, _ = await _exchange(_http(health=False), get("/health"))
        assert _status(response) == 503 and b'"healthy": false' in response

        response, _ = await _exchange(_http(), get("/metrics", "POST", "Content-Length: 0"))
        assert _status(response) == 405 and _head_and_body(response)[0]["allow"] == "GET, HEAD"
        response, _ = await _exchange(_http(), get("/nope"))
        assert _status(response) == 404 and response.endswith(b"not found: try /metrics or /health\n")


@pytest.mark.parametrize(
    "request_bytes",
    [b"garbage\r\n\r\n", b"GET /metrics\r\n\r\n", b"GET /metrics HTTP/1.1\r\n\r\n",  # no Host: HTTP/1.1 needs one
     b"GET /metrics HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n", b"GET /metrics HTTP/2.0\r\nHost: a\r\n\r\n"],
)
async def test_malformed_requests_get_400(autojump_clock: trio.testing.MockClock, request_bytes: bytes) -> None:
    with trio.fail_after(60):
        response, _ = await _exchange(_http(), request_bytes)
        assert _status(response) == 400, response


async def test_heads_over_the_cap_get_431_however_they_arrive(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        big = get("/metrics", "GET", "X-Big: " + "x" * MAX_HEAD)
        assert len(big) > MAX_HEAD
        at_once, _ = await _exchange(_http(), big)
        assert _status(at_once) == 431 and at_once.endswith(b"request head too large\n")
        # In small pieces, each one well under the cap: still the whole head counts.
        pieces = [big[i:i + 100] for i in range(0, len(big), 100)]
        in_pieces, _ = await _exchange(_http(), *pieces, pause=0.01)
        assert _status(in_pieces) == 431
        # A head just under the cap is served.
        fits = get("/metrics", "GET", "X-Big: " + "x" * (MAX_HEAD - 120))
        assert len(fits) <= MAX_HEAD
        assert _status((await _exchange(_http(), fits))[0]) == 200


async def test_a_slow_client_is_cut_off_at_the_request_timeout(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(REQUEST_TIMEOUT * 3):
        # Half a request line, then nothing: closed without an answer.
        response, took = await _exchange(_http(), b"GET /metr")
        assert response == b"" and took == pytest.approx(REQUEST_TIMEOUT)
        # One byte a second never finishes either: the limit is for the whole request.
        response, took = await _exchange(_http(), *[bytes([b]) for b in get("/metrics")], pause=1.0)
        assert response == b"" and took == pytest.approx(REQUEST_TIMEOUT)
        # A peer that goes away before a request gets nothing, at once.
        client, server = trio.testing.memory_stream_pair()
        await client.aclose()
        await _http().exchange(server, lambda: "")


async def test_connections_over_the_cap_get_503_at_once(autojump_clock: trio.testing.MockClock) -> None:
    http = _http()
    with trio.fail_after(REQUEST_TIMEOUT * 3):
        async with trio.open_nursery() as nursery:
            for _ in range(MAX_CONNECTIONS):  # every slot held by a client that says nothing
                nursery.start_soon(http.exchange, trio.testing.memory_stream_pair()[1], lambda: "")
            await trio.sleep(1)
            response, took = await _exchange(http, get("/metrics"))
            assert _status(response) == 503 and took < 1
        # The stalled ones timed out and gave their slots back.
        assert _status((await _exchange(http, get("/metrics")))[0]) == 200


# ---------------------------------------------------------------------------- who a scrape is answered as


class _PerSession(Collector):
    def __init__(self, sessions: Iterable[str]) -> None:
        self._sessions = list(sessions)

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("wa_session_memory_pss_bytes", "PSS", labels=["session"])
        for sid in self._sessions:
            family.add_metric([sid], 1.0)
        yield family


def _session_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if 'session="' in line]


def _sessions_in(text: str) -> set[str]:
    return set(re.findall(r'session="([^"]+)"', text))


def test_the_keys_and_how_a_reload_treats_them() -> None:
    assert Config().metrics_listen_sessions is False and Config().metrics_socket is None
    assert tcp_caller(Config()) == UNKNOWN
    assert tcp_caller(from_mapping({"metrics_listen_sessions": True})) == ADMIN
    # The socket is bound once; who may read what is decided at each scrape.
    assert "metrics_socket" in RESTART_KEYS and "metrics_listen_sessions" not in RESTART_KEYS


async def test_listeners_filter_as_the_metrics_method_does() -> None:
    with trio.fail_after(30):
        async with open_manager() as (manager, _driver):
            await manager.connect("a-s", owner_uid=OWNER_A, caller=Caller.user(OWNER_A))
            await manager.connect("b-s", owner_uid=OWNER_B, caller=Caller.user(OWNER_B))
            manager.metrics.registry.register(_PerSession(["a-s", "b-s"]))

            tcp = exposition_as(manager, tcp_caller)
            text = tcp()
            assert _sessions_in(text) == set() and 'wa_sessions{state="starting"} 2.0' in text
            assert "# TYPE wa_session_memory_pss_bytes gauge" in text  # the family, without its series
            manager.reconfigure(manager.config.replace(metrics_listen_sessions=True))  # as a reload does
            assert _sessions_in(tcp()) == {"a-s", "b-s"}

            for caller, seen in ((Caller.user(OWNER_A), {"a-s"}), (Caller.user(OWNER_B), {"b-s"}),
                                 (Caller.user(40003), set()), (UNKNOWN, set()), (ADMIN, {"a-s", "b-s"})):
                text = exposition_as(manager, lambda _config, c=caller: c)()
                # The same series the RPC `metrics` method shows that caller.
                rpc = manager.metrics.exposition(manager.visible_to(caller))
                assert _session_lines(text) == _session_lines(rpc)
                assert _sessions_in(text) == seen and "wa_connect_attempts_total" in text
