"""``connect``: start a session unless it is on its way already (idempotent).

A new session belongs to the peer's uid (None when its credentials could not
be read, which the manager refuses); the options apply from the next attempt
on and are remembered. A proxy that does not parse is refused here, before the
manager sees it."""

from __future__ import annotations

from ....errors import InvalidArgument
from ....protocol import ConnectParams, SessionStatus
from ....proxy import parse_proxy
from ...sessions.options import SessionOptions
from .base import Operation, Peer, Services


async def connect(services: Services, params: ConnectParams, peer: Peer) -> SessionStatus:
    if params.proxy is not None:
        try:
            parse_proxy(params.proxy)  # refused before anything starts; the message never quotes it
        except ValueError as exc:
            raise InvalidArgument(str(exc), {"method": "connect", "param": "proxy"}) from None
    credentials = peer.credentials
    return await services.manager.connect(
        params.session,
        owner_uid=credentials.uid if credentials is not None else None,
        options=SessionOptions.of(params),
        caller=peer.caller,
    )


HANDLER = Operation("connect", connect)
