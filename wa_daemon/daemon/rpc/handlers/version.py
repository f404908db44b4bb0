"""``version``: the daemon's version, protocol and browser driver."""

from __future__ import annotations

from ...._version import __version__
from ....protocol import PROTOCOL_VERSION, NoParams, VersionInfo
from .base import Peer, Read, Services


def version(services: Services, params: NoParams, peer: Peer) -> VersionInfo:
    return VersionInfo(__version__, PROTOCOL_VERSION, services.manager.driver_name)


HANDLER = Read("version", version)
