"""The server's own limits, read from the configuration once per load.

Built at start and again on every reload (``Server.reconfigure``), so serving a
request reads a field, not the manager's configuration. When each one takes
effect after a reload is the server's business and stays as it was: a
connection keeps the ``max_frame`` it was welcomed with and the
``hello_timeout`` it was accepted under; everything else applies to open
connections at their next decision.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..ops.config import Config


@dataclass(frozen=True, slots=True)
class Limits:
    max_frame: int  # bytes of one frame's body, either way
    send_timeout: float  # seconds a client may leave a reply unread before it is closed
    hello_timeout: float  # seconds a new connection has to say hello
    max_inflight_per_connection: int  # operations and watch streams at once, per connection
    max_watches_per_connection: int  # watch streams at once, per connection
    idle_connection_timeout: float | None  # seconds a greeted connection may stay silent; None: forever
    max_connections: int  # client connections at once

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        # Every field is named after the configuration key it holds.
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})
