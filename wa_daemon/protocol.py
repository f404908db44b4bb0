"""The wire protocol, sans I/O: message types, the methods table, the client half.

Nothing here touches a socket. Server and clients feed received bytes into a
:class:`FrameDecoder` and get messages out; they turn messages into bytes with
:func:`encode_frame` (both in framing.py, re-exported here).
``docs/protocol.md`` is the prose version of this module.

Frame: a 4-byte big-endian unsigned length, then that many bytes holding one
msgpack map. Every map has a ``type`` key naming the message.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec

from . import message_types as mt
from .errors import InvalidArgument, WaDaemonError, error_from_wire

# The framing layer is framing.py; its names are part of this module's surface too.
from .framing import DEFAULT_MAX_FRAME as DEFAULT_MAX_FRAME
from .framing import HEADER as HEADER
from .framing import FrameDecoder as FrameDecoder
from .framing import FrameTooLarge as FrameTooLarge
from .framing import LocalProtocolError as LocalProtocolError
from .framing import RemoteProtocolError as RemoteProtocolError
from .framing import decode_as as decode_as
from .framing import encode as encode
from .framing import encode_frame as encode_frame
from .framing import to_raw as to_raw

PROTOCOL_VERSION: Final = 1

SESSION_ID_RULE: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_SESSION_ID_RE: Final = re.compile(SESSION_ID_RULE)

# msgspec searches with re.search, where "$" also matches before a final newline.
SessionId = Annotated[str, msgspec.Meta(pattern=SESSION_ID_RULE[:-1] + r"\Z")]
HostName = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]  # a fleet host's id (`hosts`)


def validate_session_id(value: object) -> str:
    """Return ``value`` if it is a valid session id, else raise InvalidArgument naming the rule."""
    # fullmatch, not match: "$" would accept a trailing newline.
    if not isinstance(value, str) or _SESSION_ID_RE.fullmatch(value) is None:
        raise InvalidArgument(
            f"invalid session id {value!r}: must match {SESSION_ID_RULE}",
            {"rule": SESSION_ID_RULE},
        )
    return value


def params_error(method: str, exc: msgspec.ValidationError | msgspec.DecodeError) -> InvalidArgument:
    """The ``invalid_argument`` for params that do not decode into ``method``'s struct.

    ``details`` name the method, and the session id rule when the ``session`` param
    broke it (a wrong type included), so a client learns which rule failed."""
    details: dict[str, Any] = {"method": method}
    if str(exc).endswith("- at `$.session`"):
        details["rule"] = SESSION_ID_RULE
    return InvalidArgument(f"invalid params for {method}: {exc}", details)


# --------------------------------------------------------------------------- states


class State(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    WAITING_QR = "waiting_qr"
    WAITING_CODE = "waiting_code"  # linking by phone number: a pairing code is shown
    AUTHENTICATING = "authenticating"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    LOGGED_OUT = "logged_out"


class Reason(str, enum.Enum):
    """Machine-readable reasons. ``failed`` and ``logged_out`` always carry one."""

    # why a session failed / logged out
    QR_TIMEOUT = "qr_timeout"
    MAX_RECONNECTS = "max_reconnects"
    LAUNCH_ERROR = "launch_error"
    BROWSER_CRASHED = "browser_crashed"
    CONFLICT = "conflict"
    LOGGED_OUT_BY_PHONE = "logged_out_by_phone"
    INACTIVE = "inactive"
    CODE_TIMEOUT = "code_timeout"  # no pairing code was entered in time
    BLOCKED = "blocked"  # WhatsApp refuses this device (PROXYBLOCK, TOS_BLOCK, SMB_TOS_BLOCK)
    WEB_VERSION_DEPRECATED = "web_version_deprecated"  # WhatsApp refuses this web version
    PROXY_UNREACHABLE = "proxy_unreachable"  # the session's proxy refused the connection or is unreachable
    PROXY_AUTH_FAILED = "proxy_auth_failed"  # the session's proxy rejected its credentials (407)
    # other transitions
    CONNECT_REQUESTED = "connect_requested"
    DISCONNECT_REQUESTED = "disconnect_requested"
    LOGOUT_REQUESTED = "logout_requested"
    QR_SHOWN = "qr_shown"
    QR_SCANNED = "qr_scanned"
    CODE_SHOWN = "code_shown"
    CODE_ENTERED = "code_entered"  # the phone took the pairing code; the app is loading
    APP_LOADED = "app_loaded"
    CONNECTION_LOST = "connection_lost"
    SHUTDOWN = "shutdown"
    RESTORED = "restored"  # started again after a daemon restart
    AUTH_RESTORED = "auth_restored"
    IDLE_TIMEOUT = "idle_timeout"
    MEMORY_LIMIT = "memory_limit"  # the browser was recycled: over session_memory_limit
    INTERNAL_ERROR = "internal_error"
    FENCED = "fenced"  # several hosts: this host lost the session's lease and stopped it (docs/cluster.md)


# --------------------------------------------------------------------------- data


class QrCode(msgspec.Struct, frozen=True, gc=False):
    session: str
    data: str  # the payload a phone scans; a login credential
    generated_at: datetime
    expires_at: datetime
    seq: int  # 1 for the first QR of a login phase, +1 per refresh


class PairingCode(msgspec.Struct, frozen=True, gc=False):
    session: str
    code: str  # as shown to users, "ABCD-EFGH"; a login credential like a QR
    generated_at: datetime
    expires_at: datetime
    seq: int  # 1 for the first code of a linking phase, +1 per new code


class Transition(msgspec.Struct, frozen=True, gc=False):
    at: datetime
    from_state: State
    to_state: State
    reason: str
    attempt: int
    message: str = ""


class SessionStatus(msgspec.Struct, frozen=True, gc=False):
    session: str
    state: State
    since: datetime
    attempt: int  # reconnect attempt of the current incident, 0 when none
    reason: str | None = None
    message: str | None = None
    last_error: str | None = None
    qr: QrCode | None = None
    phone_offline: bool = False
    owner_uid: int | None = None
    created_at: datetime | None = None
    busy: bool = False  # an operation (launch, stop) holds the session's lock
    pairing_code: PairingCode | None = None  # while waiting_code
    web_version: str | None = None  # WhatsApp Web's version, as the page reports it
    web_state: str | None = None  # WhatsApp's own socket state, as last seen (also one we do not know)
    linked: bool = False  # the profile holds a login (survives restarts)
    proxy: str | None = None  # the proxy the browser uses, password masked (wa_daemon.proxy); None: direct
    host: str | None = None  # the host whose daemon runs it (several hosts on Redis); None: one host
    stale: bool = False  # another host's session, from the last known state (Redis unreachable, its host gone)


class SessionList(msgspec.Struct, frozen=True):
    sessions: list[SessionStatus]


class History(msgspec.Struct, frozen=True):
    session: str
    transitions: list[Transition]


class Deleted(msgspec.Struct, frozen=True):
    session: str


class Sample(msgspec.Struct, frozen=True):
    name: str
    labels: dict[str, str]
    value: float


class Metrics(msgspec.Struct, frozen=True):
    samples: list[Sample]
    prometheus: str | None = None


class HealthCheck(msgspec.Struct, frozen=True):
    name: str  # event_loop, state_dir, sessions
    ok: bool
    message: str
    value: float | None = None  # the measured figure: lag in s, free bytes, failing fraction


class Health(msgspec.Struct, frozen=True):
    healthy: bool
    checks: list[HealthCheck]


class Pong(msgspec.Struct, frozen=True):
    server_time: datetime


class VersionInfo(msgspec.Struct, frozen=True):
    server: str
    protocol: int
    driver: str


class HostInfo(msgspec.Struct, frozen=True):
    host: str
    heartbeat_age: float  # seconds since its last heartbeat reached Redis
    capacity: int  # its max_sessions
    sessions: int  # sessions it holds, any state
    running: int  # of those, with a browser on its way or up
    version: str
    draining: bool = False  # handing its sessions to the others (`drain`); takes no new ones


class HostList(msgspec.Struct, frozen=True):
    hosts: list[HostInfo]
    cluster: bool  # false: this daemon is one host on its own (no redis_url), listed alone


class DrainResult(msgspec.Struct, frozen=True):
    host: str
    draining: bool  # what was asked: true (drain) or false (--cancel)


# --------------------------------------------------------------------------- params

Seconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


class SessionParams(msgspec.Struct, forbid_unknown_fields=True):
    session: SessionId


# International number, digits only (no "+", spaces or dashes), as WhatsApp's linking API
# takes it; "" (allowed by ``connect``) means "link by QR again".
PHONE_NUMBER_RULE: Final = r"^[0-9]{7,15}\Z"
PhoneNumber = Annotated[str, msgspec.Meta(pattern=r"^(?:[0-9]{7,15})?\Z")]

# Where a session's browser goes: http(s) only, no whitespace or NUL (it reaches a command line).
WebUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s\x00]+\Z", max_length=2048)]


class ConnectParams(msgspec.Struct, forbid_unknown_fields=True):
    """``connect``; the options apply from the next attempt on and are remembered."""

    session: SessionId
    whatsapp_url: WebUrl | None = None  # e.g. a wa-daemon-sim URL for tests
    takeover_on_conflict: bool | None = None  # None: the daemon's setting
    idle_timeout: Seconds | None = None  # stop when connected and untouched this long
    # link by pairing code for this number instead of a QR; "" goes back to QR linking
    phone_number: PhoneNumber | None = None
    # http(s)://[user:password@]host:port or socks5://host:port (wa_daemon.proxy); "": direct
    proxy: Annotated[str, msgspec.Meta(max_length=2048)] | None = None


class ListParams(msgspec.Struct, forbid_unknown_fields=True):
    states: list[State] | None = None


class HistoryParams(msgspec.Struct, forbid_unknown_fields=True):
    session: SessionId
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


# omit_defaults: a daemon from before `messages` forbids unknown fields; a watch that
# does not ask for messages must still reach it.
class WatchParams(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    session: SessionId | None = None  # None: every session
    until: list[State] = []  # end the stream once the session reaches one of these
    timeout: Seconds = 300.0
    # Also MessageReceived and MessageAck. Asked for, because a client older than
    # messages cannot decode them: a watch it opens must not break on the first one.
    messages: bool = False


class MetricsParams(msgspec.Struct, forbid_unknown_fields=True):
    prometheus: bool = False


SimulateAction = Literal["scan", "logout", "crash", "disconnect", "conflict", "refresh_qr", "offline", "online"]


class SimulateParams(msgspec.Struct, forbid_unknown_fields=True):
    session: SessionId
    action: SimulateAction


class DrainParams(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    host: HostName
    cancel: bool = False  # true: the host takes sessions again


class SendTextParams(msgspec.Struct, forbid_unknown_fields=True):
    session: SessionId
    to: mt.ChatTarget  # a number (digits) or a chat id
    text: mt.MessageText
    idempotency_key: mt.IdempotencyKey | None = None  # a retry with the same key sends nothing new


class MessagesParams(msgspec.Struct, forbid_unknown_fields=True):
    session: SessionId
    after: mt.Cursor = 0
    limit: mt.PageSize = 100


# --------------------------------------------------------------------------- watch events


class Snapshot(msgspec.Struct, tag="snapshot", tag_field="type", frozen=True):
    status: SessionStatus


class StateChanged(msgspec.Struct, tag="state", tag_field="type", frozen=True):
    transition: Transition
    status: SessionStatus


class QrUpdated(msgspec.Struct, tag="qr", tag_field="type", frozen=True):
    qr: QrCode


class PairingCodeUpdated(msgspec.Struct, tag="pairing_code", tag_field="type", frozen=True):
    code: PairingCode


class SessionError(msgspec.Struct, tag="session_error", tag_field="type", frozen=True):
    session: str
    code: str
    message: str


WatchEvent = Snapshot | StateChanged | QrUpdated | PairingCodeUpdated | SessionError | mt.MessageReceived | mt.MessageAck


# --------------------------------------------------------------------------- methods


class Method(msgspec.Struct, frozen=True):
    params: type[msgspec.Struct]
    result: Any  # the result type, or the event type for streams
    stream: bool = False


METHODS: Final[dict[str, Method]] = {
    "connect": Method(ConnectParams, SessionStatus),
    "disconnect": Method(SessionParams, SessionStatus),
    "logout": Method(SessionParams, SessionStatus),
    "delete": Method(SessionParams, Deleted),
    "status": Method(SessionParams, SessionStatus),
    "list": Method(ListParams, SessionList),
    "qr": Method(SessionParams, QrCode),
    "pairing_code": Method(SessionParams, PairingCode),
    "history": Method(HistoryParams, History),
    "watch": Method(WatchParams, WatchEvent, stream=True),
    "metrics": Method(MetricsParams, Metrics),
    "health": Method(NoParams, Health),
    "ping": Method(NoParams, Pong),
    "version": Method(NoParams, VersionInfo),
    "hosts": Method(NoParams, HostList),
    "simulate": Method(SimulateParams, SessionStatus),
    "send_text": Method(SendTextParams, mt.SentMessage),
    "messages": Method(MessagesParams, mt.MessagePage),
    "drain": Method(DrainParams, DrainResult),
}

# --------------------------------------------------------------------------- envelopes

_EMPTY_MAP: Final = msgspec.Raw(b"\x80")
_NIL: Final = msgspec.Raw(b"\xc0")


class Hello(msgspec.Struct, tag="hello", tag_field="type"):
    protocol: int
    client: str = ""


class Welcome(msgspec.Struct, tag="welcome", tag_field="type"):
    protocol: int
    server: str
    max_frame: int


# Request ids fit a signed 64-bit integer, so clients in any language can hold them.
RequestId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class Request(msgspec.Struct, tag="request", tag_field="type"):
    id: RequestId
    method: str
    params: msgspec.Raw = _EMPTY_MAP

    def __post_init__(self) -> None:
        # nil params mean "no params", as an absent key does (docs/protocol.md §5.2).
        if self.params == _NIL:
            self.params = _EMPTY_MAP


class Cancel(msgspec.Struct, tag="cancel", tag_field="type"):
    id: RequestId  # out of range can never name a request: a protocol error, like a request's


class Reply(msgspec.Struct, tag="reply", tag_field="type"):
    id: int
    result: msgspec.Raw  # decoded later, by the method's result type


class OutReply(msgspec.Struct, tag="reply", tag_field="type"):
    """The server's view of a reply: the result is encoded in place, not pre-encoded."""

    id: int
    result: Any


