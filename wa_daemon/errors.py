"""Error codes on the wire and the exceptions that carry them.

The codes are a public contract: clients in any language branch on them, so a
code is never renamed or reused. New codes may be added; a client that meets a
code it does not know raises the base :class:`WaDaemonError`.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar


class ErrorCode(str, enum.Enum):
    RATE_LIMITED = "rate_limited"
    BUSY = "busy"
    NOT_FOUND = "not_found"
    INVALID_ARGUMENT = "invalid_argument"
    LIMIT_EXCEEDED = "limit_exceeded"
    PROTOCOL_ERROR = "protocol_error"
    UNAVAILABLE = "unavailable"
    PERMISSION_DENIED = "permission_denied"
    INTERNAL = "internal"


class WaDaemonError(Exception):
    """Base of every error a client sees; ``code`` is the wire code."""

    code: ClassVar[str] = ErrorCode.INTERNAL.value

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class RateLimited(WaDaemonError):
    code = ErrorCode.RATE_LIMITED.value

    @property
    def retry_after(self) -> float:
        """Seconds until a new attempt for this session will be accepted."""
        return float(self.details.get("retry_after", 0.0))


class Busy(WaDaemonError):
    code = ErrorCode.BUSY.value


class NotFound(WaDaemonError):
    code = ErrorCode.NOT_FOUND.value


class InvalidArgument(WaDaemonError):
    code = ErrorCode.INVALID_ARGUMENT.value


class LimitExceeded(WaDaemonError):
    code = ErrorCode.LIMIT_EXCEEDED.value


class ProtocolError(WaDaemonError):
    code = ErrorCode.PROTOCOL_ERROR.value


class Unavailable(WaDaemonError):
    code = ErrorCode.UNAVAILABLE.value


class DaemonUnreachable(Unavailable):
    """The socket does not exist or nobody listens on it (client side only)."""


class ConnectionLost(Unavailable):
    """The daemon closed the connection before answering (client side only)."""


class PermissionDenied(WaDaemonError):
    code = ErrorCode.PERMISSION_DENIED.value


class InternalError(WaDaemonError):
    code = ErrorCode.INTERNAL.value


_BY_CODE: dict[str, type[WaDaemonError]] = {
    cls.code: cls
    for cls in (
        RateLimited,
        Busy,
        NotFound,
        InvalidArgument,
        LimitExceeded,
        ProtocolError,
        Unavailable,
        PermissionDenied,
        InternalError,
    )
}


def error_from_wire(code: str, message: str, details: dict[str, Any] | None = None) -> WaDaemonError:
    """Build the exception for a wire error; unknown codes keep their code string."""
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(message, details)
    err = WaDaemonError(message, details)
    err.code = code  # type: ignore[misc]  # an instance attribute for codes newer than this client
    return err
