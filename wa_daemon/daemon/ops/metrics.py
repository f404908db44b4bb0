"""The daemon's metrics, one prometheus_client registry per daemon instance."""

from __future__ import annotations

import copy
import math
import os
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ...protocol import Sample, State
from ...proxy import SCHEMES
from ..browser.sandbox import SANDBOX_MODES


class _Pages(Collector):
    """What live sessions' pages say: their web version, and the contract items they lack."""

    def __init__(self, pages: Callable[[], Iterable[tuple[str, str | None, dict[str, str]]]]) -> None:
        self._pages = pages

    def collect(self) -> Iterable[Metric]:
        versions = GaugeMetricFamily(
            "wa_web_version_info", "WhatsApp Web version of each live session's page (value 1)",
            labels=["session", "version"],
        )
        missing: dict[tuple[str, str], int] = {}
        for session, version, lacking in self._pages():
            if version:
                versions.add_metric([session, version], 1)
            for item, need in lacking.items():
                missing[(item, need)] = missing.get((item, need), 0) + 1
        yield versions
        family = GaugeMetricFamily(
            "wa_page_contract_missing",
            "live sessions whose page lacks a contract item (need: required or optional)",
            labels=["item", "need"],
        )
        for (item, need), count in sorted(missing.items()):
            family.add_metric([item, need], count)
        yield family


