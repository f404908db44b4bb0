"""One typed handler per RPC method, each in the module named for it.

``METHODS`` (``wa_daemon/protocol.py``) stays the one list of method names and
their params and result types, shared with the clients; :data:`HANDLERS` has
exactly one handler for each (tests/test_server_protocol.py checks it).
``base`` says what the kinds of handler are and what a handler is given.
"""

from __future__ import annotations

from typing import Final

from . import (
    connect,
    delete,
    disconnect,
    drain,
    health,
    history,
    hosts,
    logout,
    messages,
    metrics,
    pairing_code,
    ping,
    qr,
    send_text,
    simulate,
    status,
    version,
    watch,
)
from . import list as list_
from .base import Emit, Handler, Operation, Peer, Read, Services, Stream

__all__ = ["HANDLERS", "Emit", "Handler", "Operation", "Peer", "Read", "Services", "Stream"]

HANDLERS: Final[tuple[Handler, ...]] = (
    # operations: they may wait
    connect.HANDLER,
    disconnect.HANDLER,
    logout.HANDLER,
    delete.HANDLER,
    simulate.HANDLER,
    health.HANDLER,
    send_text.HANDLER,
    hosts.HANDLER,  # asks Redis
    drain.HANDLER,  # asks Redis
    # reads: answered from memory, in the read loop
    status.HANDLER,
    list_.HANDLER,
    qr.HANDLER,
    pairing_code.HANDLER,
    history.HANDLER,
    messages.HANDLER,
    metrics.HANDLER,
    ping.HANDLER,
    version.HANDLER,
    # streams
    watch.HANDLER,
)
