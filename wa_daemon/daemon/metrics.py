"""The daemon's metrics, one prometheus_client registry per daemon instance."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..protocol import Sample, State


class _SessionsByState(Collector):
    def __init__(self, counts: Callable[[], dict[State, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("wa_sessions", "Sessions by state", labels=["state"])
        counts = self._counts()
        for state in State:
            family.add_metric([state.value], counts.get(state, 0))
        yield family


class DaemonMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.connect_attempts = Counter(
            "wa_connect_attempts", "connect calls by result", ["result"], registry=r
        )
        self.rate_limited = Counter("wa_rate_limited", "connect calls refused by the rate limit", registry=r)
        self.qr_generated = Counter("wa_qr_generated", "QR codes shown by pages (before debounce)", registry=r)
        self.qr_events = Counter("wa_qr_events", "QR events published (after debounce)", registry=r)
        self.transitions = Counter(
            "wa_state_transitions", "state transitions", ["from_state", "to_state"], registry=r
        )
        self.invalid_transitions = Counter(
            "wa_invalid_transitions",
            "transitions attempted that the state table forbids (each one is a bug)",
            ["from_state", "to_state"],
            registry=r,
        )
        self.reconnects = Counter("wa_reconnects", "reconnect attempts", registry=r)
        self.cleanups = Counter("wa_inactive_cleanups", "sessions stopped by the inactive sweep", registry=r)
        self.browser_crashes = Counter("wa_browser_crashes", "browsers lost, by kind", ["kind"], registry=r)
        self.launches = Counter("wa_browser_launches", "browser launches by result", ["result"], registry=r)
        self.rpc_duration = Histogram(
            "wa_rpc_duration_seconds",
            "RPC handling time by method",
            ["method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=r,
        )
        self.protocol_errors = Counter("wa_protocol_errors", "malformed input from clients", registry=r)
        self.watch_subscribers = Gauge("wa_watch_subscribers", "open watch streams", registry=r)
        self.watch_dropped = Counter(
            "wa_watch_events_dropped", "stale events dropped from slow watchers' queues", registry=r
        )
        self.connections = Gauge("wa_rpc_connections", "open client connections", registry=r)
        self.launch_queue = Gauge("wa_launch_queue", "sessions waiting for a launch slot", registry=r)

    def track_sessions(self, counts: Callable[[], dict[State, int]]) -> None:
        self.registry.register(_SessionsByState(counts))

    def samples(self) -> list[Sample]:
        out: list[Sample] = []
        for family in self.registry.collect():
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue  # creation timestamps are noise for humans and tests
                out.append(Sample(s.name, dict(s.labels), float(s.value)))
        return out

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()