class _SessionsByState(Collector):
    def __init__(self, counts: Callable[[], dict[State, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("wa_sessions", "Sessions by state", labels=["state"])
        counts = self._counts()
        for state in State:
            family.add_metric([state.value], counts.get(state, 0))
        yield family


class _SessionsByProxy(Collector):
    """Active sessions by how their browser reaches WhatsApp: ``direct`` or the proxy's
    scheme. Never a host or a credential: a label is no place for either."""

    def __init__(self, kinds: Callable[[], Iterable[str]]) -> None:
        self._kinds = kinds

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "wa_sessions_by_proxy", "Active sessions by the proxy their browser uses (its scheme, or direct)",
            labels=["proxy"],
        )
        counts = Tally(self._kinds())
        for kind in ("direct", *SCHEMES):
            family.add_metric([kind], counts.get(kind, 0))
        yield family


# prometheus_client's own switch for the ``*_created`` samples, read the same way.
_CREATED = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in ("true", "1", "t")


class _HistogramChild:
    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # The first bucket whose upper bound is >= amount, as prometheus_client picks it.
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class LabelledHistogram(Collector):
    """A histogram with one label, exposed exactly as prometheus_client's
    ``Histogram`` exposes it (same samples, labels, order and ``*_created``).

    ``wa_rpc_duration_seconds`` is observed on every RPC: here that is a bisect
    and two additions, where ``Histogram.observe`` takes two locks and walks the
    buckets (about 0.2 against 1.3 µs). Only the event loop's thread observes.
    """

    def __init__(
        self, name: str, documentation: str, label: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._label = label
        bounds = tuple(float(b) for b in buckets)
        self._bounds = bounds if bounds[-1] == math.inf else (*bounds, math.inf)
        self._children: dict[str, _HistogramChild] = {}
        registry.register(self)

    def labels(self, value: str) -> _HistogramChild:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = _HistogramChild(self._bounds)
        return child

    def describe(self) -> Iterable[Metric]:
        return [Metric(self._name, self._documentation, "histogram")]

    def collect(self) -> Iterable[Metric]:
        metric = Metric(self._name, self._documentation, "histogram")
        les = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        for value, child in list(self._children.items()):
            labels = {self._label: value}
            cumulative = 0.0
            for le, count in zip(les, child.counts, strict=True):
                cumulative += count
                metric.add_sample(self._name + "_bucket", {**labels, "le": le}, cumulative)
            metric.add_sample(self._name + "_count", labels, cumulative)
            metric.add_sample(self._name + "_sum", labels, child.sum)
            if _CREATED:
                metric.add_sample(self._name + "_created", labels, child.created)
        return [metric]


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
        self.rpc_duration = LabelledHistogram(
            "wa_rpc_duration_seconds",
            "RPC handling time by method",
            "method",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=r,
        )
        self.protocol_errors = Counter("wa_protocol_errors", "malformed input from clients", registry=r)
        self.registry_errors = Counter(
            "wa_registry_errors", "registry writes that failed (state directory read-only or full)", registry=r
        )
        self.messages_stored = Counter(
            "wa_messages_stored", "messages written to the inbox, by direction (in, out)", ["direction"], registry=r
        )
        self.inbox_errors = Counter(
            "wa_inbox_errors", "inbox writes that failed (a message or ack the page reported was not stored)", registry=r
        )
        self.watch_subscribers = Gauge("wa_watch_subscribers", "open watch streams", registry=r)
        self.watch_dropped = Counter(
            "wa_watch_events_dropped", "stale events dropped from slow watchers' queues", registry=r
        )
        self.connections = Gauge("wa_rpc_connections", "open client connections", registry=r)
        self.launch_queue = Gauge("wa_launch_queue", "sessions waiting for a launch slot", registry=r)
        # Requests refused by a limit (label values: connections, watch_streams,
        # inflight, sessions, sessions_per_uid, frame_size).
        self.limit_refusals = Counter("wa_limit_refusals", "requests refused by a limit", ["limit"], registry=r)
        self.connections_closed = Counter(
            "wa_connections_closed",
            "connections the daemon closed on its own (idle, not_reading, hello_timeout, limit)",
            ["reason"],
            registry=r,
        )
        self.accept_failures = Counter(
            "wa_accept_failures", "failed accept() calls on the RPC socket (EMFILE, ENFILE, ...)", ["error"], registry=r
        )
        self.session_recycles = Counter(
            "wa_session_recycles", "browsers closed and relaunched on purpose, by reason", ["reason"], registry=r
        )
        self.web_unknown_states = Counter(
            "wa_web_unknown_states", "WhatsApp socket states seen that the page contract does not know", ["state"],
            registry=r,
        )
        self.pairing_codes = Counter("wa_pairing_codes", "pairing codes shown (linking by phone number)", registry=r)
        self.config_reloads = Counter("wa_config_reloads", "configuration reloads (SIGHUP) by result", ["result"],
                                      registry=r)
        self._info = Gauge("wa_build_info", "the daemon's version and driver (value 1)", ["version", "driver"],
                           registry=r)
        self._sandbox = Gauge(
            "wa_browser_sandbox", "Chromium's own sandbox: 1 for the mode the browsers run in (namespace, none)",
            ["mode"], registry=r,
        )
        ProcessCollector(registry=r)  # process_*: the daemon's own memory, CPU, descriptors

    def build_info(self, version: str, driver: str) -> None:
        self._info.labels(version, driver).set(1)

    def browser_sandbox(self, mode: str | None) -> None:
        """``mode``: the driver's sandbox mode; None (the scripted driver): no series."""
        if mode is None:
            return
        for each in SANDBOX_MODES:
            self._sandbox.labels(each).set(1 if each == mode else 0)

    def track_sessions(self, counts: Callable[[], dict[State, int]]) -> None:
        self.registry.register(_SessionsByState(counts))

    def track_proxies(self, kinds: Callable[[], Iterable[str]]) -> None:
        """``kinds()``: ``direct`` or the proxy's scheme, per active session."""
        self.registry.register(_SessionsByProxy(kinds))

    def track_pages(self, pages: Callable[[], Iterable[tuple[str, str | None, dict[str, str]]]]) -> None:
        """``pages()``: (session, web version, {missing item: "required"|"optional"}) per live page."""
        self.registry.register(_Pages(pages))

    def collect(self, visible: Callable[[str], bool] | None = None) -> Iterator[Metric]:
        """Every metric family; with ``visible``, without the samples labelled with
        a ``session`` it rejects (per-session series of sessions a caller may not see)."""
        for family in self.registry.collect():
            if visible is not None:
                kept = [s for s in family.samples if "session" not in s.labels or visible(s.labels["session"])]
                if len(kept) != len(family.samples):
                    family = copy.copy(family)
                    family.samples = kept
            yield family

    def samples(self, visible: Callable[[str], bool] | None = None) -> list[Sample]:
        out: list[Sample] = []
        for family in self.collect(visible):
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue  # creation timestamps are noise for humans and tests
                out.append(Sample(s.name, dict(s.labels), float(s.value)))
        return out

    def exposition(self, visible: Callable[[str], bool] | None = None) -> str:
        if visible is None:
            return generate_latest(self.registry).decode()
        return generate_latest(_Families(self.collect(visible))).decode()


class _Families:
    """Metric families to hand to ``generate_latest``, which only calls ``collect``."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
