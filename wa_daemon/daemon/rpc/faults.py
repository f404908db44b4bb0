"""How a request that went wrong is answered: every exception to its error frame, in one place.

A typed error (:class:`WaDaemonError`) is answered with its own code, message
and details. Anything else is a bug: answered `internal`, with the traceback in
the log (``rpc_internal_error``) and never on the wire. A reply that encodes
over the frame limit is answered `internal` too (``reply_too_large``), in place
of the reply: a stream with an event that large ends with that error.
"""

from __future__ import annotations

from typing import Any

import msgspec
from structlog.typing import FilteringBoundLogger

from ...errors import InternalError, InvalidArgument, Unavailable, WaDaemonError
from ...protocol import METHODS, Error, LocalProtocolError, encode_frame, params_error

# What decoding a request's params raises when they do not fit the method's type.
PARAMS_ERRORS = (msgspec.ValidationError, msgspec.DecodeError)

INTERNAL_MESSAGE = "internal error; the daemon log has the details"


def invalid_params(method: str, exc: msgspec.ValidationError | msgspec.DecodeError) -> InvalidArgument:
    """Params that do not decode into the method's struct (the client library
    raises the same error before sending: one wording, ``protocol.params_error``)."""
    return params_error(method, exc)


def unknown_method(method: str) -> InvalidArgument:
    return InvalidArgument(f"unknown method {method!r}", {"method": method, "known": sorted(METHODS)})


def cancelled(request_id: int) -> Error:
    """The answer to an operation the client cancelled."""
    return Error(request_id, Unavailable.code, "cancelled by the client")


def error_frame(exc: WaDaemonError, request_id: int | None) -> Error:
    return Error(request_id, exc.code, exc.message, exc.details)


class ReplyTooLarge(Exception):
    """An answer (a reply or a stream's event) encodes over the frame limit. The
    daemon's fault, not the client's: answered `internal`, in place of the answer,
    as the request's one final message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def fault(exc: Exception, request_id: int, method: str, log: FilteringBoundLogger) -> tuple[Error, str]:
    """The error frame answering a request that raised ``exc``, and the ``result``
    of its ``rpc`` log line. Call it in the ``except`` block: a bug is logged
    there with its traceback."""
    if isinstance(exc, WaDaemonError):
        return error_frame(exc, request_id), exc.code
    if isinstance(exc, ReplyTooLarge):
        log.error("reply_too_large", id=request_id, method=method, error=exc.message)
        return Error(request_id, InternalError.code, f"the reply is too large: {exc.message}"), "internal"
    log.exception("rpc_internal_error", id=request_id, method=method)
    return Error(request_id, InternalError.code, INTERNAL_MESSAGE, {"request": request_id}), "internal"


def encode_answer(message: Any, max_frame: int) -> bytearray:
    """``message`` as a frame; :class:`ReplyTooLarge` if it is over ``max_frame``.

    An error frame never raises: errors quote what the client sent (an unknown
    method's name, msgspec's text about a bad field), so a client could make one
    too large; it is sent shortened instead, still the request's final message."""
    try:
        return encode_frame(message, max_frame)
    except LocalProtocolError as exc:
        if isinstance(message, Error):
            return encode_frame(shortened(message), max_frame)
        raise ReplyTooLarge(exc.message) from None


_SHORT_MESSAGE = 200  # characters; far below the smallest max_frame (1024)


def shortened(error: Error) -> Error:
    """``error`` small enough for any frame limit: its message cut, its details dropped."""
    text = error.message
    if len(text) > _SHORT_MESSAGE:
        text = text[:_SHORT_MESSAGE] + "… (shortened: the error was larger than the frame limit)"
    return Error(error.id, error.code, text, {})
