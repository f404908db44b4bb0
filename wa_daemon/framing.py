"""Framing, sans I/O: length-prefixed msgpack frames, and a decoder with a hard cap.

Frame: a 4-byte big-endian unsigned length, then that many bytes holding one
msgpack map. Nothing here knows which messages there are: protocol.py does.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import msgspec

from .errors import ProtocolError

DEFAULT_MAX_FRAME: Final = 1 << 20
HEADER: Final = struct.Struct(">I")


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids (e.g. a frame over the cap)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids.

    ``fatal`` is True when framing itself is broken (oversized or truncated frame):
    the byte stream cannot be resynchronised and the connection must close. A
    well-framed message that does not decode is not fatal; ``request_id`` is its
    ``id`` when one could be read, so the error can be answered to that request.
    """

    def __init__(self, message: str, *, fatal: bool = True, request_id: int | None = None) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.request_id = request_id


class FrameTooLarge(RemoteProtocolError):
    """The peer announced a frame over ``max_frame`` (always fatal)."""


_encoder = msgspec.msgpack.Encoder()


def encode(obj: Any) -> bytes:
    """msgpack bytes of any protocol value (no frame header)."""
    return _encoder.encode(obj)


def encode_frame(message: msgspec.Struct, max_frame: int = DEFAULT_MAX_FRAME) -> bytearray:
    # Encoding straight after a reserved header copies a large body once, not twice.
    buf = bytearray(HEADER.size)
    _encoder.encode_into(message, buf, HEADER.size)
    length = len(buf) - HEADER.size
    if length > max_frame:
        raise LocalProtocolError(f"frame of {length} bytes exceeds the limit of {max_frame}")
    HEADER.pack_into(buf, 0, length)
    return buf


def to_raw(obj: Any) -> msgspec.Raw:
    return msgspec.Raw(_encoder.encode(obj))


_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def decode_as(raw: bytes | msgspec.Raw, type_: Any) -> Any:
    """Decode ``raw`` as ``type_``; msgspec errors pass through for the caller to map."""
    dec = _decoders.get(type_)
    if dec is None:
        dec = _decoders[type_] = msgspec.msgpack.Decoder(type_)
    return dec.decode(raw)


class FrameDecoder:
    """Turns a byte stream into messages of one union type, with a hard size cap.

    The buffer never holds more than one frame header plus ``max_frame`` bytes of
    body: a length prefix over the cap is rejected before any body is buffered.
    """

    def __init__(self, message_type: Any, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(message_type)
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None  # body length of the frame being read

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        self._buf += data
        # Check the header eagerly so an oversized prefix fails before its body arrives.
        if self._need is None and len(self._buf) >= HEADER.size:
            self._read_header()

    def _read_header(self) -> None:
        (length,) = HEADER.unpack_from(self._buf)
        if length > self.max_frame:
            self._buf.clear()
            raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
        del self._buf[: HEADER.size]
        self._need = length

    def next_message(self) -> Any | None:
        """The next complete message, or None when more bytes are needed."""
        if self._need is None:
            if len(self._buf) < HEADER.size:
                return None
            self._read_header()
        assert self._need is not None
        if len(self._buf) < self._need:
            return None
        body = bytes(self._buf[: self._need])
        del self._buf[: self._need]
        self._need = None
        try:
            return self._decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            # RecursionError: msgspec's answer to nesting deeper than the interpreter allows.
            raise RemoteProtocolError(
                f"malformed message: {exc}", fatal=False, request_id=_salvage_id(body)
            ) from None

    def receive_eof(self) -> None:
        """Call at end of stream: a partial frame left over is a protocol error."""
        if self._buf or self._need:
            pending = len(self._buf)
            self._buf.clear()
            self._need = None
            raise RemoteProtocolError(f"connection closed inside a frame ({pending} bytes pending)")


def _salvage_id(body: bytes) -> int | None:
    try:
        obj = msgspec.msgpack.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid < 2**63:
            return rid
    return None
