"""Messages through WhatsApp Web's own collections: the page half and its pure reading.

The real page keeps chats and messages in Backbone-style collections reached
through ``require('WAWebCollections')`` (whatsapp-web.js ``Store.js``): a new
message, arrived or sent, is an ``add`` event of the ``Msg`` collection with
``isNewMsg`` set; its delivery state changes as ``change:ack``. Sending goes
the way whatsapp-web.js's ``sendMessage`` goes: ``WidFactory.createWid``,
``FindChatAction.findOrCreateLatestChat``, a ``MsgKey`` with ``MsgKey.newId()``,
then ``SendMsgChatAction.addAndSendMsgToChat(chat, message)``. Every module id,
function and event name is a value of the page contract (``contract.py``).

:func:`messaging_script` runs in every document before the page's scripts: it
only listens (no function of the page is replaced) and reports through its
own CDP binding, in batches. :func:`parse_report` turns a batch into
:class:`~.base.PageMessage` / :class:`~.base.AckChanged`, bounded and typed:
nothing the page says is trusted further than that.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .base import AckChanged, MessageEvent, PageMessage, SendError, SentText
from .contract import PageContract

# The binding the page calls with batches of messages and acks.
MESSAGE_BINDING: Final = "__waDaemonMessages"
# WhatsApp's own limit on a text message is 65536 characters; a page saying more is cut.
MAX_TEXT: Final = 65536
_MAX_ID: Final = 256
_MAX_BATCH: Final = 10000


def _hook(contract: PageContract, name: str) -> list[str]:
    hook = getattr(contract.modules, name)
    return [hook.module, hook.path]


def _spec(contract: PageContract) -> str:
    names = contract.names
    spec = {
        "modules": {
            n: _hook(contract, n)
            for n in ("collections", "wid_factory", "find_chat", "msg_key", "me_user", "send_msg")
        },
        "names": {f: getattr(names, f) for f in names.__struct_fields__},
        "binding": MESSAGE_BINDING,
    }
    return json.dumps(spec)


_RESOLVE = r"""
  const resolve = (entry) => {
    let o = window.require(entry[0]);
    for (const part of entry[1] ? entry[1].split(".") : []) o = o == null ? undefined : o[part];
    if (o == null) throw new Error("absent: " + entry[0]);
    return o;
  };
"""


def messaging_script(contract: PageContract) -> str:
    """The function expression evaluateOnNewDocument calls: listens to the Msg collection."""
    return _SCRIPT.replace("__SPEC__", _spec(contract)).replace("__RESOLVE__", _RESOLVE)


def new_id_script(contract: PageContract) -> str:
    """Resolves to a fresh message id from ``MsgKey.newId()``."""
    return (
        "async () => { const SPEC = " + _spec(contract) + ";" + _RESOLVE
        + " return String(await resolve(SPEC.modules.msg_key)[SPEC.names.msg_new_id]()); }"
    )


def send_script(contract: PageContract) -> str:
    """``(to, text, id)`` -> ``{id, chat, ack, t}``: one text message, sent as whatsapp-web.js sends it."""
    return "async (to, text, id) => { const SPEC = " + _spec(contract) + ";" + _RESOLVE + _SEND + "}"


_SEND = r"""
  const N = SPEC.names, M = SPEC.modules;
  // The listener may not have found the collections yet: it must hear this message's add.
  if (typeof window.__waDaemonMessaging === "function") window.__waDaemonMessaging();
  const collections = resolve(M.collections);
  const wid = resolve(M.wid_factory)[N.create_wid](to);
  let chat = collections[N.chat_collection].get(wid);
  if (!chat) {
    const found = await resolve(M.find_chat)[N.find_chat](wid);
    chat = found && found.chat;
  }
  if (!chat) throw new Error("no chat for this id");
  const me = resolve(M.me_user)[N.me_user]();
  if (!me) throw new Error("the page has no own user (not logged in)");
  const MsgKey = resolve(M.msg_key);
  const group = typeof chat.id.isGroup === "function" && chat.id.isGroup();
  const key = new MsgKey({ from: me, to: chat.id, id: id, participant: group ? me : undefined, selfDir: "out" });
  const t = Math.floor(Date.now() / 1000);
  const existing = collections[N.msg_collection].get(key._serialized);
  if (!existing) {
    const message = { id: key, ack: 0, body: text, from: me, to: chat.id, local: true, self: "out", t: t,
      isNewMsg: true, type: "chat" };
    await resolve(M.send_msg)[N.send_msg](chat, message);
  }
  const msg = collections[N.msg_collection].get(key._serialized);
  return { id: key._serialized, chat: chat.id._serialized, ack: msg ? Number(msg[N.msg_ack]) : 0, t: msg ? msg.t : t };
