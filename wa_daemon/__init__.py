"""wa-daemon: a daemon that owns many WhatsApp Web sessions, and its clients.

The plain install holds what a service needs to talk to a running daemon:

    from wa_daemon import Client, AsyncClient, RateLimited
"""

from ._version import __version__
from .client import AsyncClient, AsyncWatch, Client, Watch
from .errors import (
    Busy,
    ConnectionLost,
    DaemonUnreachable,
    ErrorCode,
    InternalError,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    Unavailable,
    WaDaemonError,
)
from .message_types import Media, Message, MessageAck, MessagePage, MessageReceived, SentMessage
from .protocol import (
    End,
    Health,
    HealthCheck,
    PairingCode,
    PairingCodeUpdated,
    QrCode,
    QrUpdated,
    Reason,
    SessionError,
    SessionStatus,
    Snapshot,
    State,
    StateChanged,
    Transition,
    WatchEvent,
)

__all__ = [
    "AsyncClient",
    "AsyncWatch",
    "Busy",
    "Client",
    "ConnectionLost",
    "DaemonUnreachable",
    "End",
    "ErrorCode",
    "Health",
    "HealthCheck",
    "InternalError",
    "InvalidArgument",
    "LimitExceeded",
    "Media",
    "Message",
    "MessageAck",
    "MessagePage",
    "MessageReceived",
    "NotFound",
    "PairingCode",
    "PairingCodeUpdated",
    "PermissionDenied",
    "ProtocolError",
    "SentMessage",
    "QrCode",
    "QrUpdated",
    "RateLimited",
    "Reason",
    "SessionError",
    "SessionStatus",
    "Snapshot",
    "State",
    "StateChanged",
    "Transition",
    "Unavailable",
    "WaDaemonError",
    "Watch",
    "WatchEvent",
    "__version__",
]
