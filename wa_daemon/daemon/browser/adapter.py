"""The page adapter: a read-only hook in WhatsApp Web's modules, and the pure reading of what it reports.

Two halves. :func:`adapter_script` is JavaScript run in every document before
the page's own scripts: it notices the moment ``window.require``/``__d`` are
assigned, resolves the contract's modules, subscribes to their change events
and reports a compact snapshot through the CDP binding, only when something
changed. It never replaces a function of the page (WhatsApp Web checks that it
runs as the official client). Until the modules are there, and on pages that
never get them, it reads language-free DOM signals instead.

:class:`PageReader` is sans-IO: snapshots in, :mod:`.base` page events out.
Every decision about what the page means is made here, and tested without a
browser.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from .base import (
    AppShown,
    Conflict,
    Loading,
    LoggedOut,
    LoginRequired,
    PageEvent,
    PageInfo,
    PhoneOffline,
    QrExpired,
    QrShown,
    Refused,
)
from .contract import CODE_MODULES, CORE_MODULES, OPTIONAL_MODULES, QR_MODULES, PageContract

# The binding the page calls with its snapshots.
BINDING: Final = "__waDaemonReport"

# A phone-side logout sends the pre-2024 page (and the fallback) to a URL carrying this.
POST_LOGOUT_MARKER: Final = "post_logout=1"

# When WhatsApp gives no refTTL: the first ref of a cycle lasts about 60 s, later ones 20 s.
FIRST_QR_TTL: Final = 60.0
NEXT_QR_TTL: Final = 20.0


def adapter_script(contract: PageContract) -> str:
    """The function expression pyppeteer's evaluateOnNewDocument calls as ``(fn)()``."""
    modules = {name: [hook.module, hook.path] for name, hook in _fields(contract.modules).items()}
    spec = {
        "modules": modules,
        "core": list(CORE_MODULES),
        "names": _fields(contract.names),
        "events": _fields(contract.events),
        "dom": _fields(contract.dom),
        "version": contract.version.split("."),
    }
    return _SCRIPT.replace("__SPEC__", json.dumps(spec)).replace("__BINDING__", BINDING)


def _fields(struct: Any) -> dict[str, Any]:
    return {f: getattr(struct, f) for f in struct.__struct_fields__}


def needed_modules(contract: PageContract, *, pairing: bool) -> list[str]:
    """Labels of the modules a session needs: the core, and the QR keys or the linking API."""
    hooks = _fields(contract.modules)
    names = list(CORE_MODULES) + list(CODE_MODULES if pairing else QR_MODULES)
    return [hooks[n].label() for n in names]


def optional_modules(contract: PageContract) -> list[str]:
    hooks = _fields(contract.modules)
    return [hooks[n].label() for n in OPTIONAL_MODULES]