"""

_SCRIPT = r"""
() => {
  if (window.__waDaemonMessaging) return;
  const SPEC = __SPEC__;
  const N = SPEC.names;
__RESOLVE__
  let queue = [];
  let queued = false;
  const flush = () => {
    queued = false;
    if (!queue.length) return;
    const send = window[SPEC.binding];
    if (typeof send !== "function") { queued = true; setTimeout(flush, 200); return; }
    const batch = queue;
    queue = [];
    send(JSON.stringify(batch));
  };
  const push = (item) => {
    queue.push(item);
    if (!queued) { queued = true; queueMicrotask(flush); }
  };
  const ser = (x) => x == null ? null : (typeof x === "string" ? x : (x._serialized || String(x)));
  const num = (x) => { const n = Number(x); return x == null || !Number.isFinite(n) ? null : n; };
  const str = (x) => typeof x === "string" ? x : null;
  const read = (msg) => {
    const key = msg.id || {};
    const fromMe = !!key.fromMe;
    const type = String(msg.type || "chat");
    const body = type === "chat" ? msg.body : msg.caption;
    return {
      kind: "msg", id: ser(key), chat: ser(key.remote) || ser(fromMe ? msg.to : msg.from),
      sender: ser(fromMe ? msg.from : (msg.author || msg.from)), from_me: fromMe, type: type,
      text: typeof body === "string" ? body : "", at: num(msg.t), ack: num(msg[N.msg_ack]),
      mimetype: str(msg.mimetype), size: num(msg.size), filename: str(msg.filename),
    };
  };
  const added = (msg) => {
    if (!msg || !msg[N.msg_is_new]) return;  // loaded history, not a new message
    if (msg.type === "ciphertext" && typeof msg.once === "function") {
      // Not decrypted yet: WhatsApp changes its type once it is (whatsapp-web.js waits too).
      msg.once(N.change_prefix + "type", () => added(msg));
      return;
    }
    try { push(read(msg)); } catch (e) {}
  };
  let hooked = false;
  const tryHook = () => {
    if (hooked || typeof window.require !== "function") return;
    let msgs;
    try { msgs = resolve(SPEC.modules.collections)[N.msg_collection]; } catch (e) { return; }
    if (!msgs || typeof msgs[N.on] !== "function") return;
    hooked = true;
    msgs[N.on](N.msg_added, added);
    // What arrived before the hook (a sync right after the page loaded) is in the
    // collection already: reported too; the inbox knows each id once.
    const models = typeof msgs[N.msg_models] === "function" ? msgs[N.msg_models]() : msgs.models;
    for (const msg of Array.isArray(models) ? models : []) added(msg);
    msgs[N.on](N.change_prefix + N.msg_ack, (msg, ack) => {
      if (msg && msg.id) push({ kind: "ack", id: ser(msg.id), ack: num(ack == null ? msg[N.msg_ack] : ack) });
    });
  };
  window.__waDaemonMessaging = tryHook;
  const retry = setInterval(() => { if (hooked) clearInterval(retry); else tryHook(); }, 250);
  document.addEventListener("load", (e) => { if (e.target && e.target.tagName === "SCRIPT") tryHook(); }, true);
}
"""


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def parse_report(raw: Any) -> list[MessageEvent]:
    """The events of one batch; items that are not well-formed are skipped."""
    try:
        items = json.loads(raw)
    except (TypeError, ValueError):
        return []
    if not isinstance(items, list):
        return []
    out: list[MessageEvent] = []
    for item in items[:_MAX_BATCH]:
        if not isinstance(item, dict):
            continue
        msg_id = _text(item.get("id"), _MAX_ID)
        ack = _int(item.get("ack"))
        if not msg_id:
            continue
        if item.get("kind") == "ack":
            if ack is not None:
                out.append(AckChanged(msg_id, max(-1, min(4, ack))))
            continue
        chat, sender = _text(item.get("chat"), _MAX_ID), _text(item.get("sender"), _MAX_ID)
        kind = _text(item.get("type"), 32)
        if item.get("kind") != "msg" or not chat or not kind:
            continue
        out.append(
            PageMessage(
                id=msg_id,
                chat=chat,
                sender=sender or chat,
                from_me=item.get("from_me") is True,
                type=kind,
                text=_text(item.get("text"), MAX_TEXT) or "",
                at=_int(item.get("at")) or 0,
                ack=max(-1, min(4, ack if ack is not None else 0)),
                mimetype=_text(item.get("mimetype"), 128),
                size=_int(item.get("size")),
                filename=_text(item.get("filename"), 256),
            )
        )
    return out


Evaluate = Callable[..., Awaitable[Any]]


async def new_message_id(evaluate: Evaluate, contract: PageContract) -> str:
    value = await evaluate(new_id_script(contract))
    text = str(value or "")
    if not 8 <= len(text) <= 64 or not text.isalnum():
        raise SendError(f"the page gave a message id of an unexpected shape ({len(text)} characters)")
    return text


async def send_text(evaluate: Evaluate, contract: PageContract, to: str, text: str, message_id: str) -> SentText:
    value = await evaluate(send_script(contract), to, text, message_id)
    if not isinstance(value, dict) or not isinstance(value.get("id"), str) or not isinstance(value.get("chat"), str):
        raise SendError("the page's send gave no message")
    return SentText(
        id=value["id"][:_MAX_ID],
        chat=value["chat"][:_MAX_ID],
        ack=max(-1, min(4, _int(value.get("ack")) or 0)),
        at=_int(value.get("t")) or 0,
    )
