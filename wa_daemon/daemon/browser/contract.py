"""The WhatsApp Web page contract, as data: which of the page's own modules we read, and how.

Since WhatsApp Web 2.3000 its code is Meta-style ``__d(id, deps, factory)``
modules read with ``window.require(id)``; the maintained automation projects
(whatsapp-web.js, wa-js) read the login state from them instead of the DOM.
Every module id, property, method, event and state name the daemon relies on
is a value here, and an operator can override any of them from a file
(``page_contract`` in the configuration) when WhatsApp renames one, without a
release. The DOM is a fallback only, through language-free signals.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Final

import msgspec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class Hook(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An object of the page: ``window.require(module)``, then the dotted ``path`` in its exports."""

    module: str
    path: str = ""

    def label(self) -> str:
        return f"{self.module}.{self.path}" if self.path else self.module


class Modules(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    socket: Hook = Hook("WAWebSocketModel", "Socket")
    conn: Hook = Hook("WAWebConnModel", "Conn")
    cmd: Hook = Hook("WAWebCmd", "Cmd")
    stream: Hook = Hook("WAWebStreamModel", "Stream")
    network: Hook = Hook("WAWebNetworkStatus", "default")
    offline: Hook = Hook("WAWebOfflineHandler", "OfflineMessageHandler")
    linking: Hook = Hook("WAWebAltDeviceLinkingApi")
    base64: Hook = Hook("WABase64")
    signal_store: Hook = Hook("WAWebSignalStoreApi", "waSignalStore")
    noise_info: Hook = Hook("WAWebUserPrefsInfoStore", "waNoiseInfo")
    adv: Hook = Hook("WAWebUserPrefsMultiDevice")
    platform: Hook = Hook("WAWebCompanionRegClientUtils")
    # Chats and messages (browser/messaging.py), as whatsapp-web.js's Store.js and sendMessage read them.
    collections: Hook = Hook("WAWebCollections")
    wid_factory: Hook = Hook("WAWebWidFactory")
    find_chat: Hook = Hook("WAWebFindChatAction")
    msg_key: Hook = Hook("WAWebMsgKey")  # the MsgKey class itself
    me_user: Hook = Hook("WAWebUserPrefsMeUser")
    send_msg: Hook = Hook("WAWebSendMsgChatAction")


class Names(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Properties and methods on the objects above (property: read; method: called)."""

    socket_state: str = "state"
    socket_synced: str = "hasSynced"
    socket_takeover: str = "takeover"
    socket_logout: str = "logout"
    conn_ref: str = "ref"
    conn_ref_ttl: str = "refTTL"  # milliseconds; optional
    cmd_refresh_qr: str = "refreshQR"
    stream_mode: str = "mode"
    stream_info: str = "info"
    network_online: str = "online"
    offline_progress: str = "getOfflineDeliveryProgress"
    linking_set_type: str = "setPairingType"
    linking_type: str = "ALT_DEVICE_LINKING"
    linking_init: str = "initializeAltDeviceLinking"
    linking_start: str = "startAltLinkingFlow"
    base64_encode: str = "encodeB64"
    registration_info: str = "getRegistrationInfo"  # -> {identityKeyPair: {pubKey}}
    noise_get: str = "get"  # -> {staticKeyPair: {pubKey}}
    adv_secret: str = "getADVSecretKey"  # -> base64 string
    device_platform: str = "DEVICE_PLATFORM"
    # The collections and the send path (browser/messaging.py)
    chat_collection: str = "Chat"
    msg_collection: str = "Msg"
    create_wid: str = "createWid"
    find_chat: str = "findOrCreateLatestChat"  # -> Promise<{chat}>
    msg_new_id: str = "newId"  # a static of MsgKey -> Promise<string>
    me_user: str = "getMaybeMeUser"
    send_msg: str = "addAndSendMsgToChat"
    msg_added: str = "add"  # the Msg collection's event for a message, new or loaded
    msg_models: str = "getModelsArray"  # a collection's models, as an array
    msg_is_new: str = "isNewMsg"  # set on messages that arrived (or were sent) now, not loaded history
    msg_ack: str = "ack"  # -1 error, 0 pending, 1 server, 2 delivered, 3 read, 4 played
    # Backbone-style listeners: on(event, callback); attribute changes are "change:<name>".
    on: str = "on"
    change_prefix: str = "change:"


class Events(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Events of ``Cmd`` (not attribute changes)."""

    logout: list[str] = msgspec.field(default_factory=lambda: ["logout", "logout_from_bridge"])
    progress: list[str] = msgspec.field(default_factory=lambda: ["offline_progress_update_from_bridge"])


class States(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """WhatsApp's socket states, by what they mean to a session (docs/states.md)."""

    waiting: list[str] = msgspec.field(default_factory=lambda: ["OPENING", "UNLAUNCHED"])
    login: list[str] = msgspec.field(default_factory=lambda: ["UNPAIRED", "UNPAIRED_IDLE"])
    login_idle: list[str] = msgspec.field(default_factory=lambda: ["UNPAIRED_IDLE"])
    pairing: list[str] = msgspec.field(default_factory=lambda: ["PAIRING"])
    connected: list[str] = msgspec.field(default_factory=lambda: ["CONNECTED"])
    conflict: list[str] = msgspec.field(default_factory=lambda: ["CONFLICT"])
    offline: list[str] = msgspec.field(default_factory=lambda: ["TIMEOUT"])
    blocked: list[str] = msgspec.field(default_factory=lambda: ["PROXYBLOCK", "TOS_BLOCK", "SMB_TOS_BLOCK"])
    deprecated: list[str] = msgspec.field(default_factory=lambda: ["DEPRECATED_VERSION"])
    # Stream.info values and NetworkStatus.online false: the connection to WhatsApp is down.
    stream_offline: list[str] = msgspec.field(default_factory=lambda: ["OFFLINE"])


class Dom(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The fallback when the modules are missing: selectors only, never a text."""

    startup: str = "#wa_web_initial_startup, #initial_startup"  # the static splash of every load
    qr_canvas: str = "canvas"
    qr_ref: str = "div[data-ref]"  # the pre-2024 QR holder; its attribute is the ref
    qr_ref_attr: str = "data-ref"
    qr_reload: str = "div[data-ref] > span > button"
    progress: str = "progress"  # loading, unless inside the startup splash
    app: str = '#pane-side, [data-icon="search"]'


class PageContract(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    modules: Modules = msgspec.field(default_factory=Modules)
    names: Names = msgspec.field(default_factory=Names)
    events: Events = msgspec.field(default_factory=Events)
    states: States = msgspec.field(default_factory=States)
    dom: Dom = msgspec.field(default_factory=Dom)
    version: str = "Debug.VERSION"  # a dotted global; not always present


# What a session cannot work without; the rest only makes it better informed.
CORE_MODULES: Final = ("socket", "conn", "cmd")
QR_MODULES: Final = ("base64", "signal_store", "noise_info", "adv", "platform")
CODE_MODULES: Final = ("linking",)
MESSAGE_MODULES: Final = ("collections", "wid_factory", "find_chat", "msg_key", "me_user", "send_msg")
OPTIONAL_MODULES: Final = ("stream", "network", "offline", *MESSAGE_MODULES)

DEFAULT: Final = PageContract()


class ContractError(ValueError):
    """A contract file that cannot be used; the message names the file and the key."""


def load_contract(path: str | Path | None) -> PageContract:
    """The default contract with ``path``'s values over it (TOML, or JSON by its suffix)."""
    if path is None:
        return DEFAULT
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ContractError(f"page_contract: cannot read {p}: {exc.strerror or exc}") from None
    try:
        data: Any = msgspec.json.decode(raw) if p.suffix == ".json" else tomllib.loads(raw.decode())
    except (msgspec.DecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ContractError(f"page_contract: {p} is not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ContractError(f"page_contract: {p} must hold a table")
    merged = _merge(msgspec.to_builtins(DEFAULT), data)
    try:
        return msgspec.convert(merged, PageContract)
    except msgspec.ValidationError as exc:
        raise ContractError(f"page_contract: {p}: {exc}") from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