class Error(msgspec.Struct, tag="error", tag_field="type"):
    id: int | None  # None: about the connection, not one request
    code: str
    message: str
    details: dict[str, Any] = {}


class Event(msgspec.Struct, tag="event", tag_field="type"):
    id: int
    event: msgspec.Raw


class OutEvent(msgspec.Struct, tag="event", tag_field="type"):
    id: int
    event: Any


EndReason = Literal["cancelled", "until", "timeout", "deleted", "shutdown", "moved"]


class End(msgspec.Struct, tag="end", tag_field="type"):
    id: int
    reason: EndReason
    status: SessionStatus | None = None  # the watched session's final status


ClientMessage = Hello | Request | Cancel
ServerMessage = Welcome | Reply | Error | Event | End

# --------------------------------------------------------------------------- client side


def error_from_message(msg: Error) -> WaDaemonError:
    return error_from_wire(msg.code, msg.message, msg.details)


class ClientProtocol:
    """The client half of a connection, sans I/O: bytes to send out, messages in.

    Both clients drive one of these; they differ only in how they move bytes.
    """

    def __init__(self, client_name: str = "wa_daemon", max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.client_name = client_name
        self.decoder = FrameDecoder(ServerMessage, max_frame)
        self._next_id = 0

    def hello(self) -> bytearray:
        return encode_frame(Hello(PROTOCOL_VERSION, self.client_name))

    def check_welcome(self, msg: Any) -> Welcome:
        """Validate the answer to hello; adopt the daemon's frame limit."""
        if isinstance(msg, Error):
            raise error_from_message(msg)
        if not isinstance(msg, Welcome):
            raise RemoteProtocolError(f"expected welcome, got {type(msg).__name__}")
        if msg.protocol != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"the daemon speaks protocol {msg.protocol}; this client speaks {PROTOCOL_VERSION}"
            )
        self.decoder.max_frame = max(self.decoder.max_frame, msg.max_frame)
        return msg

    def request(self, method: str, params: msgspec.Struct) -> tuple[int, bytearray]:
        if method not in METHODS:
            raise LocalProtocolError(f"unknown method {method!r}")
        self._next_id += 1
        rid = self._next_id
        return rid, encode_frame(Request(rid, method, to_raw(params)))

    def cancel(self, rid: int) -> bytearray:
        return encode_frame(Cancel(rid))

    @staticmethod
    def result(method: str, msg: Reply | Error) -> Any:
        """The typed result of a reply, or raise the error it carries."""
        if isinstance(msg, Error):
            raise error_from_message(msg)
        try:
            return decode_as(msg.result, METHODS[method].result)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise RemoteProtocolError(f"malformed {method} result: {exc}") from None

    @staticmethod
    def event(msg: Event) -> WatchEvent:
        try:
            return decode_as(msg.event, WatchEvent)  # type: ignore[no-any-return]
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise RemoteProtocolError(f"malformed watch event: {exc}") from None
