"""``metrics``: the daemon's samples, and the Prometheus text if asked.

A non-admin gets the daemon-wide aggregates and the per-session series of its
own sessions only (docs/security.md)."""

from __future__ import annotations

from ....protocol import Metrics, MetricsParams
from .base import Peer, Read, Services


def metrics(services: Services, params: MetricsParams, peer: Peer) -> Metrics:
    manager = services.manager
    visible = manager.visible_to(peer.caller)
    daemon = manager.metrics
    return Metrics(daemon.samples(visible), daemon.exposition(visible) if params.prometheus else None)


HANDLER = Read("metrics", metrics)