class PageReader:
    """Turns the adapter's snapshots into page events. Pure: no I/O, no clock.

    Feed each snapshot as it arrives; the events describe what changed since the
    previous one. The reader also keeps what the session's watchdogs ask of the
    page now: whether the app is shown, whether the page is ready to be driven.
    """

    def __init__(self, contract: PageContract) -> None:
        self.contract = contract
        self.prev: dict[str, Any] = {}
        self._refs_in_cycle = 0
        self._known: frozenset[str] = frozenset(
            s for group in _fields(contract.states).values() for s in group
        ) | {"PAIRING"}

    # -- what the browser's watchdogs read ---------------------------------------------

    @property
    def modules_ok(self) -> bool:
        return self.prev.get("modules") == "ok"

    @property
    def ready(self) -> bool:
        """The page can be driven: its modules are there, or the DOM fallback sees a QR,
        a loading screen (not the startup splash) or the app."""
        if self.modules_ok:
            return True
        dom = self.prev.get("dom") or {}
        return bool(dom.get("ref") or dom.get("reload") or dom.get("loading") or dom.get("app"))

    @property
    def app(self) -> bool:
        """The logged-in app is shown."""
        return self._app(self.prev)

    @property
    def holds(self) -> bool:
        """The page, without its app, says why in a way the session handles itself (a
        login, a conflict, a refusal, an outage with its own grace, or a state we do not
        know and must not act on): not a loss of the page to time out on."""
        s = self.prev
        if self._modules(s):
            st = self.contract.states
            return s.get("state") not in (*st.waiting, *st.pairing, *st.connected)
        dom = s.get("dom") or {}
        return bool(dom.get("ref") or dom.get("reload"))

    def _modules(self, snap: dict[str, Any]) -> bool:
        return snap.get("modules") == "ok"

    def _app(self, snap: dict[str, Any]) -> bool:
        if self._modules(snap):
            return snap.get("state") in self.contract.states.connected and bool(snap.get("synced"))
        return bool((snap.get("dom") or {}).get("app"))

    # -- snapshots in, events out ---------------------------------------------------------

    def feed(self, snap: dict[str, Any]) -> list[PageEvent]:
        prev, self.prev = self.prev, snap
        events: list[PageEvent] = []
        info = self._info(snap)
        if info != self._info(prev):
            events.append(info)
        if self._modules(snap):
            # A page whose modules just arrived is read from scratch: what the DOM
            # fallback saw before says nothing about the modules' state.
            self._read_modules(prev if self._modules(prev) else {}, snap, events)
        else:
            self._read_dom(prev, snap, events)
        if int(snap.get("logouts") or 0) > int(prev.get("logouts") or 0):
            reason = snap.get("logout_reason")
            events.append(LoggedOut(str(reason) if isinstance(reason, str) and reason else None))
        return events

    def _info(self, snap: dict[str, Any]) -> PageInfo:
        state = snap.get("state")
        state = str(state) if isinstance(state, str) and state else None
        version = snap.get("version")
        return PageInfo(
            web_state=state,
            unknown=state is not None and state not in self._known,
            version=str(version) if isinstance(version, str | int | float) and version != "" else None,
            # Before the core modules resolve, "missing" only says what has not loaded
            # yet; a page that never gets them fails its launch, naming them.
            missing=tuple(str(m) for m in snap.get("missing") or []) if self._modules(snap) else (),
        )

    def _read_modules(self, prev: dict[str, Any], snap: dict[str, Any], events: list[PageEvent]) -> None:
        st = self.contract.states
        state, before = snap.get("state"), prev.get("state")
        if state in st.login:
            idle = state in st.login_idle
            if before not in st.login or idle != (before in st.login_idle):
                events.append(LoginRequired(idle))
            if idle and before not in st.login_idle:
                self._refs_in_cycle = 0
                events.append(QrExpired())
            qr = snap.get("qr")
            if not idle and isinstance(qr, str) and qr and (qr != prev.get("qr") or before not in st.login):
                events.append(QrShown(qr, self._ttl(snap.get("ref_ttl"))))
        elif state in st.pairing:
            if before not in st.pairing:
                events.append(Loading(None))
        elif state in st.connected:
            synced = bool(snap.get("synced"))
            if synced and not self._app(prev):
                events.append(AppShown())
            elif not synced and (
                before not in st.connected or bool(prev.get("synced")) or snap.get("progress") != prev.get("progress")
            ):
                events.append(Loading(_percent(snap.get("progress"))))
        elif state in st.conflict:
            if before not in st.conflict:
                events.append(Conflict())
        elif state in st.blocked or state in st.deprecated:
            if state != before:
                kind = "blocked" if state in st.blocked else "deprecated"
                events.append(Refused(kind, str(state)))
        offline = self._offline(snap)
        if offline != self._offline(prev):
            events.append(PhoneOffline(offline))

    def _offline(self, snap: dict[str, Any]) -> bool:
        if not self._modules(snap):
            return False
        st = self.contract.states
        return (
            snap.get("state") in st.offline
            or snap.get("info") in st.stream_offline
            or snap.get("online") is False
        )

    def _ttl(self, ref_ttl: Any) -> float:
        first = self._refs_in_cycle == 0
        self._refs_in_cycle += 1
        if isinstance(ref_ttl, int | float) and not isinstance(ref_ttl, bool) and math.isfinite(ref_ttl) and ref_ttl > 0:
            return float(ref_ttl) / 1000.0  # WhatsApp's refTTL is in milliseconds
        return FIRST_QR_TTL if first else NEXT_QR_TTL

    def _read_dom(self, prev: dict[str, Any], snap: dict[str, Any], events: list[PageEvent]) -> None:
        dom: dict[str, Any] = snap.get("dom") or {}
        was: dict[str, Any] = prev.get("dom") or {} if not self._modules(prev) else {}
        ref = dom.get("ref")
        if (ref or dom.get("reload")) and not (was.get("ref") or was.get("reload")):
            events.append(LoginRequired(bool(dom.get("reload"))))
        if ref and not dom.get("reload") and ref != was.get("ref"):
            events.append(QrShown(str(ref), self._ttl(None)))
        if dom.get("reload") and not was.get("reload"):
            self._refs_in_cycle = 0
            events.append(QrExpired())
        if dom.get("loading") and not dom.get("app") and (
            not was.get("loading") or dom.get("percent") != was.get("percent")
        ):
            events.append(Loading(_percent(dom.get("percent"))))
        if dom.get("app") and not was.get("app"):
            events.append(AppShown())


def _percent(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return max(0, min(100, round(value)))
    return None


def pairing_code_script(contract: PageContract) -> str:
    """Start linking by phone number through WhatsApp's linking API; resolves to the code."""
    n = contract.names
    hook = contract.modules.linking
    return (
        "async (phone) => { const L = " + _resolve_expr(hook.module, hook.path) + ";"
        f" L[{json.dumps(n.linking_set_type)}]({json.dumps(n.linking_type)});"
        f" await L[{json.dumps(n.linking_init)}]();"
        f" const code = await L[{json.dumps(n.linking_start)}](phone, true);"
        " return String(code); }"
    )


def call_script(hook_module: str, hook_path: str, method: str) -> str:
    """Call one method of a page object; resolves to true once called, false when absent."""
    return (
        "async () => { let o; try { o = " + _resolve_expr(hook_module, hook_path) + "; } catch (e) { return false; }"
        f" if (!o || typeof o[{json.dumps(method)}] !== 'function') return false;"
        f" await o[{json.dumps(method)}](); return true; }}"
    )


def _resolve_expr(module: str, path: str) -> str:
    expr = f"window.require({json.dumps(module)})"
    for part in filter(None, path.split(".")):
        expr += f"[{json.dumps(part)}]"
    return expr


# Clicks of the DOM fallback: structure only, no text.
def click_script(selector: str) -> str:
    return f"() => {{ const b = document.querySelector({json.dumps(selector)}); if (b) b.click(); return !!b; }}"


_SCRIPT = r"""
() => {
  if (window.__waDaemonAdapter) return;
  window.__waDaemonAdapter = true;
  const SPEC = __SPEC__;
  const N = SPEC.names;
  const snap = {
    modules: "pending", found: [], missing: [], version: null, state: null, synced: false,
    qr: null, ref_ttl: null, progress: null, logouts: 0, logout_reason: null,
    mode: null, info: null, online: null, dom: {}, url: location.href,
  };
  let last = "";
  let queued = false;
  // Changes that come together (a state and its ref) leave in one report.
  const report = () => {
    if (queued) return;
    queued = true;
    queueMicrotask(() => {
      queued = false;
      snap.url = location.href;
      const key = JSON.stringify(snap);
      if (key === last) return;
      last = key;
      const send = window["__BINDING__"];
      if (typeof send === "function") send(key);
    });
  };

  // ---- the modules ---------------------------------------------------------------
  const resolve = (entry) => {
    let o = window.require(entry[0]);
    for (const part of entry[1] ? entry[1].split(".") : []) o = o == null ? undefined : o[part];
    if (o == null) throw new Error("absent");
    return o;
  };
  const label = (entry) => entry[1] ? entry[0] + "." + entry[1] : entry[0];
  const readVersion = () => {
    let o = window;
    for (const part of SPEC.version) o = o == null ? undefined : o[part];
    return o == null ? null : String(o);
  };
  let hooked = false;
  let keys = null;

  const qrOf = async (ref) => {
    if (!ref) return null;
    if (keys === null) {
      const M = SPEC.modules;
      const b64 = resolve(M.base64)[N.base64_encode];
      const reg = await resolve(M.signal_store)[N.registration_info]();
      const noise = await resolve(M.noise_info)[N.noise_get]();
      keys = [
        b64(noise.staticKeyPair.pubKey),
        b64(reg.identityKeyPair.pubKey),
        String(await resolve(M.adv)[N.adv_secret]()),
        String(resolve(M.platform)[N.device_platform]),
      ];
    }
    return [ref].concat(keys).join(",");
  };
  const readRef = (conn) => {
    const ref = conn[N.conn_ref];
    const ttl = Number(conn[N.conn_ref_ttl]);
    snap.ref_ttl = Number.isFinite(ttl) && ttl > 0 ? ttl : null;
    qrOf(ref ? String(ref) : null).then((qr) => { snap.qr = qr; report(); },
      () => { snap.qr = null; if (!snap.missing.includes("qr_keys")) snap.missing.push("qr_keys"); report(); });
  };

  const tryHook = () => {
    if (hooked || typeof window.require !== "function") return;
    const objects = {};
    const found = [];
    const missing = [];
    for (const [name, entry] of Object.entries(SPEC.modules)) {
      try { objects[name] = resolve(entry); found.push(label(entry)); }
      catch (e) { missing.push(label(entry)); }
    }
    snap.version = readVersion();
    const core = SPEC.core.every((name) => name in objects && typeof objects[name][N.on] === "function");
    snap.found = found;
    snap.missing = missing;
    if (!core) { snap.modules = "missing"; report(); return; }
    hooked = true;
    stopDom();
    const on = (obj, event, fn) => { try { obj[N.on](event, fn); } catch (e) {} };
    const change = (attr) => N.change_prefix + attr;
    const socket = objects.socket, conn = objects.conn, cmd = objects.cmd;
    const readSocket = () => {
      const st = socket[N.socket_state];
      snap.state = st == null ? null : String(st);
      snap.synced = !!socket[N.socket_synced];
      snap.version = readVersion();
      report();
    };
    on(socket, change(N.socket_state), readSocket);
    on(socket, change(N.socket_synced), readSocket);
    on(conn, change(N.conn_ref), () => readRef(conn));
    const progress = () => {
      try { const p = Number(objects.offline[N.offline_progress]()); snap.progress = Number.isFinite(p) ? p : null; }
      catch (e) { snap.progress = null; }
      report();
    };
    for (const event of SPEC.events.progress) on(cmd, event, progress);
    for (const event of SPEC.events.logout) {
      on(cmd, event, (reason) => {
        snap.logouts += 1;
        snap.logout_reason = typeof reason === "string" ? reason : null;
        report();
      });
    }
    if (objects.stream) {
      const readStream = () => {
        const s = objects.stream;
        snap.mode = s[N.stream_mode] == null ? null : String(s[N.stream_mode]);
        snap.info = s[N.stream_info] == null ? null : String(s[N.stream_info]);
        report();
      };
      on(objects.stream, change(N.stream_mode), readStream);
      on(objects.stream, change(N.stream_info), readStream);
      readStream();
    }
    if (objects.network) {
      const readOnline = () => {
        const v = objects.network[N.network_online];
        snap.online = typeof v === "boolean" ? v : null;
        report();
      };
      on(objects.network, change(N.network_online), readOnline);
      readOnline();
    }
    readRef(conn);
    snap.modules = "ok";
    readSocket();
  };

  // Notice the assignment of require/__d at once, without wrapping either: the
  // accessor hands back exactly what the page stored. Also the version's global
  // (Debug): it comes with the modules, after require exists, and is what
  // whatsapp-web.js waits for; without it a page whose modules arrive with no
  // script load of their own waited for the next retry below, up to 0.5 s.
  const traps = ["require", "__d"];
  if (SPEC.version.length > 1 && traps.indexOf(SPEC.version[0]) === -1) traps.push(SPEC.version[0]);
  for (const name of traps) {
    if (name in window) continue;
    let value;
    try {
      Object.defineProperty(window, name, {
        configurable: true, enumerable: true,
        get() { return value; },
        set(v) { value = v; queueMicrotask(tryHook); },
      });
    } catch (e) {}
  }
  // Modules arrive with the bundles after require exists: look again as each script
  // loads, and now and then in case a bundle came some other way.
  document.addEventListener("load", (e) => { if (e.target && e.target.tagName === "SCRIPT") tryHook(); }, true);
  const retry = setInterval(() => { if (hooked) clearInterval(retry); else tryHook(); }, 500);

  // ---- the DOM fallback: selectors only, never a text --------------------------------
  const D = SPEC.dom;
  let observer = null;
  const readDom = () => {
    const startup = document.querySelector(D.startup);
    const holder = document.querySelector(D.qr_ref);
    const reload = !!document.querySelector(D.qr_reload);
    let progress = null;
    for (const p of document.querySelectorAll(D.progress)) {
      if (!startup || !startup.contains(p)) { progress = p; break; }
    }
    let percent = null;
    if (progress) {
      const v = Number(progress.getAttribute("value"));
      const max = Number(progress.getAttribute("max") || 100);
      percent = Number.isFinite(v) && max > 0 ? Math.round((100 * v) / max) : null;
    }
    snap.dom = {
      startup: !!startup,
      canvas: !!document.querySelector(D.qr_canvas),
      ref: holder && !reload ? holder.getAttribute(D.qr_ref_attr) || null : null,
      reload: reload,
      loading: !!progress,
      percent: percent,
      app: !!document.querySelector(D.app),
    };
    report();
  };
  const stopDom = () => {
    if (observer) { observer.disconnect(); observer = null; }
    snap.dom = {};
  };
  const startDom = () => {
    if (hooked || observer) return;
    observer = new MutationObserver(readDom);
    observer.observe(document.documentElement, { subtree: true, childList: true, attributes: true });
    readDom();
  };
  if (document.documentElement) startDom();
  else document.addEventListener("DOMContentLoaded", startDom);
  report();
  tryHook();
}
"""
